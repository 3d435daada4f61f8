"""How a run moves: the ``RunState`` updates shared by entering states and applying outcomes.

A ``Scope`` is what one engine walks (the whole definition, or one branch under its path prefix).
Everything here is a pure function of a scope and a run: the document paths read, the trail, storing
a result, ending the run, and the failure rules (a state's ``catch``, else the uncaught rule:
``onFailure: compensate`` keeps the error in ``pending_failure`` while the completed tasks are
undone, otherwise the run ends Failed at once). See ``interpreter.engine`` for the whole picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from interpreter.compiled import Compiled
from interpreter.errors import RuntimeWorkflowError
from interpreter.keys import state_path
from interpreter.models import (
    CatchRule,
    CompensationState,
    Configuration,
    MapState,
    ParallelState,
    State,
    TaskState,
    WaitState,
    WorkflowDefinition,
)
from interpreter.paths import assign
from interpreter.retry import match_catch
from interpreter.runtime import Outcome, RunState, SystemContext, TrailEntry

__all__ = [
    "INVALID_VALUE",
    "NO_CHOICE_MATCHED",
    "STEP_LIMIT",
    "TIMEOUT",
    "TRANSITION_LIMIT",
    "Actionable",
    "InvalidValueError",
    "Scope",
    "document",
    "ended",
    "error_name",
    "fail_state",
    "mismatch",
    "store",
    "trail",
    "transition",
    "uncaught",
    "visit",
    "with_state",
]

NO_CHOICE_MATCHED: Final = "States.NoChoiceMatched"
TIMEOUT: Final = "States.Timeout"
INVALID_VALUE: Final = "States.InvalidValue"
TRANSITION_LIMIT: Final = "States.TransitionLimit"
STEP_LIMIT: Final = "States.StepLimit"

#: The states the executor sees (choice, succeed and fail are resolved inside the engine).
Actionable = TaskState | WaitState | ParallelState | MapState | CompensationState


@dataclass(frozen=True)
class Scope:
    """The states an engine walks: the whole definition, or one branch under a path prefix."""

    definition: WorkflowDefinition
    definition_hash: str
    compiled: Compiled  # shared by the engine and all its branch engines
    states: Mapping[str, State]
    start_at: str
    prefix: str = ""
    base_state: Mapping[str, Any] | None = None  # a branch's starting $.state (result = the diff)

    @property
    def configuration(self) -> Configuration:
        return self.definition.configuration

    def path(self, name: str) -> str:
        """The path of state ``name`` through branches (``Parallel/0/Ping``)."""
        return state_path(self.prefix, name)

    def default_output(self, run: RunState) -> Any:
        """``$.state``; for a branch only the entries it added or changed."""
        state: dict[str, Any] = run.data.get("state", {})
        base = self.base_state
        if base is None:
            return state
        return {k: v for k, v in state.items() if k not in base or base[k] != v}


class InvalidValueError(RuntimeWorkflowError):
    """A value of the run has the wrong shape for where it is used (engine-internal)."""

    error_name = INVALID_VALUE


def error_name(exc: Exception) -> str:
    """The error name a state fails with when building its action or output raised ``exc``."""
    if isinstance(exc, RuntimeWorkflowError):
        return exc.error_name
    return INVALID_VALUE  # an ExpressionError raised by run data (e.g. a malformed $path object)


def visit(run: RunState, name: str) -> int:
    """The visit number of state ``name`` (``$.system.attempt``)."""
    return run.visits.get(name, 0)


def document(run: RunState, name: str, system: SystemContext) -> dict[str, Any]:
    """What paths read: ``{"input", "state", "system"}`` for ``name``'s current visit."""
    return {
        "input": run.data.get("input"),
        "state": run.data.get("state", {}),
        "system": {
            "runId": system.run_id,
            "workflow": system.workflow,
            "version": system.version,
            "definitionHash": system.definition_hash,
            "deviceId": system.device_id,
            "stateName": name,
            "attempt": visit(run, name),
            "timestamp": run.timestamp.isoformat(),
            "startedAt": system.started_at.isoformat(),
        },
    }


def trail(scope: Scope, run: RunState, name: str, type_: str, outcome: str) -> RunState:
    """``run`` with one more trail entry for ``name``'s current visit."""
    entry = TrailEntry(
        state=name,
        path=scope.path(name),
        visit=visit(run, name),
        type=type_,
        outcome=outcome,
        at=run.timestamp,
    )
    return run.model_copy(update={"trail": [*run.trail, entry]})


def store(run: RunState, result_path: str | None, name: str, value: Any) -> RunState:
    """Store ``value`` at ``result_path``, by default at ``$.state.<state name>``."""
    state: dict[str, Any] = run.data.get("state", {})
    if result_path is None:
        return with_state(run, {**state, name: value})
    return with_state(run, assign(state, result_path, value))


def with_state(run: RunState, state: dict[str, Any]) -> RunState:
    return run.model_copy(update={"data": {**run.data, "state": state}})


def ended(
    run: RunState,
    status: str,
    *,
    output: Any = None,
    error: str | None = None,
    cause: str | None = None,
) -> RunState:
    return run.model_copy(
        update={
            "status": status,
            "current": None,
            "output": output,
            "error": error,
            "cause": cause,
            "pending_failure": None,
        }
    )


def transition(scope: Scope, run: RunState, target: str | None) -> tuple[RunState, str | None]:
    """Go to ``target``; without one the run ends successfully with its default output."""
    if target is not None:
        return run, target
    return ended(run, "succeeded", output=scope.default_output(run)), None


def fail_state(
    scope: Scope, run: RunState, name: str, state: Actionable, error: str, cause: str
) -> tuple[RunState, str | None]:
    """A state failed: follow its first matching catch rule, else the uncaught rule."""
    run = trail(scope, run, name, state.type, f"failed: {error}")
    rules: list[CatchRule] = getattr(state, "catch", [])
    rule = match_catch(rules, error)
    if rule is None:
        return uncaught(scope, run, name, None, error, cause), None
    if rule.error_path is not None:
        caught = {"error": error, "cause": cause}
        run = with_state(run, assign(run.data.get("state", {}), rule.error_path, caught))
    return run, rule.next


def uncaught(
    scope: Scope, run: RunState, name: str, trail_type: str | None, error: str, cause: str
) -> RunState:
    """End the run Failed, or first compensate (``onFailure: compensate``)."""
    if trail_type is not None:
        run = trail(scope, run, name, trail_type, f"failed: {error}")
    if scope.configuration.on_failure == "compensate" and run.completed:
        return run.model_copy(update={"current": name, "pending_failure": (error, cause)})
    return ended(run, "failed", error=error, cause=cause)


def mismatch(name: str, what: str, outcome: Outcome) -> ValueError:
    """The executor reported an outcome that does not fit the state (an executor bug)."""
    return ValueError(f"state {name!r} is a {what}; {type(outcome).__name__} does not apply to it")
