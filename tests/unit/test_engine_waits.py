"""Engine: timer waits (seconds, duration, timestamp literal or path) and event waits."""

from __future__ import annotations

from datetime import timedelta

from interpreter.engine import TIMEOUT
from interpreter.keys import wait_key
from interpreter.runtime import (
    EventReceived,
    EventTimedOut,
    ExecuteTask,
    Finished,
    TaskSucceeded,
    WaitElapsed,
    WaitFor,
)
from tests.unit.engine_helpers import SYSTEM, T0, at, engine, step, task


def _first_wait(states: dict[str, object], input: object = None) -> WaitFor:
    eng = engine(states)
    action = eng.next_action(eng.start(input or {}, SYSTEM), SYSTEM)
    assert isinstance(action, WaitFor)
    return action


def test_seconds_and_duration_count_from_the_step_timestamp() -> None:
    eng = engine(
        {
            "A": task(next="W"),
            "W": {"type": "wait", "seconds": 30, "next": "D"},
            "D": {"type": "wait", "duration": "PT1H", "end": True},
        }
    )
    run = eng.start({}, SYSTEM)
    run, action = step(eng, run, TaskSucceeded(result=1, at=at(100)))
    assert isinstance(action, WaitFor)
    assert action.until == at(130)
    assert action.event is None
    assert action.wait_key == wait_key("W", 1)
    run, action = step(eng, run, WaitElapsed(at=at(131)))
    assert isinstance(action, WaitFor)
    assert action.until == at(131) + timedelta(hours=1)
    run, action = step(eng, run, WaitElapsed(at=at(4000)))
    assert action == Finished(status="succeeded", output={"A": 1})
    assert [e.outcome for e in run.trail] == ["succeeded", "elapsed", "elapsed"]


def test_timestamp_literal_and_path() -> None:
    literal = _first_wait({"W": {"type": "wait", "timestamp": "2025-06-01T12:00:00Z", "end": True}})
    assert literal.until is not None
    assert literal.until.isoformat() == "2025-06-01T12:00:00+00:00"
    from_path = _first_wait(
        {"W": {"type": "wait", "timestamp": "$.input.when", "end": True}},
        {"when": "2025-02-01T00:00:00+02:00"},
    )
    assert from_path.until is not None
    assert from_path.until.isoformat() == "2025-02-01T00:00:00+02:00"


def test_timestamp_path_missing_or_invalid_fails_the_run() -> None:
    eng = engine({"W": {"type": "wait", "timestamp": "$.input.when", "end": True}})
    action = eng.next_action(eng.start({}, SYSTEM), SYSTEM)
    assert isinstance(action, Finished)
    assert action.error == "States.PathNotFound"
    action = eng.next_action(eng.start({"when": "tomorrow"}, SYSTEM), SYSTEM)
    assert isinstance(action, Finished)
    assert action.error == "States.InvalidValue"
    action = eng.next_action(eng.start({"when": 5}, SYSTEM), SYSTEM)
    assert isinstance(action, Finished)
    assert action.error == "States.InvalidValue"


def test_event_received_stores_payload() -> None:
    eng = engine(
        {
            "W": {
                "type": "wait",
                "event": {
                    "name": "device.ready",
                    "timeoutSeconds": 60,
                    "resultPath": "$.state.ready",
                },
                "next": "Use",
            },
            "Use": task(input={"fw": "$.state.ready.firmware"}, end=True),
        }
    )
    run = eng.start({}, SYSTEM)
    action = eng.next_action(run, SYSTEM)
    assert isinstance(action, WaitFor)
    assert (action.event, action.until) == ("device.ready", at(60))
    run, action = step(eng, run, EventReceived(payload={"firmware": "2.1"}, at=at(5)))
    assert isinstance(action, ExecuteTask)
    assert action.input == {"fw": "2.1"}
    assert run.trail[-1].outcome == "event"


def test_event_default_result_path_and_no_timeout() -> None:
    eng = engine({"Ready": {"type": "wait", "event": {"name": "e"}, "end": True}})
    run = eng.start({}, SYSTEM)
    action = eng.next_action(run, SYSTEM)
    assert isinstance(action, WaitFor)
    assert action.until is None
    _, action = step(eng, run, EventReceived(payload=[1], at=T0))
    assert action == Finished(status="succeeded", output={"Ready": [1]})


def test_event_timeout_goes_to_timeout_next_or_fails() -> None:
    states = {
        "W": {
            "type": "wait",
            "event": {"name": "e", "timeoutSeconds": 10, "timeoutNext": "Late"},
            "next": "Ok",
        },
        "Ok": {"type": "succeed"},
        "Late": {"type": "fail", "error": "DeviceTimeout"},
    }
    eng = engine(states)
    run, action = step(eng, eng.start({}, SYSTEM), EventTimedOut(at=at(10)))
    assert action == Finished(status="failed", error="DeviceTimeout")
    assert run.trail[0].outcome == "timeout"
    eng = engine({"W": {"type": "wait", "event": {"name": "e", "timeoutSeconds": 10}, "end": True}})
    _, action = step(eng, eng.start({}, SYSTEM), EventTimedOut(at=at(10)))
    assert isinstance(action, Finished)
    assert action.error == TIMEOUT
    assert "'e'" in (action.cause or "")


def test_wait_key_alphabet_and_uniqueness() -> None:
    keys = {wait_key(p, v) for p in ("Wait", "wait", "Par/0/Wait", "Par@2/0/Wait") for v in (1, 2)}
    assert len(keys) == 8
    for key in keys:
        assert all(c.isdigit() or c == "-" or ("a" <= c <= "z") for c in key)
