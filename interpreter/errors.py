"""The interpreter's exceptions: one root, two branches.

    OrchestrationError                 root of everything this project raises on purpose
    ├── AuthoringError                 the definition or an expression is wrong (fix the JSON)
    │   ├── DefinitionTooLargeError    a document over the size, depth, state or length limits
    │   ├── DefinitionParseError       not JSON, or not the shape of a definition
    │   ├── DefinitionInvalidError     validation found errors (carries the Problem list)
    │   └── ExpressionError            a JSONPath, condition or regex that cannot be compiled
    └── RuntimeWorkflowError           something went wrong while a run executed
        ├── PathNotFoundError          a required path matched nothing at run time
        ├── ConditionError             a condition could not be evaluated (type, regex budget)
        └── ActivityError              an activity failed (name, message, retryable)

Retry intent travels with the error: ``ActivityError.retryable``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from interpreter.problems import Problem

__all__ = [
    "ActivityError",
    "AuthoringError",
    "ConditionError",
    "DefinitionInvalidError",
    "DefinitionParseError",
    "DefinitionTooLargeError",
    "ExpressionError",
    "OrchestrationError",
    "PathNotFoundError",
    "RuntimeWorkflowError",
]


class OrchestrationError(Exception):
    """Root of every error this project raises on purpose."""


class AuthoringError(OrchestrationError):
    """The definition (or an expression inside it) is wrong; the author must fix it."""


class DefinitionTooLargeError(AuthoringError):
    """A document exceeds a size, nesting-depth, state-count or expression-length limit."""


class DefinitionParseError(AuthoringError):
    """The document is not JSON, or not shaped like a definition."""

    def __init__(self, message: str, pointer: str = "") -> None:
        super().__init__(message)
        self.pointer = pointer


class DefinitionInvalidError(AuthoringError):
    """Validation found at least one error; ``problems`` lists all of them."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = [f"{p.code} {p.pointer or '/'}: {p.message}" for p in problems]
        super().__init__("invalid workflow definition:\n  " + "\n  ".join(lines))


class ExpressionError(AuthoringError):
    """A JSONPath, condition or regular expression that cannot be compiled."""

    def __init__(self, message: str, expression: str = "") -> None:
        super().__init__(message)
        self.expression = expression


class RuntimeWorkflowError(OrchestrationError):
    """Something failed while a run executed (not the author's syntax)."""

    #: The error name that ``catch`` rules and ``retryOn`` match against.
    error_name = "States.Runtime"


class PathNotFoundError(RuntimeWorkflowError):
    """A JSONPath that must match (no default given) matched nothing."""

    error_name = "States.PathNotFound"

    def __init__(self, path: str, state: str | None = None) -> None:
        where = f" in state {state!r}" if state else ""
        super().__init__(f"path {path!r} matched nothing{where}")
        self.path = path
        self.state = state


class ConditionError(RuntimeWorkflowError):
    """A condition could not be evaluated (operand types, regex budget exceeded)."""

    error_name = "States.ConditionError"


class ActivityError(RuntimeWorkflowError):
    """An activity failed; ``error`` is what catch/retry rules match, ``retryable`` its intent."""

    def __init__(self, error: str, message: str, *, retryable: bool = True) -> None:
        super().__init__(f"{error}: {message}")
        self.error = error
        self.cause = message
        self.retryable = retryable

    @property
    # type-ignore: an instance-level name (per activity) replaces the class-level constant.
    def error_name(self) -> str:  # type: ignore[override]
        return self.error
