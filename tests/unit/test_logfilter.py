"""A suspended run's "Finished in state Suspended" line is INFO, real failures stay ERROR."""

from __future__ import annotations

import logging

import pytest

from flows.logfilter import install_suspend_log_filter


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Finished in state Suspended(type=PAUSED)", logging.INFO),
        ("Finished in state Paused()", logging.INFO),
        ("Finished in state Failed('boom')", logging.ERROR),
    ],
)
def test_only_waiting_states_are_downgraded(message: str, expected: int) -> None:
    # A private logger with its own handler: Prefect's flow-run logger would also try its API.
    logger = logging.Logger("test.suspend-filter")
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]  # collect records as they come
    logger.addHandler(handler)
    install_suspend_log_filter(logger)
    install_suspend_log_filter(logger)  # idempotent: one filter
    assert len(logger.filters) == 1
    logger.error(message)
    assert [(r.getMessage(), r.levelno) for r in seen] == [(message, expected)]


def test_the_default_target_is_prefects_flow_run_logger() -> None:
    install_suspend_log_filter()
    logger = logging.getLogger("prefect.flow_runs")
    assert sum(type(f).__name__ == "_SuspendIsNotAnError" for f in logger.filters) == 1
