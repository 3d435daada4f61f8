"""A tiny deployed flow for the ingress tests, shaped like ``flows.workflow.run_workflow``.

It behaves as the real flow promises to towards ingress: register the wait (``waits`` table), then
try to claim the event from the store, and only when nothing is there suspend with a
deterministic key; on resume it starts from the top, claims the event (idempotent on the wait key)
and resolves the wait. Its end marks the device's run finished in ``device_runs``.

``input.event.payload`` steers it: ``{"mode": "finish"}`` returns at once; ``{"mode": "wait",
"for": "approve", "gate": "/path"}`` first waits until the gate file exists (a busy run), then waits
for the event. The app database comes from ``ORCH_DB_URL``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.flow_runs import asuspend_flow_run
from prefect.input import RunInput
from sqlalchemy import update

FLOW_NAME = "ingress-probe"


class EventArrived(RunInput):
    kind: str
    at: str
    eventId: str | None = None  # noqa: N815 - the resume input's JSON spelling


async def _wait_for_gate(gate: str, deadline_seconds: float = 120) -> None:
    """Stay busy until the test opens the gate (creates the file)."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if await asyncio.to_thread(Path(gate).exists):
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"gate {gate} never opened")


@flow(name=FLOW_NAME, persist_result=True)
async def ingress_probe(
    workflow: str, input: dict[str, Any], version: str | None = None, device_id: str | None = None
) -> dict[str, Any]:
    from store.columns import utc_now
    from store.db import Database
    from store.events import EventStore
    from store.tables import DEVICE_RUNS, WAITS
    from store.waits import WaitStore

    payload = input["event"]["payload"]
    run_id = str(get_run_context().flow_run.id)  # type: ignore[union-attr]
    db = await Database.connect(os.environ["ORCH_DB_URL"])
    try:
        claimed: str | None = None
        if payload.get("mode") == "wait":
            if payload.get("gate"):
                await _wait_for_gate(payload["gate"])
            name = payload.get("for", "approve")
            wait_key = f"wait-{name}"
            # Register first (under the device's lock, like the real flow), then claim.
            await WaitStore(db).register(run_id, wait_key, device_id, name, None)
            store = EventStore(db)
            event = await store.claim(device_id or "", name, f"{run_id}:{wait_key}")
            if event is None:
                get_run_logger().info("suspending for %s", name)
                await asuspend_flow_run(wait_for_input=EventArrived, key=wait_key, timeout=600)
                event = await store.claim(device_id or "", name, f"{run_id}:{wait_key}")
            claimed = event.event_id if event else None
            async with db.transaction() as connection:
                await connection.execute(
                    update(WAITS)
                    .where(WAITS.c.run_id == run_id, WAITS.c.wait_key == wait_key)
                    .values(status="resolved", resolved_at=utc_now(), resolved_how="event")
                )
        async with db.transaction() as connection:
            await connection.execute(
                update(DEVICE_RUNS)
                .where(DEVICE_RUNS.c.device_id == device_id, DEVICE_RUNS.c.run_id == run_id)
                .values(status="finished", updated_at=utc_now())
            )
        return {"claimed": claimed}
    finally:
        await db.close()


if __name__ == "__main__":
    # ``python -m tests.support.ingress_probe NAME``: serve the flow as deployment NAME.
    import sys

    ingress_probe.serve(name=sys.argv[1], limit=20)
