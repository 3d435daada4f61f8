"""The truth about each device's current run, and the outbox of routing work still to do.

This is the one implementation of the run ledger the router, the reconciler and the flow share.

``device_runs`` has at most one row per device: ``starting`` (a router claimed the start and is
creating the Prefect run), ``running`` (bound to a Prefect flow run id) or ``finished``.

    claim_start(device, run_key, workflow=..., started_by_event=..., request=...) -> bool
        compare-and-set: True for exactly one of several routers racing on one device (and again
        for the same run_key, so a redelivered starting event gets the same answer); True when the
        device has no row or its run is finished, or its ``starting`` claim is older than
        ``stale_after`` (the claimer died before creating the run). With ``request``, the winner
        queues the "start" outbox entry in the same transaction: a claimed start is never
        forgotten, even if the process dies before Prefect is called.
    set_run(device, run_key, run_id) -> bool      starting -> running, for that run_key only; the
                                                  start's outbox entry is done in the same commit
    finish(device, run_id_or_key) -> bool         -> finished, only if it is still the current run
    current(device) -> DeviceRun | None
    active(limit, after) -> running runs, least recently updated first, a page after the cursor
                          ``after`` (the reconciler's sweep pages through all of them in turn)

``route_outbox`` holds start/resume requests that must happen even when Prefect is unreachable
right now: the router enqueues (idempotent on ``(device_id, event_id, action)``), a reconciler
leases ``due(now, limit)`` (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several reconcilers do not
all retry one entry at once), performs each (idempotent: ``claim_start`` and ``WaitStore.resolve``
make a repeat harmless) and calls ``mark_done`` (with a note when it ended without being
performed) or ``mark_failed`` (which counts the attempt, keeps the error and schedules the next
attempt). ``pending`` lists due entries without leasing them, ``outstanding`` every entry not done
yet, ``entry`` one entry by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue
from sqlalchemy import RowMapping, or_, select, update

from store.columns import utc_now
from store.db import Database
from store.idempotency import to_json
from store.sql import insert_or_ignore
from store.tables import DEVICE_RUNS, ROUTE_OUTBOX

__all__ = ["LEASE", "START_GRACE", "DeviceRun", "DeviceRunStore", "OutboxEntry", "RunSnapshot"]

#: The router creates a claimed run itself at once; the reconciler steps in after this long.
START_GRACE = timedelta(seconds=10)
#: An outbox entry leased to a reconciler is not handed to another one for this long.
LEASE = timedelta(seconds=30)

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

    @property
    def finished(self) -> bool:
        return self.status == "finished"


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """A device's run and the event names that run waits for, read right after recording."""

    run: DeviceRun | None
    waiting: frozenset[str] = frozenset()


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
        request: Any = None,
    ) -> bool:
        """Claim the right to start the device's next run (see the module docstring)."""
        now = utc_now()
        async with self._db.transaction() as connection:
            claimed = await insert_or_ignore(
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
            if not claimed:
                takeover = _R.c.status == "finished"
                if stale_after is not None:
                    takeover = or_(
                        takeover,
                        (_R.c.status == "starting") & (_R.c.updated_at < now - stale_after),
                    )
                # Compare-and-set: of two routers that both saw "finished", PostgreSQL re-checks
                # the condition for the second after the first commits, and it no longer holds.
                result = await connection.execute(
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
                claimed = result.rowcount == 1
            if not claimed:
                mine = await connection.scalar(
                    select(_R.c.run_key).where(
                        _R.c.device_id == device_id,
                        _R.c.run_key == run_key,
                        _R.c.status != "finished",
                    )
                )
                return mine is not None
            if request is not None and started_by_event is not None:
                await insert_or_ignore(
                    connection,
                    _O,
                    _outbox_row(device_id, started_by_event, "start", request, now + START_GRACE),
                    ["device_id", "event_id", "action"],
                )
            return True

    async def set_run(self, device_id: str, run_key: str, run_id: str) -> bool:
        """Bind the claimed start to its Prefect flow run id (``starting`` -> ``running``) and mark
        the start's outbox entry done, together."""
        now = utc_now()
        async with self._db.transaction() as connection:
            result = await connection.execute(
                update(_R)
                .where(
                    _R.c.device_id == device_id,
                    _R.c.run_key == run_key,
                    _R.c.status.in_(["starting", "running"]),
                    or_(_R.c.run_id.is_(None), _R.c.run_id == run_id),
                )
                .values(run_id=run_id, status="running", updated_at=now)
                .returning(_R.c.started_by_event)
            )
            bound = result.first()
            if bound is not None and bound.started_by_event is not None:
                await connection.execute(
                    update(_O)
                    .where(
                        _O.c.device_id == device_id,
                        _O.c.event_id == bound.started_by_event,
                        _O.c.action == "start",
                        _O.c.status == "pending",
                    )
                    .values(status="done", updated_at=now)
                )
        return bound is not None

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

    async def active(
        self, limit: int, after: tuple[datetime, str] | None = None
    ) -> list[DeviceRun]:
        """Runs believed running (bound to a flow run), least recently updated first.

        ``after``: the ``(updated_at, device_id)`` of the last run of the previous page; this page
        starts after it (keyset pagination, so a sweep reaches every run, not only the oldest)."""
        query = select(_R).where(_R.c.status == "running")
        if after is not None:
            at, device_id = after
            query = query.where(
                or_(_R.c.updated_at > at, (_R.c.updated_at == at) & (_R.c.device_id > device_id))
            )
        query = query.order_by(_R.c.updated_at, _R.c.device_id).limit(limit)
        async with self._db.transaction(readonly=True) as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [_run(row) for row in rows]

    async def enqueue(
        self,
        device_id: str,
        event_id: str,
        action: Literal["start", "resume"],
        payload: Any = None,
        *,
        not_before: datetime | None = None,
        error: str | None = None,
    ) -> int:
        """Queue a start/resume (idempotent per device, event and action); the entry's id."""
        now = utc_now()
        row = _outbox_row(device_id, event_id, action, payload, not_before or now)
        if error is not None:
            row["last_error"] = error[:2000]
        async with self._db.transaction() as connection:
            await insert_or_ignore(connection, _O, row, ["device_id", "event_id", "action"])
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

    async def outstanding(self, device_id: str | None = None) -> list[OutboxEntry]:
        """Every entry not done yet, due or not (status output, tests, the bench's count check)."""
        query = select(_O).where(_O.c.status == "pending")
        if device_id is not None:
            query = query.where(_O.c.device_id == device_id)
        async with self._db.transaction(readonly=True) as connection:
            rows = (await connection.execute(query.order_by(_O.c.id))).mappings().all()
        return [_entry(row) for row in rows]

    async def due(self, now: datetime, limit: int) -> list[OutboxEntry]:
        """Lease up to ``limit`` due entries: nobody else gets them for ``LEASE``."""
        query = (
            select(_O)
            .where(_O.c.status == "pending", _O.c.next_attempt_at <= now)
            .order_by(_O.c.next_attempt_at, _O.c.id)
            .limit(limit)
        )
        async with self._db.transaction() as connection:
            if connection.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = (await connection.execute(query)).mappings().all()
            if rows:
                await connection.execute(
                    update(_O)
                    .where(_O.c.id.in_([row["id"] for row in rows]))
                    .values(next_attempt_at=now + LEASE)
                )
        return [_entry(row) for row in rows]

    async def mark_done(self, entry_id: int, *, note: str | None = None) -> None:
        """The entry was performed, or is no longer needed: ``note`` says why (kept in
        ``last_error``, so an operator reading the outbox sees what ended it)."""
        values: dict[str, Any] = {"status": "done", "updated_at": utc_now()}
        if note is not None:
            values["last_error"] = note[:2000]
        async with self._db.transaction() as connection:
            await connection.execute(update(_O).where(_O.c.id == entry_id).values(**values))

    async def entry(self, entry_id: int) -> OutboxEntry | None:
        """One outbox entry, done or not (None for an unknown id)."""
        async with self._db.transaction(readonly=True) as connection:
            row = (await connection.execute(select(_O).where(_O.c.id == entry_id))).mappings()
            found = row.first()
        return None if found is None else _entry(found)

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


def _outbox_row(
    device_id: str, event_id: str, action: str, payload: Any, next_attempt_at: datetime
) -> dict[str, Any]:
    now = utc_now()
    return {
        "device_id": device_id,
        "event_id": event_id,
        "action": action,
        "payload": to_json(payload),
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": next_attempt_at,
        "created_at": now,
        "updated_at": now,
    }
