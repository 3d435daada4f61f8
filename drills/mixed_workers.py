"""Drill 9 (issue 8, item 9): a stock Prefect process worker and ``orchestration worker`` serve the
same deployment at once (docs/OPERATIONS.md allows it). Each claims due runs as they come,
including runs resumed after a wait; claims that lose a race, and runs a claimer leaves Pending,
Submitting or Running, must end like every other run: each episode one completed run."""

from __future__ import annotations

import httpx

from drills.catalog import SETTLE_DEADLINE, drill, trial
from drills.env import BIN, Platform
from drills.procs import REPO
from drills.report import Row

DEVICES = 20
POOL = "drill-mixed"
DEPLOYMENT = "run-workflow/device-workflow"


async def put_deployment_on_pool(api_url: str) -> None:
    """Create a process work pool and move the executor's deployment onto it."""
    async with httpx.AsyncClient(timeout=30) as client:
        created = await client.post(
            f"{api_url}/work_pools/", json={"name": POOL, "type": "process"}
        )
        if created.status_code not in (200, 201, 409):
            created.raise_for_status()
        found = await client.get(f"{api_url}/deployments/name/{DEPLOYMENT}")
        found.raise_for_status()
        moved = await client.patch(
            f"{api_url}/deployments/{found.json()['id']}",
            json={
                "work_pool_name": POOL,
                # As prefect.yaml's pull step does: the flow process runs in the checkout.
                "pull_steps": [
                    {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
                ],
            },
        )
        moved.raise_for_status()


@drill(
    "worker-mixed",
    9,
    injected=f"a Prefect process worker beside the executor on one deployment ({DEVICES} devices, "
    "each started, suspended, then resumed)",
    expected="1 completed run per episode, each key once, nothing left Pending/Running",
    quick=False,
)
async def worker_mixed(platform: Platform, row: Row) -> Row:
    async with trial(platform, row) as t:
        await t.stage.start_system()
        await put_deployment_on_pool(platform.prefect.api_url)
        stock = t.stage.process(
            "prefect-worker",
            [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--limit", "8"],
        ).start()
        await stock.wait_for_output("started", 120)
        devices = [t.device(n) for n in range(DEVICES)]
        for device in devices:
            await t.episode_start(device)
        for device in devices:
            await t.episode_end(device)
        t.fault()
        return await t.settle(SETTLE_DEADLINE + 60)
