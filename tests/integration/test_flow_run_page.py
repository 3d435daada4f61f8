"""What an operator sees of a run in Prefect, read with the Prefect client (real server).

A run's task runs are its activities only (bookkeeping is journalled in the database, not run as
Prefect tasks, on the first execution and on every replay); a step that failed is a Failed task
run with its error and cause, which a replay never runs again; a waiting run says what it waits
for and until when (state message, one log line, the trail so far, the API's status); a
completed run's output is an artifact and in the API's status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import text

from tests.integration.test_flow_harness import FlowSystem, flow_database_url, flow_system

__all__ = ["flow_database_url", "flow_system"]

pytestmark = pytest.mark.integration

FAILURE = "Device.Refused: the device said no"


def _tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _poll(what: str, probe: Callable[[], Awaitable[Any]], deadline: float = 30.0) -> Any:
    end = time.monotonic() + deadline
    found: Any = None
    while time.monotonic() < end:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {deadline}s (last seen: {found!r})")


async def _task_runs(run_id: uuid.UUID, expected: set[str]) -> list[Any]:
    """The run's task runs, once every name in ``expected`` is there in a final state (task-run
    states arrive as events, a little after the flow run's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:

        async def probe() -> list[Any] | None:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
            final = {str(r.name) for r in runs if r.state is not None and r.state.is_final()}
            return runs if expected <= final else None

        found: list[Any] = await _poll(f"task runs {sorted(expected)}", probe)
        return found


async def _artifacts(run_id: uuid.UUID, ready: Callable[[list[Any]], bool]) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:

        async def probe() -> list[Any] | None:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
            return found if ready(found) else None

        artifacts: list[Any] = await _poll("the run's artifacts", probe)
        return artifacts


def _rows(artifact: Any) -> list[dict[str, Any]]:
    data = artifact.data
    rows: list[dict[str, Any]] = json.loads(data) if isinstance(data, str) else data
    return rows


async def _status(run_id: uuid.UUID) -> Any:
    """``GET /workflows/{id}``'s answer, from the API's service over the same Prefect server."""
    from api.service import WorkflowService
    from listeners.control import PrefectRunControl

    async with PrefectRunControl("run-workflow/flow-tests") as control:
        nothing = cast(Any, None)  # reading a run needs neither ingress, definitions nor ledger
        service = WorkflowService(control, nothing, nothing, router=nothing, ledger=nothing)
        return await service.status(str(run_id))


async def _due_at(run_id: uuid.UUID) -> datetime:
    from flows.runtime import get_resources

    resources = await get_resources()
    async with resources.db.transaction() as connection:
        due = await connection.scalar(
            text("SELECT due_at FROM waits WHERE run_id = :run ORDER BY created_at LIMIT 1"),
            {"run": str(run_id)},
        )
    assert isinstance(due, datetime), due
    return due if due.tzinfo else due.replace(tzinfo=UTC)


async def _log_lines(run_id: uuid.UUID) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        logs = await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
        )
    return [log.message for log in logs]


@pytest.fixture
def run_logs_at_info() -> Iterator[None]:
    """The test session logs Prefect at WARNING; some tests read a run's INFO lines (the
    executor runs in this process, so its run logger is this one)."""
    run_logger = logging.getLogger("prefect.flow_runs")
    previous = run_logger.level
    run_logger.setLevel(logging.INFO)  # setLevel, not the attribute: it clears level caches
    try:
        yield
    finally:
        run_logger.setLevel(previous)


@pytest.mark.usefixtures("run_logs_at_info")
async def test_a_waiting_run_says_what_it_waits_for_and_until_when(
    flow_system: FlowSystem,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from flows.trail import SO_FAR_DESCRIPTION

    device = _tag("dev")
    run_id = await flow_system.start("event.json", {"tag": _tag("waiting")}, device_id=device)
    flow_run = await flow_system.suspended(run_id, "waitready")
    due = (await _due_at(run_id)).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    message = flow_run.state.message
    expected = f"waiting at WaitReady for event 'device.ready' of device {device} until {due}"
    assert message == expected

    async def one_waiting_line() -> list[str]:
        lines = await _log_lines(run_id)
        return lines if any(line.startswith(message) for line in lines) else []

    lines = await _poll("the waiting log line", one_waiting_line)
    assert [line for line in lines if line.startswith("waiting at")] == [
        f"{message} (suspended; wait key {flow_run.state.state_details.pause_key})"
    ]
    assert not [line for line in lines if "Suspending flow run" in line], lines

    status = await _status(run_id)
    assert status.state_name == "Suspended"
    assert status.state_message == message
    assert status.current_state == "WaitReady"
    assert not status.trail_complete
    assert [(step.state, step.type) for step in status.trail] == [("WaitReady", "wait")]
    assert status.trail[-1].outcome == message

    artifacts = await _artifacts(run_id, lambda found: bool(found))
    assert [a.description for a in artifacts] == [f"{SO_FAR_DESCRIPTION} {message}"]

    # Cancelled while it waits (no process holds it): the trail so far stays readable.
    async with get_client() as client:
        await client.set_flow_run_state(run_id, Cancelled(message="by the test"), force=True)
    await flow_system.final(run_id)
    cancelled = await _status(run_id)
    assert cancelled.status == "CANCELLED"
    assert cancelled.current_state == "WaitReady"
    assert [step.state for step in cancelled.trail] == ["WaitReady"]


async def test_a_completed_run_shows_only_its_states_and_its_output(
    flow_system: FlowSystem,
) -> None:
    from flows.trail import OUTPUT_DESCRIPTION, TRAIL_DESCRIPTION, read_output

    device = _tag("dev")
    tag = _tag("completed")
    run_id = await flow_system.start("event.json", {"tag": tag}, device_id=device)
    await flow_system.suspended(run_id, "waitready")
    await flow_system.send_event(device, "device.ready", {"firmware": "2.1"})
    output = await flow_system.result(run_id)
    assert output == {"ready": {"firmware": "2.1"}}

    # One task run: the activity. No load/register/claim/resolve/finish task runs, none from
    # the replay after the resume.
    task_runs = await _task_runs(run_id, {"After"})
    assert [(str(r.name), r.state.name) for r in task_runs] == [("After", "Completed")]

    def both(found: list[Any]) -> bool:
        descriptions = [a.description or "" for a in found]
        return any(d.startswith(TRAIL_DESCRIPTION) for d in descriptions) and any(
            d.startswith(OUTPUT_DESCRIPTION) for d in descriptions
        )

    artifacts = await _artifacts(run_id, both)
    shown = next(a for a in artifacts if (a.description or "").startswith(OUTPUT_DESCRIPTION))
    assert shown.type == "markdown"
    assert read_output(shown.data) == (True, {"ready": {"firmware": "2.1"}})
    final = next(a for a in artifacts if (a.description or "").startswith(TRAIL_DESCRIPTION))
    assert [row["state"] for row in _rows(final)] == ["WaitReady", "After", "Done"]

    status = await _status(run_id)
    assert status.output == {"ready": {"firmware": "2.1"}}
    assert status.trail_complete
    assert status.current_state == "Done"
    assert await flow_system.effects(tag) == 1


async def test_a_failed_step_is_a_failed_task_run_that_a_replay_does_not_run_again(
    flow_system: FlowSystem,
) -> None:
    device = _tag("dev")
    tag = _tag("refused")
    run_id = await flow_system.start("fail-then-wait.json", {"tag": tag}, device_id=device)
    await flow_system.suspended(run_id, "waitretry")
    assert await flow_system.effects(tag) == 2  # two attempts, then caught

    failed = await _task_runs(run_id, {"Refuse"})
    assert [(str(r.name), r.state.type.value) for r in failed] == [("Refuse", "FAILED")]
    assert failed[0].state.message == f"{FAILURE} (after 2 attempts)"

    # The resume replays the run from the top: the journalled failure is read back, the
    # activity is not called, no second task run appears and the decision is the same.
    await flow_system.send_event(device, "device.retry", {"again": True})
    output = await flow_system.result(run_id)

    assert output["retry"] == {"again": True}
    assert "Device.Refused" in json.dumps(output["error"])
    assert await flow_system.effects(tag) == 2
    after = await _task_runs(run_id, {"Refuse"})
    assert [(str(r.name), r.state.type.value) for r in after] == [("Refuse", "FAILED")]


async def test_a_failed_run_shows_its_failed_step_with_error_and_cause(
    flow_system: FlowSystem,
) -> None:
    tag = _tag("broken")
    run_id = await flow_system.start("task-fails.json", {"tag": tag})
    flow_run = await flow_system.final(run_id)
    assert flow_run.state.is_failed()
    assert FAILURE in (flow_run.state.message or "")

    task_runs = await _task_runs(run_id, {"Refuse"})
    assert [(str(r.name), r.state.type.value, r.state.message) for r in task_runs] == [
        ("Refuse", "FAILED", FAILURE)
    ]
    assert await flow_system.effects(tag) == 1


async def test_a_timeout_taken_late_shows_when_it_was_taken(flow_system: FlowSystem) -> None:
    from flows.trail import TRAIL_DESCRIPTION

    run_id = await flow_system.start("event-timeout.json", {}, device_id=_tag("dev"))
    assert await flow_system.result(run_id) == {"timedOut": True}
    due = await _due_at(run_id)

    def final(found: list[Any]) -> bool:
        return any((a.description or "").startswith(TRAIL_DESCRIPTION) for a in found)

    artifacts = await _artifacts(run_id, final)
    trail = next(a for a in artifacts if (a.description or "").startswith(TRAIL_DESCRIPTION))
    wait_row = next(row for row in _rows(trail) if row["state"] == "WaitReady")
    # The resumer delivers the timeout after the deadline: the row says when it was taken.
    assert datetime.fromisoformat(wait_row["at"]) > due, (wait_row, due)


def test_trail_rows_keep_long_outcomes_to_one_short_cell() -> None:
    from flows.trail import MAX_OUTCOME, trail_rows
    from interpreter.runtime import TrailEntry

    at = datetime(2026, 1, 1, tzinfo=UTC)
    long = "failed: Http.Status5xx: " + "x" * 2_000
    rows = trail_rows(
        [
            TrailEntry(state="A", path="A", visit=1, type="task", outcome="succeeded", at=at),
            TrailEntry(
                state="B", path="B", visit=2, type="task", outcome=long, at=at + timedelta(1)
            ),
        ]
    )

    assert rows[0]["outcome"] == "succeeded"
    assert len(rows[1]["outcome"]) == MAX_OUTCOME
    assert rows[1]["outcome"].endswith("…")
    assert rows[1]["outcome"].startswith("failed: Http.Status5xx: xxx")


@pytest.mark.usefixtures("run_logs_at_info")
async def test_a_resumed_run_logs_each_transition_to_prefect_once(
    flow_system: FlowSystem,
) -> None:
    """The replay after a resume re-applies the transitions the first execution logged: they go
    to the local log only, so the run's log in Prefect has each transition once."""
    device = _tag("dev")
    run_id = await flow_system.start("step-wait-step.json", {"tag": _tag("once")}, device_id=device)
    await flow_system.suspended(run_id)
    await flow_system.send_event(device, "device.go", {"n": 1})
    await flow_system.result(run_id)

    async def all_transitions() -> list[str]:
        lines = await _log_lines(run_id)
        return lines if any(line.startswith("Done [succeed") for line in lines) else []

    lines = await _poll("the final transition's log line", all_transitions)
    transitions = [line.split(" ", 1)[0] for line in lines if " [" in line and "#" in line]
    assert sorted(transitions) == ["Done", "First", "Second", "WaitGo"], lines
