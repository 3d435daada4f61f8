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
        await suspend_flow_run(timeout=3600, key="probe-wait")
    return f"done:{mode}"
