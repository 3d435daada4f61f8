"""The executor's claims do not hold its polls: a run whose claim is slow (a loaded server answers
a claim in seconds) does not keep other due runs from being claimed and executed.

A real Prefect server and the session's flow runtime; an executor of its own on a deployment of
its own, whose claim of one chosen run waits on a gate the test opens at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import pytest

from tests.integration.test_flow_harness import (
    RUNTIME_DEFINITIONS,
    FlowSystem,
    flow_database_url,
    flow_system,
)

__all__ = ["flow_database_url", "flow_system"]

pytestmark = pytest.mark.integration

DEADLINE = 60.0


async def test_a_slow_claim_does_not_keep_other_due_runs_waiting(
    flow_system: FlowSystem,
) -> None:
    from prefect.client.orchestration import PrefectClient, get_client
    from prefect.client.schemas.objects import FlowRun

    from flows.definitions import pin
    from flows.executor import Executor, deploy
    from flows.workflow import run_workflow
    from interpreter.loader import load_definition

    gate = asyncio.Event()
    claiming = asyncio.Event()
    slow: set[uuid.UUID] = set()

    class SlowClaims(Executor):
        async def _claim(self, client: PrefectClient, flow_run: FlowRun) -> bool | None:
            if flow_run.id in slow:
                claiming.set()
                await gate.wait()
            return await super()._claim(client, flow_run)

    path = RUNTIME_DEFINITIONS / "one-task.json"
    digest = await pin(load_definition(path.read_text()))
    deployment_id = await deploy(run_workflow, f"claims-{uuid.uuid4().hex[:8]}")

    async def create(name: str) -> uuid.UUID:
        parameters: dict[str, Any] = {
            "workflow": str(path),
            "input": {"name": name},
            "definition_hash": digest,
        }
        async with get_client() as client:
            run = await client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
        run_id: uuid.UUID = run.id
        return run_id

    slow_run = await create("slow")
    slow.add(slow_run)
    executor = SlowClaims(
        {deployment_id: run_workflow}, concurrency=5, poll_seconds=0.2, resume_timers=False
    )
    runner = asyncio.create_task(executor.run())
    try:
        await asyncio.wait_for(claiming.wait(), timeout=DEADLINE)
        # The slow claim is pending; a run due after it is claimed and completes meanwhile.
        quick_run = await create("quick")
        quick = await flow_system.final(quick_run, deadline=DEADLINE)
        assert quick.state.is_completed(), quick.state
        assert not gate.is_set()
        slow_state = (await flow_system.read(slow_run)).state
        assert slow_state.is_scheduled(), slow_state  # still being claimed
        gate.set()
        done = await flow_system.final(slow_run, deadline=DEADLINE)
        assert done.state.is_completed(), done.state
    finally:
        gate.set()
        executor.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(runner, timeout=60)
