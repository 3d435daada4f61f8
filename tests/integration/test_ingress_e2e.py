"""Ingress end to end with the real flow: a device's events start, resume and start again.

The ``run-workflow/device-workflow`` deployment of ``flows.workflow:run_workflow`` is executed by
the in-process executor (``flows.executor``, with its resumer ``flows.timers``) on the flow
harness's app database, and events go through the local ingress (``Ingress.process``) on that same
database, as ``orchestration send-event`` does. A small definition waits for ``device.ready`` and
returns its payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio

from listeners.local import IngressRuntime, open_ingress
from listeners.pipeline import Disposition
from listeners.router import RecordStatus, RouteAction
from listeners.settings import IngressSettings
from tests.integration.test_flow_harness import FlowSystem, flow_database_url, flow_system

__all__ = ["flow_database_url", "flow_system"]

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

DEADLINE = 90.0
DEPLOYMENT = "run-workflow/device-workflow"
T = TypeVar("T")

DEFINITION = {
    "name": "e2e-ready",
    "version": "1",
    "configuration": {"onFailure": "fail"},
    "startAt": "WaitReady",
    "states": {
        "WaitReady": {
            "type": "wait",
            "event": {
                "name": "device.ready",
                "timeoutSeconds": 600,
                "timeoutNext": "TimedOut",
                "resultPath": "$.state.ready",
            },
            "next": "Done",
        },
        "Done": {
            "type": "succeed",
            "output": {"ready": "$.state.ready", "startedBy": "$.input.event.eventId"},
        },
        "TimedOut": {"type": "succeed", "output": {"timedOut": True}},
    },
}


async def wait_until(probe: Callable[[], Awaitable[T]], what: str) -> T:
    end = time.monotonic() + DEADLINE
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}")
        await asyncio.sleep(0.2)


@pytest_asyncio.fixture(loop_scope="session")
async def device_workflow(flow_system: FlowSystem) -> AsyncIterator[None]:
    """The ingress's deployment, executed in this process by a second executor."""
    from flows.executor import Executor, deploy
    from flows.workflow import run_workflow

    deployment_id = await deploy(run_workflow, "device-workflow")
    executor = Executor(
        {deployment_id: run_workflow}, concurrency=5, poll_seconds=0.2, resumer_tick_seconds=0.3
    )
    task = asyncio.create_task(executor.run())
    try:
        yield
    finally:
        executor.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=60)


@contextlib.asynccontextmanager
async def ingress(flow_system: FlowSystem, definition: Path) -> AsyncIterator[IngressRuntime]:
    settings = IngressSettings(workflow=str(definition), deployment=DEPLOYMENT, prefect_timeout=10)
    async with open_ingress(database_url=flow_system.database_url, settings=settings) as rt:
        yield rt


@pytest.mark.asyncio(loop_scope="session")
async def test_events_start_resume_and_a_second_run_waits_for_its_own_event(
    flow_system: FlowSystem, device_workflow: None
) -> None:
    dev = f"e2e-{uuid.uuid4().hex[:8]}"
    # Runs read a definition file only from the working directory or ORCH_DEFINITIONS_DIRECTORY.
    definition = flow_system.definitions_dir / f"e2e-ready-{dev}.json"
    definition.write_text(json.dumps(DEFINITION))

    async with ingress(flow_system, definition) as rt:
        # 1. The device's first event starts a run, which suspends at its wait.
        first = await rt.local.send(dev, "device.hello", {"boot": 1}, event_id="hello-1")
        assert first.disposition is Disposition.COMPLETE
        assert first.result is not None and first.result.action is RouteAction.STARTED
        assert first.result.run_id is not None
        run_one = uuid.UUID(first.result.run_id)
        await flow_system.suspended(run_one, "waitready")

        # 2. device.ready through the same ingress resumes it; the run ends with the payload.
        ready = await rt.local.send(dev, "device.ready", {"firmware": "2.1"}, event_id="ready-1")
        assert ready.result is not None
        assert ready.result.recorded is RecordStatus.RECORDED
        assert ready.result.action in (RouteAction.RESUMED, RouteAction.DEFERRED)
        assert await flow_system.result(run_one) == {
            "ready": {"firmware": "2.1"},
            "startedBy": "hello-1",
        }
        (consumed,) = await rt.events.store.list(dev, name="device.ready")
        assert consumed.consumed_by is not None

        async def finished() -> bool:
            await rt.reconciler.run_once()  # in case the flow's own mark did not land
            current = await rt.ledger.current(dev)
            return current is not None and current.finished

        await wait_until(finished, "the device's first run to be marked finished")

        # 3. A new start event starts a second run, which must wait for a NEW device.ready:
        # the first one was consumed by the first run.
        second = await rt.local.send(dev, "device.hello", {"boot": 2}, event_id="hello-2")
        assert second.result is not None and second.result.action is RouteAction.STARTED
        assert second.result.run_id is not None and second.result.run_id != first.result.run_id
        run_two = uuid.UUID(second.result.run_id)
        state = await flow_system.wait_state(
            run_two, lambda s: s.is_paused() or s.is_final(), "suspended or final"
        )
        assert state.state.is_paused(), (
            f"the second run did not wait for a new device.ready: {state.state}"
            f" (output {await state.state.aresult() if state.state.is_completed() else None});"
            " the flow claims events with a wait key that repeats across runs"
        )

        again = await rt.local.send(dev, "device.ready", {"firmware": "2.2"}, event_id="ready-2")
        assert again.result is not None
        assert again.result.action in (RouteAction.RESUMED, RouteAction.DEFERRED)
        assert await flow_system.result(run_two) == {
            "ready": {"firmware": "2.2"},
            "startedBy": "hello-2",
        }
        events = {e.event_id: e for e in await rt.events.store.list(dev, name="device.ready")}
        assert events["ready-1"].consumed_by != events["ready-2"].consumed_by
        assert str(run_one) in str(events["ready-1"].consumed_by)
        assert str(run_two) in str(events["ready-2"].consumed_by)
