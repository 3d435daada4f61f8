"""The engine is a pure function: same definition and outcomes, same states, actions and keys.

A Prefect run that was suspended re-executes from the top and feeds the engine the recorded
outcomes again; these properties are what make that replay safe.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from interpreter.engine import Engine
from interpreter.runtime import (
    Action,
    BranchesFailed,
    BranchesSucceeded,
    CompensationsRan,
    EventReceived,
    EventTimedOut,
    ExecuteTask,
    Finished,
    Outcome,
    RunBranches,
    RunCompensations,
    RunState,
    TaskFailed,
    TaskSucceeded,
    WaitElapsed,
    WaitFor,
)
from tests.unit.engine_helpers import HASH, SYSTEM, T0, definition, task

DEFINITION = definition(
    {
        "Create": task(
            "create",
            resultPath="$.state.rec",
            compensate={"activity": "undo", "input": {"id": "$.state.rec.n"}},
            catch=[{"errors": ["Boom"], "next": "Rollback", "errorPath": "$.state.error"}],
            next="Ready",
        ),
        "Ready": {
            "type": "wait",
            "event": {"name": "go", "timeoutSeconds": 10, "timeoutNext": "Check"},
            "next": "Work",
        },
        "Work": task(
            "work",
            input={"n": "$.system.attempt", "ts": "$.system.timestamp", "go": "$.state.Ready"},
            catch=[{"errors": ["Other"], "next": "Check", "errorPath": "$.state.error"}],
            compensate={"activity": "unwork", "input": {"n": "$.system.attempt"}},
            next="Check",
        ),
        "Check": {
            "type": "choice",
            "choices": [
                {
                    "condition": {"op": "equals", "variable": "$.state.Work.ok", "value": True},
                    "next": "Par",
                },
                {
                    "condition": {"op": "lessThan", "variable": "$.system.attempt", "value": 3},
                    "next": "Pause",
                },
            ],
            "default": "Rollback",
        },
        "Pause": {"type": "wait", "seconds": 5, "next": "Ready"},
        "Par": {
            "type": "parallel",
            "branches": [
                {"startAt": "A", "states": {"A": task(end=True)}},
                {"startAt": "B", "states": {"B": task(end=True)}},
            ],
            "catch": [{"errors": ["*"], "next": "Rollback"}],
            "next": "Each",
        },
        "Each": {
            "type": "map",
            "itemsPath": "$.input.items",
            "branch": {
                "startAt": "T",
                "states": {"T": task(input={"i": "$.state.item"}, end=True)},
            },
            "next": "Done",
        },
        "Rollback": {"type": "compensation", "error": "RolledBack"},
        "Done": {"type": "succeed", "output": {"rec": "$.state.rec", "each": "$.state.Each"}},
    }
)

MAX_ACTIONS = 60


def _outcome(action: Action, draw: int, at_seconds: int) -> Outcome:
    at = T0 + timedelta(seconds=at_seconds)
    if isinstance(action, ExecuteTask):
        kind = draw % 4
        if kind == 2:
            return TaskFailed(error="Boom", cause=f"c{draw}", at=at)
        if kind == 3:
            return TaskFailed(error="Other", cause=f"c{draw}", at=at)
        return TaskSucceeded(result={"ok": kind == 0, "n": draw}, at=at)
    if isinstance(action, WaitFor):
        if action.event is None:
            return WaitElapsed(at=at)
        if draw % 2:
            return EventTimedOut(at=at)
        return EventReceived(payload={"d": draw}, at=at)
    if isinstance(action, RunBranches):
        if draw % 5 == 4:
            return BranchesFailed(error="Branch", cause="x", at=at)
        return BranchesSucceeded(results=[draw] * len(action.branches), at=at)
    assert isinstance(action, RunCompensations)
    return CompensationsRan(failures=[] if draw % 2 else ["Create: E"], at=at)


def _drive(
    draws: list[int], items: list[int]
) -> tuple[list[RunState], list[Action], list[Outcome]]:
    engine = Engine(DEFINITION, definition_hash=HASH)
    run = engine.start({"items": items}, SYSTEM)
    runs, actions, outcomes = [run], [], []
    for i in range(MAX_ACTIONS):
        action = engine.next_action(run, SYSTEM)
        actions.append(action)
        if isinstance(action, Finished):
            break
        outcome = _outcome(action, draws[i % len(draws)], (i + 1) * 7)
        outcomes.append(outcome)
        run = engine.apply(run, outcome, SYSTEM)
        runs.append(run)
    return runs, actions, outcomes


draws_strategy = st.lists(st.integers(min_value=0, max_value=1_000), min_size=1, max_size=40)
items_strategy = st.lists(st.integers(min_value=0, max_value=9), max_size=4)


@settings(max_examples=150, deadline=None)
@given(draws=draws_strategy, items=items_strategy)
def test_same_outcomes_give_identical_states_actions_and_keys(
    draws: list[int], items: list[int]
) -> None:
    first = _drive(draws, items)
    second = _drive(draws, items)
    assert [r.model_dump() for r in first[0]] == [r.model_dump() for r in second[0]]
    assert first[1] == second[1]


@settings(max_examples=100, deadline=None)
@given(draws=draws_strategy, items=items_strategy, data=st.data())
def test_replaying_any_prefix_makes_the_same_decisions(
    draws: list[int], items: list[int], data: st.DataObject
) -> None:
    runs, actions, outcomes = _drive(draws, items)
    cut = data.draw(st.integers(min_value=0, max_value=len(outcomes)))
    # A replay: a fresh engine, the recorded outcomes up to the cut, then carry on.
    engine = Engine(DEFINITION, definition_hash=HASH)
    run = engine.start({"items": items}, SYSTEM)
    for outcome in outcomes[:cut]:
        assert engine.next_action(run, SYSTEM) is not None
        run = engine.apply(run, outcome, SYSTEM)
    assert run == runs[cut]
    assert engine.next_action(run, SYSTEM) == actions[cut]


@settings(max_examples=100, deadline=None)
@given(draws=draws_strategy, items=items_strategy)
def test_a_persisted_run_state_decides_the_same(draws: list[int], items: list[int]) -> None:
    runs, actions, _ = _drive(draws, items)
    engine = Engine(DEFINITION, definition_hash=HASH)
    for run, action in zip(runs, actions, strict=False):
        restored = RunState.model_validate_json(run.model_dump_json())
        assert engine.next_action(restored, SYSTEM) == action


@settings(max_examples=100, deadline=None)
@given(draws=draws_strategy, items=items_strategy)
def test_runs_always_finish_with_a_consistent_state(draws: list[int], items: list[int]) -> None:
    runs, actions, _ = _drive(draws, items)
    last: Any = actions[-1]
    if isinstance(last, Finished):
        final = runs[-1]
        assert final.current is None
        assert final.pending_failure is None
        assert final.status == last.status
        if last.status == "failed":
            assert last.error
    keys = [a.step_key for a in actions if isinstance(a, ExecuteTask)]
    assert len(keys) == len(set(keys))
    assert all(k.startswith(HASH[:12] + ":") for k in keys)
