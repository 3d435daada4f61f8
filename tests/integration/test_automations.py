"""Stuck-run alerts on a real Prefect server: `apply` is idempotent, a run that stays Running past
the threshold alerts the webhook once, a short run never does, and a Paused run is judged against
the longer paused threshold (a waiting run is not stuck)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from prefect import get_client
from prefect.events.actions import RunDeployment
from prefect.events.schemas.automations import EventTrigger
from prefect.states import Completed, Paused, Pending, Running

from operations.automations import (
    AUTOMATION_NAMES,
    NAME_CRASHED,
    NAME_STUCK_ACTIVE,
    AlertSettings,
    apply_automations,
    make_plan,
)
from operations.crash_guard import crash_guard
from tests.integration.ops_helpers import WebhookReceiver, wait_for, webhook_receiver
from tests.integration.ops_probe_flows import ops_probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ACTIVE_SECONDS = 10.0
PAUSED_SECONDS = 30.0
GUARD = f"guard-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with webhook_receiver() as r:
        yield r


async def _deployment(client: Any) -> str:
    flow_id = await client.create_flow(ops_probe)
    name = f"alerts-{uuid.uuid4().hex[:8]}"
    await client.create_deployment(flow_id=flow_id, name=name)
    return f"ops-probe/{name}"


async def _guard_deployment(client: Any) -> str:
    """A crash-guard deployment for the crashed-run automation to name (nothing runs it here)."""
    flow_id = await client.create_flow(crash_guard)
    await client.create_deployment(flow_id=flow_id, name=GUARD)
    return f"crash-guard/{GUARD}"


def _settings(deployment: str, receiver: WebhookReceiver, **overrides: Any) -> AlertSettings:
    values: dict[str, Any] = {
        "guard_deployment": f"crash-guard/{GUARD}",
        "threshold_hours": ACTIVE_SECONDS / 3600,
        "paused_threshold_hours": PAUSED_SECONDS / 3600,
        "webhook_url": receiver.url,
        "webhook_block": f"alerts-{uuid.uuid4().hex[:8]}",
        "deployments": [deployment],
    }
    values.update(overrides)
    return AlertSettings(**values)


async def test_apply_is_idempotent_and_updates_on_change(
    prefect_server: object, receiver: WebhookReceiver
) -> None:
    async with get_client() as client:
        deployment = await _deployment(client)
        guard = await client.read_deployment_by_name(await _guard_deployment(client))
        settings = _settings(deployment, receiver)
        plan, _ = await make_plan(client, settings)
        first = await apply_automations(client, plan)
        second = await apply_automations(client, plan)
        changed, _ = await make_plan(client, _settings(deployment, receiver, threshold_hours=1.0))
        third = await apply_automations(client, changed)
        stored = await client.read_automations_by_name(NAME_STUCK_ACTIVE)
        (crashed,) = await client.read_automations_by_name(NAME_CRASHED)

    assert {a.outcome for a in first} <= {"created", "updated"}
    assert [a.outcome for a in second] == ["unchanged"] * len(AUTOMATION_NAMES)
    assert [a.id for a in second] == [a.id for a in first]
    by_name = {a.name: a.outcome for a in third}
    assert by_name[NAME_STUCK_ACTIVE] == "updated"
    assert len(stored) == 1
    trigger = stored[0].trigger
    assert isinstance(trigger, EventTrigger)
    assert trigger.within == timedelta(hours=1)
    # The crashed-run automation changes no state itself: it runs the guard for the run.
    (action,) = crashed.actions
    assert isinstance(action, RunDeployment)
    assert action.deployment_id == guard.id
    assert action.parameters is not None and action.parameters["window_seconds"] == 90


async def test_missing_deployment_is_refused(
    prefect_server: object, receiver: WebhookReceiver
) -> None:
    async with get_client() as client:
        await _guard_deployment(client)
        with pytest.raises(LookupError) as caught:
            await make_plan(client, _settings("ops-probe/no-such-deployment", receiver))
        watched = await _deployment(client)
        no_guard = _settings(watched, receiver, guard_deployment="crash-guard/not-deployed")
        with pytest.raises(LookupError) as no_guard_caught:
            await make_plan(client, no_guard)
    assert "ops-probe/no-such-deployment" in str(caught.value)
    assert "crash-guard/not-deployed" in str(no_guard_caught.value)


async def test_stuck_running_alerts_once_and_waiting_run_uses_paused_threshold(
    prefect_server: object, receiver: WebhookReceiver
) -> None:
    async with get_client() as client:
        deployment_name = await _deployment(client)
        await _guard_deployment(client)
        plan, _ = await make_plan(client, _settings(deployment_name, receiver))
        await apply_automations(client, plan)
        deployment = await client.read_deployment_by_name(deployment_name)

        async def new_run() -> Any:
            return await client.create_flow_run_from_deployment(deployment.id)

        short, stuck, waiting = await new_run(), await new_run(), await new_run()
        # short: Running then Completed well inside the threshold.
        await client.set_flow_run_state(short.id, Running(), force=True)
        await client.set_flow_run_state(short.id, Completed(), force=True)
        # stuck: Pending, then Running, and never moves again.
        await client.set_flow_run_state(stuck.id, Pending(), force=True)
        await client.set_flow_run_state(stuck.id, Running(), force=True)
        # waiting: Running briefly, then Paused (as a run waiting for a device event is).
        await client.set_flow_run_state(waiting.id, Running(), force=True)
        await client.set_flow_run_state(
            waiting.id, Paused(timeout_seconds=3600, pause_key="wait-for-ack"), force=True
        )
        paused_at = time.monotonic()

        def alerts_for(run_id: uuid.UUID) -> list[Any]:
            return receiver.matching(lambda b: b.get("flow_run_id") == str(run_id))

        async def stuck_alert() -> list[Any] | None:
            return alerts_for(stuck.id) or None

        first = await wait_for(stuck_alert, deadline_seconds=60, what="the stuck-run alert")
        assert first[0]["alert"] == "stuck-active"
        assert first[0]["state"] == "Running"
        assert first[0]["window_seconds"] == ACTIVE_SECONDS
        # The paused run has been Paused longer than the active threshold but not the paused one:
        # it must not have alerted (this check means something only inside the paused window).
        assert time.monotonic() - paused_at < PAUSED_SECONDS
        assert alerts_for(waiting.id) == []

        async def waiting_alert() -> list[Any] | None:
            return alerts_for(waiting.id) or None

        waited = await wait_for(waiting_alert, deadline_seconds=90, what="the paused-run alert")
        assert time.monotonic() - paused_at >= PAUSED_SECONDS
        assert waited[0]["alert"] == "stuck-waiting"
        assert waited[0]["state"] == "Paused"
        # Long past both windows: the short run never alerted, the stuck one alerted once.
        assert alerts_for(short.id) == []
        assert len(alerts_for(stuck.id)) == 1
        await client.set_flow_run_state(stuck.id, Completed(), force=True)
        await client.set_flow_run_state(waiting.id, Completed(), force=True)
