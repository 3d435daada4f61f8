"""Pure retry and catch decisions: which policy applies, whether to retry, the delays, which catch.

The executor (Prefect flow or simulator) asks these questions; it owns the sleeping and the jitter's
random draw (``jittered`` takes the draw as an argument so this module stays deterministic).

Error-name matching: ``"*"`` and ``"States.ALL"`` match any error name; other names match exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from interpreter.models import CatchRule, Configuration, RetryPolicy, TaskState

__all__ = [
    "WILDCARDS",
    "effective_policy",
    "jittered",
    "match_catch",
    "matches_error",
    "retry_delays",
    "should_retry",
]

WILDCARDS: Final = frozenset({"*", "States.ALL"})
_NO_RETRY: Final = RetryPolicy()  # max_attempts=1: the first try only


def matches_error(names: Iterable[str], error_name: str) -> bool:
    """True when ``error_name`` is in ``names`` or ``names`` holds a wildcard."""
    return any(name in WILDCARDS or name == error_name for name in names)


def effective_policy(state: TaskState, configuration: Configuration) -> RetryPolicy:
    """The task's own ``retry``, else ``configuration.defaultRetry``, else a single attempt."""
    if state.retry is not None:
        return state.retry
    if configuration.default_retry is not None:
        return configuration.default_retry
    return _NO_RETRY


def should_retry(policy: RetryPolicy, error_name: str, retryable: bool, attempt: int) -> bool:
    """Whether attempt number ``attempt`` (1-based, the one that just failed) is tried again.

    Never when the error is non-retryable, attempts are used up, or ``doNotRetryOn`` names the error
    (it wins over ``retryOn``); otherwise when ``retryOn`` is null or names the error.
    """
    if not retryable or attempt >= policy.max_attempts:
        return False
    if matches_error(policy.do_not_retry_on, error_name):
        return False
    return policy.retry_on is None or matches_error(policy.retry_on, error_name)


def retry_delays(policy: RetryPolicy) -> list[float]:
    """Seconds before attempt 2, 3, ...: ``interval * backoff**n``, capped, without jitter."""
    delays: list[float] = []
    for n in range(policy.max_attempts - 1):
        delay = policy.interval_seconds * policy.backoff_rate**n
        if policy.max_interval_seconds is not None:
            delay = min(delay, policy.max_interval_seconds)
        delays.append(delay)
    return delays


def jittered(delay: float, jitter: float, draw: float) -> float:
    """``delay`` shortened by up to ``jitter`` of itself; ``draw`` is a random number in [0, 1).

    Jitter only shortens, so a jittered delay never exceeds ``maxIntervalSeconds``.
    """
    return delay * (1.0 - jitter * min(max(draw, 0.0), 1.0))


def match_catch(rules: Sequence[CatchRule], error_name: str) -> CatchRule | None:
    """The first rule whose ``errors`` match ``error_name``, or None."""
    for rule in rules:
        if matches_error(rule.errors, error_name):
            return rule
    return None
