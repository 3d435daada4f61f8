"""The truth about each device's current run, and the outbox of routing work still to do.

``device_runs`` has at most one row per device: ``starting`` (a router claimed the start and is
creating the Prefect run), ``running`` (bound to a Prefect flow run id) or ``finished``.

    claim_start(device, run_key, workflow=..., started_by_event=...) -> bool
        compare-and-set: True for exactly one of several routers racing on one device (and again
        for the same run_key, so a redelivered starting event gets the same answer); True when the
        device has no row or its run is finished, or its ``starting`` claim is older than
        ``stale_after`` (the claimer died before creating the run)
    set_run(device, run_key, run_id) -> bool      starting -> running, for that run_key only
    finish(device, run_id_or_key) -> bool         -> finished, only if it is still the current run
    current(device) -> DeviceRun | None

``route_outbox`` holds start/resume requests that must happen even when Prefect is unreachable
right now: the router enqueues (idempotent on ``(device_id, event_id, action)``), a reconciler
takes ``pending(limit)`` in order, performs each (the performing is idempotent: ``claim_start`` and
``WaitStore.resolve`` make a repeat harmless) and calls ``mark_done`` or ``mark_failed`` (which
counts the attempt, keeps the error and schedules the next attempt).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue
from sqlalchemy import RowMapping, or_, select, update

from store.columns import utc_now
from store.db import Database
from store.idempotency import to_json
from store.sql import insert_or_ignore
from store.tables import DEVICE_RUNS, ROUTE_OUTBOX

__all__ = ["DeviceRun", "DeviceRunStore", "OutboxEntry"]

_R = DEVICE_RUNS
_O = ROUTE_OUTBOX

RunStatus = Literal["starting", "running", "finished"]


class DeviceRun(BaseModel):
    """A device's current (or last) run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str
    run_key: str
    run_id: str | None
    workflow: str
    status: RunStatus
    started_by_event: str | None
    created_at: datetime
    updated_at: datetime


class OutboxEntry(BaseModel):
    """A start or resume still to perform."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: int
    device_id: str
    event_id: str
    action: Literal["start", "resume"]
    payload: JsonValue
    status: Literal["pending", "done"]
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime


def _run(row: RowMapping) -> DeviceRun:
    return DeviceRun(**{name: row[name] for name in DeviceRun.model_fields})


def _entry(row: RowMapping) -> OutboxEntry:
    return OutboxEntry(**{name: row[name] for name in OutboxEntry.model_fields})


class DeviceRunStore:
    """Current run per device, and the routing outbox (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def current(self, device_id: str) -> DeviceRun | None:
        """The device's run row, or None if it never had one."""
        async with self._db.transaction(readonly=True) as connection:
            query = select(_R).where(_R.c.device_id == device_id)
            row = (await connection.execute(query)).mappings().first()
        return None if row is None else _run(row)

    async def claim_start(
        self,
        device_id: str,
        run_key: str,
        *,
        workflow: str,
        started_by_event: str | None = None,
        stale_after: timedelta | None = None,
    ) -> bool:
        """Claim the right to start the device's next run (see the module docstring)."""
        now = utc_now()
        async with self._db.transaction() as connection:
            inserted = await insert_or_ignore(
                connection,
                _R,
                {
                    "device_id": device_id,
                    "run_key": run_key,
                    "run_id": None,
                    "workflow": workflow,
                    "status": "starting",
                    "started_by_event": started_by_event,
                    "created_at": now,
                    "updated_at": now,
                },
                ["device_id"],
            )
            if inserted:
                return True
            takeover = _R.c.status == "finished"
            if stale_after is not None:
                takeover = or_(
                    takeover, (_R.c.status == "starting") & (_R.c.updated_at < now - stale_after)
                )
            # Compare-and-set: of two routers that both saw "finished", PostgreSQL re-checks the
            # condition for the second after the first commits, and it no longer holds.
            claimed = await connection.execute(
                update(_R)
                .where(_R.c.device_id == device_id, _R.c.run_key != run_key, takeover)
                .values(
                    run_key=run_key,
                    run_id=None,
                    workflow=workflow,
                    status="starting",
                    started_by_event=started_by_event,
                    created_at=now,
                    updated_at=now,
                )
            )
            if claimed.rowcount == 1:
                return True
            mine = await connection.scalar(
                select(_R.c.run_key).where(
                    _R.c.device_id == device_id,
                    _R.c.run_key == run_key,
                    _R.c.status != "finished",
                )
            )
            return mine is not None

    async def set_run(self, device_id: str, run_key: str, run_id: str) -> bool:
        """Bind the claimed start to its Prefect flow run id (``starting`` -> ``running``)."""
        async with self._db.transaction() as connection:
            result = await connection.execute(
                update(_R)
                .where(
                    _R.c.device_id == device_id,
                    _R.c.run_key == run_key,
                    _R.c.status.in_(["starting", "running"]),
                    or_(_R.c.run_id.is_(None), _R.c.run_id == run_id),
                )
                .values(run_id=run_id, status="running", updated_at=utc_now())
            )
        return result.rowcount == 1

    async def finish(self, device_id: str, run: str) -> bool:
        """Mark the device's run finished if ``run`` (its run id or run key) is still current."""
        async with self._db.transaction() as connection:
            result = await connection.execute(
                update(_R)
                .where(
                    _R.c.device_id == device_id,
                    or_(_R.c.run_id == run, _R.c.run_key == run),
                    _R.c.status != "finished",
                )
                .values(status="finished", updated_at=utc_now())
            )
        return result.rowcount == 1

    async def enqueue(
        self,
        device_id: str,
        event_id: str,
        action: Literal["start", "resume"],
        payload: Any = None,
        *,
        not_before: datetime | None = None,
    ) -> int:
        """Queue a start/resume (idempotent per device, event and action); the entry's id."""
        now = utc_now()
        async with self._db.transaction() as connection:
            await insert_or_ignore(
                connection,
                _O,
                {
                    "device_id": device_id,
                    "event_id": event_id,
                    "action": action,
                    "payload": to_json(payload),
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": not_before or now,
                    "created_at": now,
                    "updated_at": now,
                },
                ["device_id", "event_id", "action"],
            )
            entry_id = await connection.scalar(
                select(_O.c.id).where(
                    _O.c.device_id == device_id, _O.c.event_id == event_id, _O.c.action == action
                )
            )
        if entry_id is None:  # pragma: no cover - inserted or found in this transaction
            raise LookupError(f"outbox entry for {device_id}/{event_id}/{action} vanished")
        return int(entry_id)

    async def pending(self, limit: int = 100, now: datetime | None = None) -> list[OutboxEntry]:
        """Pending entries whose next attempt is due, oldest first (per device: in order)."""
        query = (
            select(_O)
            .where(_O.c.status == "pending", _O.c.next_attempt_at <= (now or utc_now()))
            .order_by(_O.c.id)
            .limit(limit)
        )
        async with self._db.transaction(readonly=True) as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [_entry(row) for row in rows]

    async def mark_done(self, entry_id: int) -> None:
        """The entry was performed."""
        async with self._db.transaction() as connection:
            await connection.execute(
                update(_O).where(_O.c.id == entry_id).values(status="done", updated_at=utc_now())
            )

    async def mark_failed(
        self, entry_id: int, error: str, *, retry_at: datetime | None = None
    ) -> None:
        """An attempt failed: count it, keep the error, try again at ``retry_at`` (default now)."""
        now = utc_now()
        async with self._db.transaction() as connection:
            await connection.execute(
                update(_O)
                .where(_O.c.id == entry_id, _O.c.status == "pending")
                .values(
                    attempts=_O.c.attempts + 1,
                    last_error=error[:2000],
                    next_attempt_at=retry_at or now,
                    updated_at=now,
                )
            )
