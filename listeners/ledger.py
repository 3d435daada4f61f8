"""The router's store adapters: events through ``store.events.EventStore``, and the device-run
ledger, the route outbox and the wait index as SQL on the store's tables.

The ledger's statements are the race-free part of start-or-route, so they are spelled out here:

- ``claim_start`` is a compare-and-set on ``device_runs`` (insert-or-ignore when the device has no
  row, else ``UPDATE ... WHERE run_key = <expected> AND status = 'finished'``), and queues its
  "start" outbox item in the same transaction: exactly one caller wins, and a start that was
  claimed is never forgotten even if the process dies before Prefect is called.
- ``bind`` moves the row from "starting" to "running" and marks the start item done, together.
- ``due`` leases outbox items (``FOR UPDATE SKIP LOCKED`` on PostgreSQL) so that several
  reconcilers do not all retry the same item at once; the work is idempotent in any case.

The wait index reads open waits (``resolved_at IS NULL``) written by ``store.waits.WaitStore``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from listeners.events import IncomingEvent
from listeners.router import DeviceRun, OutboxItem, RecordStatus
from store.columns import utc_now
from store.db import Database
from store.events import DeviceEvent, EventStore
from store.sql import insert_or_ignore
from store.tables import DEVICE_RUNS, ROUTE_OUTBOX, WAITS

__all__ = ["SqlRunLedger", "SqlWaitIndex", "StoreEventLog"]

_R = DEVICE_RUNS
_O = ROUTE_OUTBOX
_W = WAITS

#: The router creates a claimed run itself at once; the reconciler steps in after this long.
START_GRACE = timedelta(seconds=10)
#: An outbox item handed to a reconciler is not handed to another one for this long.
LEASE = timedelta(seconds=30)

_STATUS = {
    "inserted": RecordStatus.RECORDED,
    "duplicate": RecordStatus.DUPLICATE,
    "overflow": RecordStatus.OVERFLOW,
}


class StoreEventLog:
    """``EventLog`` over ``store.events.EventStore``."""

    def __init__(self, events: EventStore) -> None:
        self._events = events

    async def record(self, event: IncomingEvent) -> RecordStatus:
        result = await self._events.record(
            DeviceEvent(
                device_id=event.device_id,
                event_id=event.event_id,
                name=event.name,
                payload=event.payload,
                enqueued_at=event.enqueued_at,
                received_at=event.received_at,
            )
        )
        return _STATUS[result.status]

    async def is_unconsumed(self, device_id: str, event_id: str, name: str) -> bool:
        held = await self._events.list(device_id, name=name)
        return any(e.event_id == event_id and e.consumed_by is None for e in held)


class SqlWaitIndex:
    """``WaitIndex`` over the ``waits`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def waiting_runs(self, device_id: str, event_name: str) -> list[str]:
        async with self._db.transaction(readonly=True) as connection:
            rows = await connection.execute(
                select(_W.c.run_id).where(
                    _W.c.device_id == device_id,
                    _W.c.event_name == event_name,
                    _W.c.resolved_at.is_(None),
                )
            )
            return [str(run_id) for (run_id,) in rows]


def _run(row: Any) -> DeviceRun:
    return DeviceRun(
        device_id=row.device_id,
        run_key=row.run_key,
        run_id=row.run_id,
        status=row.status,
        started_by_event=row.started_by_event,
    )


class SqlRunLedger:
    """``RunLedger`` over the ``device_runs`` and ``route_outbox`` tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def snapshot(self, device_id: str, event_name: str) -> tuple[DeviceRun | None, set[str]]:
        """The device's run and which of its runs wait for ``event_name``, in one statement.

        This is the read on every event's path, so it is one round trip: on PostgreSQL a single
        autocommit statement (no BEGIN/COMMIT); SQLite goes through the store's read transaction.
        """
        query = (
            select(_R, _W.c.run_id.label("waiting"))
            .select_from(
                _R.outerjoin(
                    _W,
                    (_W.c.run_id == _R.c.run_id)
                    & (_W.c.device_id == _R.c.device_id)
                    & (_W.c.event_name == event_name)
                    & _W.c.resolved_at.is_(None),
                )
            )
            .where(_R.c.device_id == device_id)
        )
        if self._db.dialect == "postgresql":
            async with self._db.engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                rows = list(await autocommit.execute(query))
        else:
            async with self._db.transaction(readonly=True) as connection:
                rows = list(await connection.execute(query))
        if not rows:
            return None, set()
        return _run(rows[0]), {row.waiting for row in rows if row.waiting is not None}

    async def current(self, device_id: str) -> DeviceRun | None:
        async with self._db.transaction(readonly=True) as connection:
            row = (await connection.execute(select(_R).where(_R.c.device_id == device_id))).first()
        return _run(row) if row is not None else None

    async def claim_start(
        self,
        device_id: str,
        *,
        run_key: str,
        workflow: str,
        event_id: str,
        expected_run_key: str | None,
        request: dict[str, Any],
    ) -> bool:
        now = utc_now()
        async with self._db.transaction() as connection:
            if expected_run_key is None:
                claimed = await insert_or_ignore(
                    connection,
                    _R,
                    {
                        "device_id": device_id,
                        "run_key": run_key,
                        "run_id": None,
                        "workflow": workflow,
                        "status": "starting",
                        "started_by_event": event_id,
                        "created_at": now,
                        "updated_at": now,
                    },
                    ["device_id"],
                )
            else:
                result = await connection.execute(
                    update(_R)
                    .where(
                        _R.c.device_id == device_id,
                        _R.c.run_key == expected_run_key,
                        _R.c.status == "finished",
                    )
                    .values(
                        run_key=run_key,
                        run_id=None,
                        workflow=workflow,
                        status="starting",
                        started_by_event=event_id,
                        updated_at=now,
                    )
                )
                claimed = result.rowcount == 1
            if claimed:
                await insert_or_ignore(
                    connection,
                    _O,
                    {
                        "device_id": device_id,
                        "event_id": event_id,
                        "action": "start",
                        "payload": request,
                        "status": "pending",
                        "attempts": 0,
                        "next_attempt_at": now + START_GRACE,
                        "created_at": now,
                        "updated_at": now,
                    },
                    ["device_id", "event_id", "action"],
                )
            return claimed

    async def bind(self, device_id: str, run_key: str, run_id: str) -> None:
        now = utc_now()
        async with self._db.transaction() as connection:
            started_by = await connection.scalar(
                select(_R.c.started_by_event).where(
                    _R.c.device_id == device_id, _R.c.run_key == run_key
                )
            )
            await connection.execute(
                update(_R)
                .where(
                    _R.c.device_id == device_id,
                    _R.c.run_key == run_key,
                    _R.c.status == "starting",
                )
                .values(run_id=run_id, status="running", updated_at=now)
            )
            if started_by is not None:
                await connection.execute(
                    update(_O)
                    .where(
                        _O.c.device_id == device_id,
                        _O.c.event_id == started_by,
                        _O.c.action == "start",
                    )
                    .values(status="done", updated_at=now)
                )

    async def finish(self, device_id: str, run_key: str) -> bool:
        async with self._db.transaction() as connection:
            result = await connection.execute(
                update(_R)
                .where(
                    _R.c.device_id == device_id,
                    _R.c.run_key == run_key,
                    _R.c.status == "running",
                )
                .values(status="finished", updated_at=utc_now())
            )
            return result.rowcount == 1

    async def active(self, limit: int) -> list[DeviceRun]:
        async with self._db.transaction(readonly=True) as connection:
            rows = await connection.execute(
                select(_R).where(_R.c.status == "running").order_by(_R.c.updated_at).limit(limit)
            )
            return [_run(row) for row in rows]

    async def defer(
        self, device_id: str, event_id: str, action: str, request: dict[str, Any], error: str
    ) -> None:
        now = utc_now()
        async with self._db.transaction() as connection:
            await insert_or_ignore(
                connection,
                _O,
                {
                    "device_id": device_id,
                    "event_id": event_id,
                    "action": action,
                    "payload": request,
                    "status": "pending",
                    "attempts": 0,
                    "last_error": error,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                },
                ["device_id", "event_id", "action"],
            )

    async def due(self, now: datetime, limit: int) -> list[OutboxItem]:
        async with self._db.transaction() as connection:
            query = (
                select(_O)
                .where(_O.c.status == "pending", _O.c.next_attempt_at <= now)
                .order_by(_O.c.next_attempt_at, _O.c.id)
                .limit(limit)
            )
            if connection.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = list(await connection.execute(query))
            if rows:
                await connection.execute(
                    update(_O)
                    .where(_O.c.id.in_([row.id for row in rows]))
                    .values(next_attempt_at=now + LEASE)
                )
        return [
            OutboxItem(
                id=row.id,
                device_id=row.device_id,
                event_id=row.event_id,
                action=row.action,
                request=dict(row.payload or {}),
                attempts=row.attempts,
            )
            for row in rows
        ]

    async def done(self, item_id: int) -> None:
        async with self._db.transaction() as connection:
            await connection.execute(
                update(_O).where(_O.c.id == item_id).values(status="done", updated_at=utc_now())
            )

    async def retry_later(self, item_id: int, error: str, next_attempt_at: datetime) -> None:
        async with self._db.transaction() as connection:
            await connection.execute(
                update(_O)
                .where(_O.c.id == item_id)
                .values(
                    attempts=_O.c.attempts + 1,
                    last_error=error[:2000],
                    next_attempt_at=next_attempt_at,
                    updated_at=utc_now(),
                )
            )

    async def pending(self, device_id: str | None = None) -> list[OutboxItem]:
        """Outbox items not done yet (for tests, the bench and ``status`` output)."""
        async with self._db.transaction(readonly=True) as connection:
            query = select(_O).where(_O.c.status == "pending")
            if device_id is not None:
                query = query.where(_O.c.device_id == device_id)
            rows = list(await connection.execute(query.order_by(_O.c.id)))
        return [
            OutboxItem(
                row.id,
                row.device_id,
                row.event_id,
                row.action,
                dict(row.payload or {}),
                row.attempts,
            )
            for row in rows
        ]
