"""Crashed workers: a run whose process is killed stops heartbeating, the crashed-run automation
starts the crash guard and the guard marks it Crashed (and the webhook is told); a live run is left
alone, and so is a suspended run whose window a late heartbeat reopened (the suspend/heartbeat
race, reproduced deterministically). Real server, real processes: the runs execute as a worker
launches them (``python -m prefect.engine``), the guard deployment is served by ``flow.serve``."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import StateType
from prefect.events import Event
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect.exceptions import ObjectNotFound
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


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] = str(HEARTBEAT_SECONDS)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def _execute(run_id: uuid.UUID) -> subprocess.Popen[bytes]:
    env = _env()
    env["PREFECT__FLOW_RUN_ID"] = str(run_id)
    return subprocess.Popen(
        [sys.executable, "-m", "prefect.engine"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _serve_guard(name: str, log: Path) -> subprocess.Popen[bytes]:
    """The guard deployment ``crash-guard/<name>``, served as `serve` does it (a run a process)."""
    env = _env()
    env["PREFECT_RUNNER_POLL_FREQUENCY"] = "1"
    code = f"from operations.crash_guard import crash_guard; crash_guard.serve(name={name!r})"
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )


async def _late_heartbeat(client: Any, run: Any) -> None:
    """The heartbeat the engine's thread sends in the same instant as the suspend, arriving after
    the Suspended event: same name, resource and related deployment as the engine's own."""
    event = Event(
        occurred=datetime.now(UTC),
        event="prefect.flow-run.heartbeat",
        resource={
            "prefect.resource.id": f"prefect.flow-run.{run.id}",
            "prefect.resource.name": run.name,
        },
        related=[
            {"prefect.resource.id": f"prefect.flow.{run.flow_id}", "prefect.resource.role": "flow"},
            {
                "prefect.resource.id": f"prefect.deployment.{run.deployment_id}",
                "prefect.resource.role": "deployment",
            },
        ],
    )
    response = await client._client.post("/events", json=[event.model_dump(mode="json")])
    response.raise_for_status()


async def test_killed_run_is_crashed_live_and_suspended_runs_are_not_despite_late_heartbeat(
    prefect_server: object,
    receiver: WebhookReceiver,
    processes: list[subprocess.Popen[bytes]],
    tmp_path: Path,
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
        guard_name = f"guard-{uuid.uuid4().hex[:8]}"
        processes.append(_serve_guard(guard_name, tmp_path / "guard.log"))

        async def guard_deployment() -> Any:
            try:
                return await client.read_deployment_by_name(f"crash-guard/{guard_name}")
            except ObjectNotFound:
                return None

        guard = await wait_for(guard_deployment, deadline_seconds=60, what="the served guard")
        settings = AlertSettings(
            heartbeat_seconds=HEARTBEAT_SECONDS,
            missed_heartbeats=MISSED_HEARTBEATS,
            webhook_url=receiver.url,
            webhook_block=f"crash-{uuid.uuid4().hex[:8]}",
            deployments=[f"ops-probe/{name}"],
            guard_deployment=f"crash-guard/{guard_name}",
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

        for run_id in (killed.id, alive.id):
            await wait_for(
                functools.partial(heartbeated, run_id),
                deadline_seconds=90,
                what=f"heartbeat of {run_id}",
            )
        await wait_for(suspended_now, deadline_seconds=60, what="the probe run to suspend")
        assert runs[suspended.id].wait(timeout=60) == 0  # a suspended run's process ends cleanly
        # The race, made certain: a heartbeat after the Suspended event reopens its window, which
        # nothing closes again. Before the guard, this run was marked Crashed one window later.
        await _late_heartbeat(client, suspended)

        runs[killed.id].send_signal(signal.SIGKILL)
        runs[killed.id].wait(timeout=30)

        async def guard_verdict(run_id: uuid.UUID) -> str | None:
            """The verdict of the guard run the automation started for ``run_id``, once done."""
            for guard_run in await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[guard.id]))
            ):
                if guard_run.parameters.get("flow_run_id") != str(run_id):
                    continue
                if guard_run.state is not None and guard_run.state.is_completed():
                    return (guard_run.state.message or "").partition(":")[0]
                if guard_run.state is not None and guard_run.state.is_final():
                    log = (tmp_path / "guard.log").read_text()[-3000:]
                    raise AssertionError(f"guard run {guard_run.state}\n{log}")
            return None

        window = HEARTBEAT_SECONDS * MISSED_HEARTBEATS
        budget = window + 120  # trigger evaluation, then the guard's process and its poll
        verdict = await wait_for(
            functools.partial(guard_verdict, killed.id),
            deadline_seconds=budget,
            what="the guard's run for the killed run",
        )
        assert verdict == "crashed"
        state = await state_of(killed.id)
        assert state is not None and state.type == StateType.CRASHED
        assert "heartbeat" in (state.message or "")

        # The late heartbeat did fire the trigger for the suspended run; the guard refused.
        verdict = await wait_for(
            functools.partial(guard_verdict, suspended.id),
            deadline_seconds=budget,
            what="the guard's run for the suspended run",
        )
        assert verdict == "not-active"
        suspended_state = await state_of(suspended.id)
        assert suspended_state is not None and suspended_state.name == "Suspended"
        alive_state = await state_of(alive.id)
        assert alive_state is not None and alive_state.type == StateType.RUNNING

        async def crash_alert() -> list[Any] | None:
            found = receiver.matching(
                lambda b: b.get("alert") == "crashed" and b.get("flow_run_id") == str(killed.id)
            )
            return found or None

        await wait_for(crash_alert, deadline_seconds=30, what="the crashed-run webhook")
        others = {str(alive.id), str(suspended.id)}
        assert receiver.matching(lambda b: b.get("flow_run_id") in others) == []

        runs[alive.id].kill()
        runs[alive.id].wait(timeout=30)
        for run in (alive, suspended):
            await client.set_flow_run_state(run.id, Cancelled(), force=True)
