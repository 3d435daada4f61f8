"""Crashed workers: a run whose process is killed stops heartbeating and the crashed-run automation
marks it Crashed (and tells the webhook); a live run and a suspended run in the same window are
left alone. Real server, real processes (``python -m prefect.engine``, what a worker launches)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.objects import StateType
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.states import Cancelled

from operations.automations import AlertSettings, apply_automations, make_plan
from tests.integration.ops_helpers import WebhookReceiver, wait_for, webhook_receiver
from tests.integration.ops_probe_flows import ops_probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_SECONDS = 30  # Prefect's minimum
MISSED_HEARTBEATS = 1.5


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as r:
        yield r


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _execute(run_id: uuid.UUID) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PREFECT__FLOW_RUN_ID"] = str(run_id)
    env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(HEARTBEAT_SECONDS)
    return subprocess.Popen(
        [sys.executable, "-m", "prefect.engine"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_killed_run_is_marked_crashed_live_and_suspended_runs_are_not(
    prefect_server: object,
    receiver: WebhookReceiver,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    async with get_client() as client:
        flow_id = await client.create_flow(ops_probe)
        name = f"crash-{uuid.uuid4().hex[:8]}"
        deployment_id = await client.create_deployment(
            flow_id=flow_id,
            name=name,
            entrypoint="tests/integration/ops_probe_flows.py:ops_probe",
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
            ],
        )
        settings = AlertSettings(
            heartbeat_seconds=HEARTBEAT_SECONDS,
            missed_heartbeats=MISSED_HEARTBEATS,
            webhook_url=receiver.url,
            webhook_block=f"crash-{uuid.uuid4().hex[:8]}",
            deployments=[f"ops-probe/{name}"],
            paused_threshold_hours=1.0,
        )
        plan, _ = await make_plan(client, settings)
        await apply_automations(client, plan)

        killed = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"mode": "linger"}
        )
        alive = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"mode": "linger"}
        )
        suspended = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"mode": "suspend"}
        )
        runs = {run.id: _execute(run.id) for run in (killed, alive, suspended)}
        processes.extend(runs.values())

        async def heartbeated(run_id: uuid.UUID) -> bool | None:
            page = await client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
                    resource=EventResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
                ),
                limit=1,  # the client's default (100) exceeds the server's maximum (50)
            )
            return True if page.events else None

        async def state_of(run_id: uuid.UUID) -> Any:
            return (await client.read_flow_run(run_id)).state

        async def suspended_now() -> bool | None:
            state = await state_of(suspended.id)
            return True if state is not None and state.name == "Suspended" else None

        # Both windows open: the suspended run heartbeated before it suspended, the killed one
        # heartbeats now. Without "Suspended" ending its window, it would be marked first.
        for run_id in (suspended.id, killed.id, alive.id):
            await wait_for(
                lambda r=run_id: heartbeated(r), deadline_seconds=90, what=f"heartbeat of {run_id}"
            )
        await wait_for(suspended_now, deadline_seconds=60, what="the probe run to suspend")
        assert runs[suspended.id].wait(timeout=60) == 0  # a suspended run's process ends cleanly

        runs[killed.id].send_signal(signal.SIGKILL)
        runs[killed.id].wait(timeout=30)

        async def crashed() -> Any:
            state = await state_of(killed.id)
            return state if state is not None and state.type == StateType.CRASHED else None

        window = HEARTBEAT_SECONDS * MISSED_HEARTBEATS
        state = await wait_for(crashed, deadline_seconds=window + 90, what="the Crashed mark")
        assert "heartbeat" in (state.message or "")

        alive_state = await state_of(alive.id)
        suspended_state = await state_of(suspended.id)
        assert alive_state is not None and alive_state.type == StateType.RUNNING
        assert suspended_state is not None and suspended_state.name == "Suspended"

        async def crash_alert() -> list[Any] | None:
            found = receiver.matching(
                lambda b: b.get("alert") == "crashed" and b.get("flow_run_id") == str(killed.id)
            )
            return found or None

        await wait_for(crash_alert, deadline_seconds=30, what="the crashed-run webhook")
        assert receiver.matching(lambda b: b.get("flow_run_id") == str(alive.id)) == []

        runs[alive.id].kill()
        runs[alive.id].wait(timeout=30)
        for run in (alive, suspended):
            await client.set_flow_run_state(run.id, Cancelled(), force=True)
