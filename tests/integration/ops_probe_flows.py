"""Small flows the operations tests deploy: they stand in for the workflow flow where only the
Prefect-facing behaviour matters (a process that lives, suspends or completes)."""

from __future__ import annotations

import asyncio

from prefect import flow
from prefect.flow_runs import suspend_flow_run


@flow(name="ops-probe")
async def ops_probe(mode: str = "complete") -> str:
    """``complete`` returns at once; ``linger`` runs until killed; ``suspend`` suspends itself."""
    if mode == "linger":
        # The test kills this process; until then it heartbeats like a busy run.
        await asyncio.Event().wait()
    if mode == "suspend":
        # Work first, as a workflow does before its first wait. A suspend in the same instant as
        # the run's first heartbeat (a flow that suspends at once) can be followed by that
        # heartbeat and then be marked Crashed: the race documented in docs/OPERATIONS.md.
        await asyncio.sleep(2)
        await suspend_flow_run(timeout=3600, key="probe-wait")
    return f"done:{mode}"
