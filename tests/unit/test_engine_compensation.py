"""Engine: compensation states and on-failure compensation."""

from __future__ import annotations

from typing import Any

from interpreter.runtime import (
    CompensationsRan,
    ExecuteTask,
    Finished,
    RunCompensations,
    TaskFailed,
    TaskSucceeded,
)
from tests.unit.engine_helpers import HASH, SYSTEM, T0, at, engine, step, task


def _undoable(name: str, next_: str) -> dict[str, Any]:
    return task(
        f"create.{name}",
        compensate={"activity": f"undo.{name}", "input": {"id": f"$.state.{name}.id"}},
        next=next_,
    )


STATES: dict[str, Any] = {
    "A": _undoable("A", "Plain"),
    "Plain": task("plain", next="B"),
    "B": _undoable("B", "Last"),
    "Last": task("last", catch=[{"errors": ["Caught"], "next": "Rollback"}], end=True),
    "Rollback": {"type": "compensation", "error": "RolledBack", "cause": "undone"},
}


def _to_last(states: dict[str, Any], **extra: Any) -> tuple[Any, Any]:
    eng = engine(states, **extra)
    run = eng.start({}, SYSTEM)
    for i, result in enumerate(({"id": "a1"}, None, {"id": "b1"})):
        run = eng.apply(run, TaskSucceeded(result=result, at=at(i)), SYSTEM)
    return eng, run


def test_uncaught_failure_compensates_completed_tasks_in_reverse_then_fails_with_original() -> None:
    eng, run = _to_last(STATES)
    assert [c.state for c in run.completed] == ["A", "B"]
    run, action = step(eng, run, TaskFailed(error="Boom", cause="bad", at=at(9)))
    assert run.pending_failure == ("Boom", "bad")
    assert isinstance(action, RunCompensations)
    assert [(s.state, s.activity, s.input) for s in action.steps] == [
        ("B", "undo.B", {"id": "b1"}),
        ("A", "undo.A", {"id": "a1"}),
    ]
    assert action.steps[0].step_key == f"{HASH[:12]}:B#compensate:1"
    assert action.steps[0].idempotency_key == f"run-1:{HASH[:12]}:B#compensate:1"
    run, done = step(eng, run, CompensationsRan(failures=["B: Oops"], at=at(10)))
    assert done == Finished(status="failed", error="Boom", cause="bad")
    assert run.completed == []
    assert run.pending_failure is None
    assert run.trail[-1].outcome == "on failure: compensated 2, 1 failed: B: Oops"


def test_on_failure_fail_skips_compensation() -> None:
    eng, run = _to_last(STATES, configuration={"onFailure": "fail"})
    _, action = step(eng, run, TaskFailed(error="Boom", cause="bad", at=T0))
    assert action == Finished(status="failed", error="Boom", cause="bad")


def test_failure_without_completed_tasks_fails_directly() -> None:
    eng = engine({"X": task(end=True)})
    _, action = step(eng, eng.start({}, SYSTEM), TaskFailed(error="E", cause="c", at=T0))
    assert action == Finished(status="failed", error="E", cause="c")


def test_compensation_state_runs_all_then_fails_with_its_error() -> None:
    eng, run = _to_last(STATES)
    run, action = step(eng, run, TaskFailed(error="Caught", cause="x", at=T0))
    assert isinstance(action, RunCompensations)
    assert action.state == "Rollback"
    assert [s.state for s in action.steps] == ["B", "A"]
    _, done = step(eng, run, CompensationsRan(failures=[], at=T0))
    assert done == Finished(status="failed", error="RolledBack", cause="undone")


def test_compensation_state_with_listed_states_and_next_never_undoes_twice() -> None:
    states = dict(STATES)
    states["Rollback"] = {"type": "compensation", "states": ["A"], "next": "After"}
    states["After"] = task("after", end=True)
    eng, run = _to_last(states)
    run, action = step(eng, run, TaskFailed(error="Caught", cause="x", at=T0))
    assert isinstance(action, RunCompensations)
    assert [s.state for s in action.steps] == ["A"]
    run, action = step(eng, run, CompensationsRan(failures=[], at=T0))
    assert isinstance(action, ExecuteTask)
    assert action.state == "After"
    assert [c.state for c in run.completed] == ["B"]
    run, action = step(eng, run, TaskFailed(error="Late", cause="y", at=T0))
    assert isinstance(action, RunCompensations)
    assert [s.state for s in action.steps] == ["B"]


def test_compensation_with_nothing_to_undo_passes_through() -> None:
    eng = engine(
        {
            "T": task(catch=[{"errors": ["*"], "next": "R"}], end=True),
            "R": {"type": "compensation", "next": "Ok"},
            "Ok": {"type": "succeed"},
        }
    )
    run, action = step(eng, eng.start({}, SYSTEM), TaskFailed(error="E", cause="c", at=T0))
    assert action == Finished(status="succeeded", output={})
    assert [e.outcome for e in run.trail] == ["failed: E", "compensated 0", "succeeded"]


def test_loop_visits_are_compensated_separately() -> None:
    eng = engine(
        {
            "Make": _undoable("Make", "Again"),
            "Again": {
                "type": "choice",
                "choices": [
                    {
                        "condition": {"op": "lessThan", "variable": "$.system.attempt", "value": 2},
                        "next": "Make",
                    }
                ],
                "default": "Boom",
            },
            "Boom": task("boom", end=True),
        }
    )
    run = eng.start({}, SYSTEM)
    run = eng.apply(run, TaskSucceeded(result={"id": 1}, at=T0), SYSTEM)
    run = eng.apply(run, TaskSucceeded(result={"id": 2}, at=T0), SYSTEM)
    _, action = step(eng, run, TaskFailed(error="E", cause="c", at=T0))
    assert isinstance(action, RunCompensations)
    assert [(s.visit, s.input, s.step_key.rsplit(":", 1)[1]) for s in action.steps] == [
        (2, {"id": 2}, "2"),
        (1, {"id": 1}, "1"),
    ]


def test_compensate_input_missing_path_fails_the_task() -> None:
    eng = engine(
        {
            "A": task(compensate={"activity": "undo", "input": {"id": "$.state.A.nope"}}, end=True),
        }
    )
    _, action = step(eng, eng.start({}, SYSTEM), TaskSucceeded(result={}, at=T0))
    assert isinstance(action, Finished)
    assert action.error == "States.PathNotFound"
    assert "compensate input" in (action.cause or "")


def test_fail_state_does_not_compensate() -> None:
    eng = engine(
        {"A": _undoable("A", "F"), "F": {"type": "fail", "error": "Stop"}},
    )
    _, action = step(eng, eng.start({}, SYSTEM), TaskSucceeded(result={"id": 1}, at=T0))
    assert action == Finished(status="failed", error="Stop")
