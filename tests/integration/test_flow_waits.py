"""Waits on a real Prefect server (PostgreSQL): runs suspend (no process held), the resumer and
events wake them, replays skip what completed, and a run keeps its pinned definition."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid

import pytest

from tests.integration.test_flow_harness import (
    RUNTIME_DEFINITIONS,
    FlowSystem,
    flow_database_url,
    flow_system,
)

__all__ = ["flow_database_url", "flow_system"]

pytestmark = pytest.mark.integration


def _tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_event_resumes_a_suspended_run_with_its_payload(flow_system: FlowSystem) -> None:
    tag = _tag("event")
    device = _tag("dev")
    run_id = await flow_system.start("event.json", {"tag": tag}, device_id=device)
    await flow_system.suspended(run_id, "waitready")
    assert await flow_system.effects(tag) == 0
    await flow_system.idle()  # suspended: once the engine returns, nothing held in the executor

    await flow_system.send_event(device, "device.ready", {"firmware": "2.1"})
    output = await flow_system.result(run_id)

    assert output == {"ready": {"firmware": "2.1"}}
    assert await flow_system.effects(tag) == 1
    assert "Suspended" in await flow_system.history(run_id)


async def test_event_that_arrived_earlier_is_taken_without_suspending(
    flow_system: FlowSystem,
) -> None:
    device = _tag("dev")
    await flow_system.send_event(device, "device.ready", {"early": True})
    run_id = await flow_system.start("event.json", {"tag": _tag("early")}, device_id=device)
    output = await flow_system.result(run_id)

    assert output == {"ready": {"early": True}}
    assert "Suspended" not in await flow_system.history(run_id)


async def test_event_timeout_takes_timeout_next(flow_system: FlowSystem) -> None:
    run_id = await flow_system.start("event-timeout.json", {}, device_id=_tag("dev"))
    await flow_system.suspended(run_id, "waitready")
    output = await flow_system.result(run_id)

    assert output == {"timedOut": True}


async def test_timer_wakes_a_suspended_run(flow_system: FlowSystem) -> None:
    before, after = _tag("before"), _tag("after")
    run_id = await flow_system.start("timer.json", {"before": before, "after": after})
    await flow_system.suspended(run_id, "sleep")
    assert await flow_system.effects(after) == 0

    await flow_system.result(run_id)

    assert await flow_system.effects(before) == 1  # the replay did not run it again
    assert await flow_system.effects(after) == 1


async def test_suspend_and_resume_at_every_wait_runs_each_activity_once(
    flow_system: FlowSystem,
) -> None:
    tag = _tag("long")
    names = {key: f"{tag}-{key}" for key in ("p", "s2", "s3", "b1", "b2", "s4", "s5")}
    device = _tag("dev")
    run_id = await flow_system.start("long.json", names, device_id=device)

    await flow_system.suspended(run_id, "waitone")
    await flow_system.send_event(device, "one", {"n": 1})
    await flow_system.suspended(run_id, "nap")  # the timer: the resumer wakes it
    await flow_system.suspended(run_id, "both-0-branchwait")
    await flow_system.send_event(device, "two", {"n": 2})
    await flow_system.suspended(run_id, "waitthree")
    await flow_system.send_event(device, "three", {"n": 3})
    await flow_system.result(run_id)

    for name in names.values():
        assert await flow_system.effects(name) == 1, name
    history = await flow_system.history(run_id)
    assert history.count("Suspended") == 4, history
    # Four replays, and the run's task runs are still its seven activities, once each: no
    # bookkeeping task runs, none for a replayed step (the journal answers a replay).
    activities = [
        "Both/0/BranchTask",
        "Both/1/OtherTask",
        "Step1",
        "Step2",
        "Step3",
        "Step4",
        "Step5",
    ]
    assert await _task_run_names(run_id, set(activities)) == activities


async def _task_run_names(run_id: uuid.UUID, expected: set[str]) -> list[str]:
    """The run's task-run names, sorted, once every name in ``expected`` has ended (task-run
    states arrive as events, a little after the flow run's)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    end = time.monotonic() + 30
    names: list[str] = []
    async with get_client() as client:
        while time.monotonic() < end:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
            )
            names = sorted(str(r.name) for r in runs)
            ended = {str(r.name) for r in runs if r.state is not None and r.state.is_final()}
            if expected <= ended:
                return names
            await asyncio.sleep(0.2)
    raise AssertionError(f"task runs {sorted(expected)} not all ended within 30s: {names}")


@pytest.mark.parametrize("by_hash", [True, False], ids=["pinned-by-hash", "cached-task"])
async def test_run_finishes_on_its_pinned_definition(
    flow_system: FlowSystem, by_hash: bool
) -> None:
    # Inside the definitions directory: without a hash the flow reads the path itself.
    path = flow_system.definitions_dir / f"pinned-{uuid.uuid4().hex[:8]}.json"
    shutil.copy(RUNTIME_DEFINITIONS / "event.json", path)
    device = _tag("dev")
    run_id = await flow_system.start(path, {"tag": _tag("pin")}, device_id=device, pin=by_hash)
    await flow_system.suspended(run_id, "waitready")

    changed = json.loads(path.read_text())
    changed["states"]["Done"]["output"] = {"changed": True}
    await asyncio.to_thread(path.write_text, json.dumps(changed))
    await flow_system.send_event(device, "device.ready", {"v": 1})

    assert await flow_system.result(run_id) == {"ready": {"v": 1}}
