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
def test_only_waiting_states_are_downgraded(
    message: str, expected: int, caplog: pytest.LogCaptureFixture
) -> None:
    install_suspend_log_filter()
    install_suspend_log_filter()  # idempotent: one filter
    logger = logging.getLogger("prefect.flow_runs")
    assert sum(type(f).__name__ == "_SuspendIsNotAnError" for f in logger.filters) == 1
    with caplog.at_level(logging.DEBUG, logger="prefect.flow_runs"):
        logger.error(message)
    assert [r.levelno for r in caplog.records if r.getMessage() == message] == [expected]
