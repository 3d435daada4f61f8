"""The pure core: definition models, loading and validation, expressions and the step engine.

Nothing here imports Prefect, a database driver, Azure or an HTTP client, or reads the environment,
the clock or files: callers pass text, data and time in (``tests/unit/test_import_purity.py``).
"""

from __future__ import annotations

from interpreter.errors import (
    ActivityError,
    AuthoringError,
    ConditionError,
    DefinitionInvalidError,
    DefinitionParseError,
    DefinitionTooLargeError,
    ExpressionError,
    OrchestrationError,
    PathNotFoundError,
    RuntimeWorkflowError,
)
from interpreter.loader import definition_hash, load_definition, read_definition
from interpreter.models import WorkflowDefinition
from interpreter.problems import Problem
from interpreter.validate import require_valid, validate

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
    "Problem",
    "RuntimeWorkflowError",
    "WorkflowDefinition",
    "definition_hash",
    "load_definition",
    "read_definition",
    "require_valid",
    "validate",
]
