"""Importing ``interpreter`` loads no I/O library, and its public surface is pinned."""

from __future__ import annotations

import json
import subprocess
import sys

import interpreter
from tests.unit.definition_cases import REPO

FORBIDDEN = ("prefect", "sqlalchemy", "sqlmodel", "azure", "httpx")

PROBE = """
import json, sys
import interpreter
import interpreter.checks, interpreter.explain, interpreter.graph, interpreter.loader
import interpreter.schema, interpreter.validate
interpreter.schema.json_schema()
print(json.dumps(sorted(sys.modules)))
"""


def test_importing_interpreter_loads_no_io_library() -> None:
    done = subprocess.run(
        [sys.executable, "-E", "-s", "-c", PROBE],  # a fresh process, no env or user site
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    modules = json.loads(done.stdout)
    assert "interpreter.validate" in modules
    loaded = [m for m in modules if m.split(".")[0] in FORBIDDEN]
    assert loaded == []


def test_public_surface_is_pinned() -> None:
    assert interpreter.__all__ == sorted(interpreter.__all__)
    assert interpreter.__all__ == [
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
    for name in interpreter.__all__:
        assert getattr(interpreter, name) is not None


def test_exports_are_the_objects_of_their_home_modules() -> None:
    # The exported function ``simulate`` shadows the submodule as a package attribute, so the
    # module is taken from sys.modules (``from interpreter.simulate import ...`` works the same).
    from interpreter import engine, runtime

    simulation = sys.modules["interpreter.simulate"]
    assert interpreter.Engine is engine.Engine
    assert interpreter.simulate is simulation.simulate
    assert interpreter.SimulationResult is simulation.SimulationResult
    assert interpreter.Mocks is simulation.Mocks
    for name in runtime.__all__:
        if name in interpreter.__all__:
            assert getattr(interpreter, name) is getattr(runtime, name)
