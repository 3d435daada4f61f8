"""Small flows the operations tests deploy: they stand in for the workflow flow where only the
Prefect-facing behaviour matters (a process that lives, suspends or completes)."""

from __future__ import annotations

import asyncio

from prefect import flow
from prefect.flow_runs import asuspend_flow_run


@flow(name="ops-probe")
async def ops_probe(mode: str = "complete") -> str:
    """``complete`` returns at once; ``linger`` runs until killed; ``suspend`` suspends itself at
    once (the engine's first heartbeat races the Suspended state)."""
    if mode == "linger":
        # The test kills this process; until then it heartbeats like a busy run.
        await asyncio.Event().wait()
    if mode == "suspend":
        # At once, as the race needs: the heartbeat thread's first beat is sent as the run
        # starts, and may reach the server after the Suspended event (docs/OPERATIONS.md).
        await asuspend_flow_run(timeout=3600, key="probe-wait")
    return f"done:{mode}"
