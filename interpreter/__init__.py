"""The pure core: definition models, loading and validation, expressions and the step engine.

The package exports what callers commonly need: loading and validating a definition, the
``Engine`` with its runtime vocabulary (``RunState``, ``SystemContext``, the actions it asks for and
the outcomes it takes back), the dry run (``simulate`` with ``Mocks`` and ``SimulationResult``) and
``UnsafeJsonError``, the refusal of ``interpreter.jsonsafe`` (strict JSON and the id rule for input
from outside).
Everything else is imported from its module (``interpreter.paths``, ``interpreter.keys``, ...).

Nothing here imports Prefect, a database driver, Azure or an HTTP client, or reads the environment,
the clock or files: callers pass text, data and time in (``tests/unit/test_import_purity.py``).
"""

from __future__ import annotations

from interpreter.engine import Engine
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
from interpreter.jsonsafe import UnsafeJsonError
from interpreter.loader import definition_hash, load_definition, read_definition
from interpreter.models import WorkflowDefinition
from interpreter.problems import Problem
from interpreter.runtime import (
    Action,
    BranchesFailed,
    BranchesSucceeded,
    CompensationsRan,
    CompensationStep,
    EventReceived,
    EventTimedOut,
    ExecuteTask,
    Finished,
    Outcome,
    RunBranches,
    RunCompensations,
    RunState,
    SystemContext,
    TaskFailed,
    TaskSucceeded,
    TrailEntry,
    WaitElapsed,
    WaitFor,
)
from interpreter.simulate import Mocks, SimulationResult, simulate
from interpreter.validate import require_valid, validate

__all__ = [
    "Action",
    "ActivityError",
    "AuthoringError",
    "BranchesFailed",
    "BranchesSucceeded",
    "CompensationStep",
    "CompensationsRan",
    "ConditionError",
    "DefinitionInvalidError",
    "DefinitionParseError",
    "DefinitionTooLargeError",
    "Engine",
    "EventReceived",
    "EventTimedOut",
    "ExecuteTask",
    "ExpressionError",
    "Finished",
    "Mocks",
    "OrchestrationError",
    "Outcome",
    "PathNotFoundError",
    "Problem",
    "RunBranches",
    "RunCompensations",
    "RunState",
    "RuntimeWorkflowError",
    "SimulationResult",
    "SystemContext",
    "TaskFailed",
    "TaskSucceeded",
    "TrailEntry",
    "UnsafeJsonError",
    "WaitElapsed",
    "WaitFor",
    "WorkflowDefinition",
    "definition_hash",
    "load_definition",
    "read_definition",
    "require_valid",
    "simulate",
    "validate",
]
