"""The dry run: mocked outcomes, retries without sleeping, events, timeouts, branches, limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from interpreter.loader import load_definition
from interpreter.simulate import DEFAULT_STARTED_AT, Mocks, simulate
from tests.unit.engine_helpers import definition, task

REPO = Path(__file__).resolve().parents[2]


def _mocks(**fields: Any) -> Mocks:
    return Mocks.model_validate(fields)


def test_retries_follow_the_policy_and_advance_the_simulated_clock() -> None:
    d = definition(
        {
            "Call": task(
                "http.request",
                retry={"maxAttempts": 3, "intervalSeconds": 10, "backoffRate": 3},
                end=True,
            )
        }
    )
    result = simulate(
        d,
        _mocks(
            states={
                "Call": [{"error": "Http.Status5xx"}, {"error": "Http.Status5xx"}, {"output": 1}]
            }
        ),
    )
    assert result.status == "succeeded"
    assert [c.attempt for c in result.calls] == [1, 2, 3]
    assert result.trail[-1].at.timestamp() - DEFAULT_STARTED_AT.timestamp() == 40
    result = simulate(d, _mocks(states={"Call": [{"error": "Fatal", "retryable": False}]}))
    assert (result.status, result.error, len(result.calls)) == ("failed", "Fatal", 1)


def test_last_mock_entry_is_reused_and_loops_are_counted() -> None:
    d = definition(
        {
            "Poll": task(next="Check"),
            "Check": {
                "type": "choice",
                "choices": [
                    {
                        "condition": {"op": "equals", "variable": "$.state.Poll", "value": "ready"},
                        "next": "Done",
                    }
                ],
                "default": "Pause",
            },
            "Pause": {"type": "wait", "seconds": 60, "next": "Poll"},
            "Done": {"type": "succeed"},
        }
    )
    result = simulate(
        d, _mocks(states={"Poll": [{"output": "no"}, {"output": "no"}, {"output": "ready"}]})
    )
    assert result.status == "succeeded"
    assert [c.visit for c in result.calls] == [1, 2, 3]
    forever = simulate(d, _mocks(states={"Poll": [{"output": "no"}]}), max_steps=50)
    assert forever.status == "error"
    assert "50 steps" in (forever.message or "")


def test_missing_mock_names_the_state_unless_default() -> None:
    d = definition({"A": task(next="B"), "B": task("b.act", end=True)})
    result = simulate(d, _mocks(states={"A": [{"output": 1}]}))
    assert result.status == "error"
    assert "'B'" in (result.message or "")
    assert "b.act" in (result.message or "")
    assert result.data["state"] == {"A": 1}
    assert simulate(d, _mocks(default={"output": None})).status == "succeeded"


def test_events_timeouts_and_waiting() -> None:
    d = definition(
        {
            "W": {
                "type": "wait",
                "event": {"name": "ready", "timeoutSeconds": 60, "timeoutNext": "Late"},
                "next": "Ok",
            },
            "Ok": {"type": "succeed"},
            "Late": {"type": "fail", "error": "Late"},
        }
    )
    got = simulate(d, _mocks(events={"ready": [{"v": 1}]}))
    assert (got.status, got.output) == ("succeeded", {"W": {"v": 1}})
    late = simulate(d, _mocks())
    assert (late.status, late.error) == ("failed", "Late")
    assert late.trail[0].outcome == "timeout"
    forced = simulate(d, _mocks(events={"ready": [1]}, timeouts=["ready"]))
    assert forced.error == "Late"
    no_timeout = definition({"W": {"type": "wait", "event": {"name": "ready"}, "end": True}})
    waiting = simulate(no_timeout, _mocks())
    assert waiting.status == "waiting"
    assert "'ready'" in (waiting.message or "")


def test_failure_runs_compensations_with_mocked_outcomes() -> None:
    d = definition(
        {
            "A": task(
                "create", compensate={"activity": "undo", "input": {"id": "$.state.A"}}, next="B"
            ),
            "B": task("break", end=True),
        }
    )
    result = simulate(
        d,
        _mocks(
            states={
                "A": [{"output": 7}],
                "B": [{"error": "Boom", "cause": "c"}],
                "A#compensate": [{"error": "X"}],
            }
        ),
    )
    assert (result.status, result.error, result.cause) == ("failed", "Boom", "c")
    assert [(c.kind, c.activity, c.input, c.outcome) for c in result.calls][-1] == (
        "compensation",
        "undo",
        {"id": 7},
        "failed: X",
    )
    assert "1 failed: A: X" in result.trail[-1].outcome


def test_parallel_fail_fast_and_wait_all() -> None:
    def par(on_failure: str) -> Any:
        return definition(
            {
                "P": {
                    "type": "parallel",
                    "onBranchFailure": on_failure,
                    "branches": [
                        {"startAt": "X", "states": {"X": task(end=True)}},
                        {"startAt": "Y", "states": {"Y": task(end=True)}},
                    ],
                    "end": True,
                }
            }
        )

    mocks = _mocks(states={"X": [{"error": "Bad"}], "Y": [{"output": 2}]})
    fast = simulate(par("failFast"), mocks)
    assert (fast.status, fast.error) == ("failed", "Bad")
    assert [c.state for c in fast.calls] == ["X"]
    wait_all = simulate(par("waitAll"), mocks)
    assert [c.state for c in wait_all.calls] == ["X", "Y"]
    ok = simulate(par("failFast"), _mocks(states={"X": [{"output": 1}], "P/1/Y": [{"output": 2}]}))
    assert ok.output == {"P": [{"X": 1}, {"Y": 2}]}


def test_mocks_file_is_checked() -> None:
    with pytest.raises(ValidationError):
        Mocks.model_validate({"states": {"A": [{"output": 1, "error": "E"}]}})
    with pytest.raises(ValidationError):
        Mocks.model_validate({"unknown": 1})


def test_onboarding_example_mocks_succeed() -> None:
    d = load_definition((REPO / "definitions" / "device-onboarding.json").read_bytes())
    mocks = Mocks.model_validate(
        json.loads((REPO / "definitions/mocks/device-onboarding.mocks.json").read_text())
    )
    result = simulate(d, mocks)
    assert result.status == "succeeded", result.message
    assert result.output == {"recordId": "rec-1", "events": 2}
    assert [c.attempt for c in result.calls if c.state == "UpdateExternalSystem"] == [1, 2]
