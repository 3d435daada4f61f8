"""Engine: tasks, choices, succeed and fail, data flow and keys."""

from __future__ import annotations

import pytest

from interpreter.engine import NO_CHOICE_MATCHED, Engine
from interpreter.errors import AuthoringError, ExpressionError
from interpreter.runtime import ExecuteTask, Finished, TaskFailed, TaskSucceeded
from tests.unit.engine_helpers import HASH, SYSTEM, T0, at, definition, engine, step, task, when


def test_task_input_is_resolved_and_result_stored_under_state_name_by_default() -> None:
    eng = engine(
        {
            "Create": task("records.create", input={"key": "$.input.id", "kind": "k"}, next="Done"),
            "Done": {"type": "succeed"},
        }
    )
    run = eng.start({"id": "d1"}, SYSTEM)
    action = eng.next_action(run, SYSTEM)
    assert isinstance(action, ExecuteTask)
    assert action.activity == "records.create"
    assert action.input == {"key": "d1", "kind": "k"}
    assert action.step_key == f"{HASH[:12]}:Create:1"
    assert action.idempotency_key == f"run-1:{HASH[:12]}:Create:1"
    assert action.retry.max_attempts == 1
    run, action = step(eng, run, TaskSucceeded(result={"id": 7}, at=at(1)))
    assert action == Finished(status="succeeded", output={"Create": {"id": 7}})
    assert run.timestamp == at(1)
    assert [(e.state, e.outcome) for e in run.trail] == [
        ("Create", "succeeded"),
        ("Done", "succeeded"),
    ]


def test_result_path_and_end_output_is_state() -> None:
    eng = engine({"A": task(resultPath="$.state.deep.result", end=True)})
    run = eng.start({}, SYSTEM)
    run, action = step(eng, run, TaskSucceeded(result=3, at=T0))
    assert action == Finished(status="succeeded", output={"deep": {"result": 3}})


def test_missing_input_path_fails_the_state_catchably() -> None:
    eng = engine(
        {
            "A": task(
                input={"x": "$.input.missing"},
                catch=[
                    {
                        "errors": ["States.PathNotFound"],
                        "next": "Handle",
                        "errorPath": "$.state.err",
                    }
                ],
                next="B",
            ),
            "B": {"type": "succeed"},
            "Handle": task("handle", end=True),
        }
    )
    run = eng.start({}, SYSTEM)
    action = eng.next_action(run, SYSTEM)
    assert isinstance(action, ExecuteTask)
    assert action.state == "Handle"
    assert run.data["state"]["err"]["error"] == "States.PathNotFound"
    assert "$.input.missing" in run.data["state"]["err"]["cause"]
    assert "'A'" in run.data["state"]["err"]["cause"]
    assert run.trail[0].outcome == "failed: States.PathNotFound"


def test_missing_input_path_uncaught_fails_the_run() -> None:
    eng = engine({"A": task(input={"x": "$.state.nope"}, end=True)})
    run = eng.start({}, SYSTEM)
    action = eng.next_action(run, SYSTEM)
    assert isinstance(action, Finished)
    assert action.status == "failed"
    assert action.error == "States.PathNotFound"


def test_catch_rules_in_order_wildcard_and_uncaught() -> None:
    states = {
        "A": task(
            catch=[
                {"errors": ["Specific"], "next": "S"},
                {"errors": ["*"], "next": "Any"},
            ],
            next="Ok",
        ),
        "Ok": {"type": "succeed"},
        "S": {"type": "fail", "error": "WasSpecific"},
        "Any": {"type": "fail", "error": "WasAny", "cause": "c"},
    }
    eng = engine(states)
    run = eng.start({}, SYSTEM)
    _, action = step(eng, run, TaskFailed(error="Specific", cause="x", at=T0))
    assert action == Finished(status="failed", error="WasSpecific")
    _, action = step(eng, run, TaskFailed(error="Other", cause="x", at=T0))
    assert action == Finished(status="failed", error="WasAny", cause="c")
    eng2 = engine({"A": task(end=True)})
    run2 = eng2.start({}, SYSTEM)
    _, action = step(eng2, run2, TaskFailed(error="Boom", cause="why", at=T0))
    assert action == Finished(status="failed", error="Boom", cause="why")


def test_retry_policy_and_timeout_fall_back_to_configuration() -> None:
    eng = engine(
        {"A": task(end=True), "B": task(retry={"maxAttempts": 4}, timeoutSeconds=5, end=True)},
        configuration={"defaultRetry": {"maxAttempts": 3}, "defaultTimeoutSeconds": 60},
    )
    action = eng.next_action(eng.start({}, SYSTEM), SYSTEM)
    assert isinstance(action, ExecuteTask)
    assert (action.retry.max_attempts, action.timeout_seconds) == (3, 60)
    eng_b = engine(
        {"B": task(retry={"maxAttempts": 4}, timeoutSeconds=5, end=True)},
        configuration={"defaultRetry": {"maxAttempts": 3}, "defaultTimeoutSeconds": 60},
    )
    action = eng_b.next_action(eng_b.start({}, SYSTEM), SYSTEM)
    assert isinstance(action, ExecuteTask)
    assert (action.retry.max_attempts, action.timeout_seconds) == (4, 5)


def test_idempotency_key_expression_and_literal() -> None:
    eng = engine({"A": task(idempotencyKey="$.input.device", end=True)})
    action = eng.next_action(eng.start({"device": "d-9"}, SYSTEM), SYSTEM)
    assert isinstance(action, ExecuteTask)
    assert action.idempotency_key == "d-9"
    eng = engine({"A": task(idempotencyKey="$.input.n", end=True)})
    action = eng.next_action(eng.start({"n": {"b": 1, "a": 2}}, SYSTEM), SYSTEM)
    assert isinstance(action, ExecuteTask)
    assert action.idempotency_key == '{"a":2,"b":1}'
    eng = engine({"A": task(idempotencyKey="fixed", end=True)})
    action = eng.next_action(eng.start({}, SYSTEM), SYSTEM)
    assert isinstance(action, ExecuteTask)
    assert action.idempotency_key == "fixed"


def test_system_scope_in_input() -> None:
    eng = engine(
        {
            "A": task(
                input={
                    "run": "$.system.runId",
                    "device": "$.system.deviceId",
                    "name": "$.system.stateName",
                    "attempt": "$.system.attempt",
                    "ts": "$.system.timestamp",
                    "hash": "$.system.definitionHash",
                },
                end=True,
            )
        }
    )
    action = eng.next_action(eng.start({}, SYSTEM), SYSTEM)
    assert isinstance(action, ExecuteTask)
    assert action.input == {
        "run": "run-1",
        "device": "dev-1",
        "name": "A",
        "attempt": 1,
        "ts": "2025-01-01T00:00:00+00:00",
        "hash": HASH,
    }


def test_loop_counts_visits_and_keys_differ_per_visit() -> None:
    eng = engine(
        {
            "Poll": task(input={"n": "$.system.attempt"}, next="Check"),
            "Check": {
                "type": "choice",
                "choices": [
                    {
                        "condition": {
                            "op": "equals",
                            "variable": "$.state.Poll.done",
                            "value": True,
                        },
                        "next": "Done",
                    }
                ],
                "default": "Poll",
            },
            "Done": {"type": "succeed", "output": {"polls": "$.state.Poll.n"}},
        }
    )
    run = eng.start({}, SYSTEM)
    keys = []
    for n in (1, 2, 3):
        action = eng.next_action(run, SYSTEM)
        assert isinstance(action, ExecuteTask)
        assert action.input == {"n": n}
        assert action.visit == n
        keys.append(action.step_key)
        run = eng.apply(run, TaskSucceeded(result={"done": n == 3, "n": n}, at=at(n)), SYSTEM)
    assert len(set(keys)) == 3
    assert eng.next_action(run, SYSTEM) == Finished(status="succeeded", output={"polls": 3})
    assert run.visits == {"Poll": 3, "Check": 3, "Done": 1}
    assert [e.outcome for e in run.trail if e.state == "Check"] == [
        "-> Poll (default)",
        "-> Poll (default)",
        "-> Done",
    ]


def test_choice_without_match_or_default_fails() -> None:
    eng = engine(
        {
            "C": {
                "type": "choice",
                "choices": [when("$.input.x", 1, "S")],
            },
            "S": {"type": "succeed"},
        }
    )
    action = eng.next_action(eng.start({"x": 2}, SYSTEM), SYSTEM)
    assert isinstance(action, Finished)
    assert action.error == NO_CHOICE_MATCHED
    assert "'C'" in (action.cause or "")
    assert eng.next_action(eng.start({"x": 1}, SYSTEM), SYSTEM) == Finished(
        status="succeeded", output={}
    )


def test_choice_cycle_without_work_is_stopped() -> None:
    eng = engine(
        {
            "C1": {
                "type": "choice",
                "choices": [when("$.input.x", 1, "C2")],
                "default": "C2",
            },
            "C2": {
                "type": "choice",
                "choices": [when("$.input.x", 1, "C1")],
                "default": "C1",
            },
        }
    )
    action = eng.next_action(eng.start({"x": 1}, SYSTEM), SYSTEM)
    assert isinstance(action, Finished)
    assert action.error == "States.TransitionLimit"


def test_succeed_output_mapping_missing_path_fails() -> None:
    eng = engine({"S": {"type": "succeed", "output": {"x": "$.state.none"}}})
    action = eng.next_action(eng.start({}, SYSTEM), SYSTEM)
    assert isinstance(action, Finished)
    assert (action.status, action.error) == ("failed", "States.PathNotFound")


def test_fail_state() -> None:
    eng = engine({"F": {"type": "fail", "error": "Nope", "cause": "because"}})
    run = eng.start({}, SYSTEM)
    assert (run.status, run.error, run.cause, run.current) == ("failed", "Nope", "because", None)
    assert eng.next_action(run, SYSTEM) == Finished(status="failed", error="Nope", cause="because")


def test_outcome_that_does_not_fit_the_state_is_refused() -> None:
    eng = engine({"A": task(end=True)})
    run = eng.start({}, SYSTEM)
    from interpreter.runtime import WaitElapsed

    with pytest.raises(ValueError, match="'A'"):
        eng.apply(run, WaitElapsed(at=T0), SYSTEM)
    done = eng.apply(run, TaskSucceeded(result=1, at=T0), SYSTEM)
    with pytest.raises(ValueError, match="ended"):
        eng.apply(done, TaskSucceeded(result=1, at=T0), SYSTEM)


def test_constructor_compiles_and_checks_targets() -> None:
    with pytest.raises(AuthoringError, match="'Nowhere'"):
        engine({"A": task(next="Nowhere")})
    with pytest.raises(ExpressionError):
        engine({"A": task(input={"x": "$.bogus.scope"}, end=True)})
    with pytest.raises(ExpressionError):
        engine({"W": {"type": "wait", "duration": "P1M", "end": True}})
    with pytest.raises(ExpressionError):
        engine({"A": task(resultPath="$.input.x", end=True)})


def test_engine_does_not_mutate_runs() -> None:
    eng = Engine(definition({"A": task(next="B"), "B": task(end=True)}), definition_hash=HASH)
    run = eng.start({"k": [1]}, SYSTEM)
    before = run.model_dump()
    eng.apply(run, TaskSucceeded(result={"v": 1}, at=at(3)), SYSTEM)
    assert run.model_dump() == before
