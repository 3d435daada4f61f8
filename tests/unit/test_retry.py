"""Retry and catch decisions."""

from __future__ import annotations

import pytest

from interpreter.models import CatchRule, Configuration, RetryPolicy, TaskState
from interpreter.retry import (
    effective_policy,
    jittered,
    match_catch,
    retry_delays,
    should_retry,
)


def _task(**fields: object) -> TaskState:
    return TaskState.model_validate({"type": "task", "activity": "a", "end": True} | fields)


def test_effective_policy_prefers_state_then_configuration_then_single_attempt() -> None:
    own = _task(retry={"maxAttempts": 5})
    config = Configuration.model_validate({"defaultRetry": {"maxAttempts": 3}})
    assert effective_policy(own, config).max_attempts == 5
    assert effective_policy(_task(), config).max_attempts == 3
    assert effective_policy(_task(), Configuration()).max_attempts == 1


@pytest.mark.parametrize(
    ("policy", "error", "retryable", "attempt", "expected"),
    [
        ({"maxAttempts": 3}, "Any", True, 1, True),
        ({"maxAttempts": 3}, "Any", True, 2, True),
        ({"maxAttempts": 3}, "Any", True, 3, False),
        ({"maxAttempts": 3}, "Any", False, 1, False),
        ({"maxAttempts": 3, "retryOn": ["Http.Status5xx"]}, "Http.Status5xx", True, 1, True),
        ({"maxAttempts": 3, "retryOn": ["Http.Status5xx"]}, "Other", True, 1, False),
        ({"maxAttempts": 3, "retryOn": ["*"]}, "Other", True, 1, True),
        ({"maxAttempts": 3, "retryOn": ["States.ALL"]}, "Other", True, 1, True),
        ({"maxAttempts": 3, "retryOn": ["*"], "doNotRetryOn": ["Bad"]}, "Bad", True, 1, False),
        ({"maxAttempts": 3, "doNotRetryOn": ["*"]}, "Other", True, 1, False),
        ({"maxAttempts": 3, "retryOn": []}, "Other", True, 1, False),
        ({"maxAttempts": 1}, "Any", True, 1, False),
    ],
)
def test_should_retry(
    policy: dict[str, object], error: str, retryable: bool, attempt: int, expected: bool
) -> None:
    assert should_retry(RetryPolicy.model_validate(policy), error, retryable, attempt) is expected


def test_retry_delays_backoff_and_cap() -> None:
    policy = RetryPolicy(
        max_attempts=5, interval_seconds=1, backoff_rate=2, max_interval_seconds=5, jitter=0.5
    )
    assert retry_delays(policy) == [1, 2, 4, 5]
    assert retry_delays(RetryPolicy(max_attempts=1)) == []
    assert retry_delays(RetryPolicy(max_attempts=3, interval_seconds=0.5, backoff_rate=1)) == [
        0.5,
        0.5,
    ]


def test_jitter_only_shortens() -> None:
    assert jittered(10, 0.2, 0.0) == 10
    assert jittered(10, 0.2, 1.0) == pytest.approx(8)
    assert jittered(10, 0.0, 0.7) == 10


def test_match_catch_first_matching_rule() -> None:
    rules = [
        CatchRule(errors=["A"], next="One"),
        CatchRule(errors=["States.ALL"], next="All"),
        CatchRule(errors=["*"], next="Never"),
    ]
    assert match_catch(rules, "A") == rules[0]
    assert match_catch(rules, "B") == rules[1]
    assert match_catch(rules[:1], "B") is None
    assert match_catch([], "A") is None
