"""The crash guard's decision: only a run still Running/Pending, in that state for longer than the
window and silent for the window, is marked Crashed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from operations.crash_guard import Verdict, judge

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=90)
LONG_AGO = NOW - timedelta(minutes=10)


@pytest.mark.parametrize("state_type", ["RUNNING", "PENDING"])
def test_active_and_silent_for_the_window_is_crashed(state_type: str) -> None:
    verdict = judge(
        state_type=state_type,
        state_since=LONG_AGO,
        last_heartbeat=NOW - WINDOW - timedelta(seconds=1),
        now=NOW,
        window=WINDOW,
    )
    assert verdict is Verdict.CRASHED


def test_never_heartbeated_but_active_for_the_window_is_crashed() -> None:
    verdict = judge(
        state_type="RUNNING", state_since=LONG_AGO, last_heartbeat=None, now=NOW, window=WINDOW
    )
    assert verdict is Verdict.CRASHED


@pytest.mark.parametrize(
    "state_type", ["PAUSED", "SCHEDULED", "COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
)
def test_a_run_that_left_running_is_not_touched_however_silent(state_type: str) -> None:
    # PAUSED covers Suspended: the state a late heartbeat wrongly reopens the window on.
    verdict = judge(
        state_type=state_type, state_since=LONG_AGO, last_heartbeat=LONG_AGO, now=NOW, window=WINDOW
    )
    assert verdict is Verdict.NOT_ACTIVE


def test_a_heartbeat_inside_the_window_means_alive() -> None:
    verdict = judge(
        state_type="RUNNING",
        state_since=LONG_AGO,
        last_heartbeat=NOW - timedelta(seconds=5),
        now=NOW,
        window=WINDOW,
    )
    assert verdict is Verdict.ALIVE


def test_a_run_that_entered_running_inside_the_window_owes_no_heartbeat_yet() -> None:
    # Resumed a moment ago: its new process may not have sent its first heartbeat.
    verdict = judge(
        state_type="RUNNING",
        state_since=NOW - timedelta(seconds=10),
        last_heartbeat=LONG_AGO,
        now=NOW,
        window=WINDOW,
    )
    assert verdict is Verdict.RECENT


def test_a_missing_run_is_missing() -> None:
    verdict = judge(state_type=None, state_since=None, last_heartbeat=None, now=NOW, window=WINDOW)
    assert verdict is Verdict.MISSING
