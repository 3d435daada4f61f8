"""The engine's run-time budgets: a run's total steps and a map's fan-out are bounded."""

from __future__ import annotations

import pytest

import interpreter.actions
import interpreter.engine
from interpreter.engine import INVALID_VALUE, STEP_LIMIT
from interpreter.runtime import ExecuteTask, Finished, TaskSucceeded
from tests.unit.engine_helpers import SYSTEM, at, engine, task


def test_a_loop_that_never_ends_fails_at_the_step_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interpreter.engine, "MAX_RUN_STEPS", 30)
    eng = engine(
        {
            "Poll": task(next="Check"),
            "Check": {
                "type": "choice",
                "choices": [
                    {
                        "condition": {"op": "equals", "variable": "$.state.Poll", "value": "done"},
                        "next": "Done",
                    }
                ],
                "default": "Poll",
            },
            "Done": {"type": "succeed"},
        },
        configuration={"onFailure": "fail"},
    )
    run = eng.start({}, SYSTEM)
    tasks = 0
    for n in range(1, 100):
        action = eng.next_action(run, SYSTEM)
        if isinstance(action, Finished):
            break
        assert isinstance(action, ExecuteTask)
        tasks += 1
        run = eng.apply(run, TaskSucceeded(result="not yet", at=at(n)), SYSTEM)
    assert isinstance(action, Finished)
    assert (action.status, action.error) == ("failed", STEP_LIMIT)
    assert "30" in (action.cause or "")
    assert tasks == 15  # Poll and Check alternate: 30 states entered, then the limit
    assert len(run.trail) <= 31


def test_a_map_over_too_many_items_fails_the_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(interpreter.actions, "MAX_MAP_ITEMS", 3)
    eng = engine(
        {
            "Each": {
                "type": "map",
                "itemsPath": "$.input.items",
                "branch": {"startAt": "One", "states": {"One": task(end=True)}},
                "end": True,
            }
        },
        configuration={"onFailure": "fail"},
    )
    ok = eng.next_action(eng.start({"items": [1, 2, 3]}, SYSTEM), SYSTEM)
    assert not isinstance(ok, Finished)
    refused = eng.next_action(eng.start({"items": [1, 2, 3, 4]}, SYSTEM), SYSTEM)
    assert isinstance(refused, Finished)
    assert refused.error == INVALID_VALUE
    assert "4 items" in (refused.cause or "") and "limit is 3" in (refused.cause or "")
