"""Recording a batch of device events: the one write path of ``EventStore.record_many``.

PostgreSQL records the whole batch in one statement (``orch_record_events``, migrations 0002 and
0003); SQLite runs the same steps as Core statements in one transaction. Both: each device's row
locked (devices in sorted order), each event inserted with the next sequence unless it is a
duplicate, a conflict (the id stored with other content) or over the device's limit, the producer
time compared with the device's latest (``out_of_order``), the counters written once, then the
device's run snapshot read. Values the database can never store raise ``EventRefusedError`` with
nothing written: SQLite checks them first (``store.storable``), PostgreSQL refuses the statement
and the refusal is translated here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import RowMapping, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store.columns import utc_now
from store.db import Database
from store.errors import EventRefusedError, StoreError
from store.event_models import DeviceEvent, RecordBatch, RecordResult
from store.runs import DeviceRun, RunSnapshot
from store.sql import insert_device_if_missing
from store.storable import unstorable
from store.tables import DEVICE_EVENTS, DEVICE_RUNS, DEVICES, WAITS

__all__ = ["record_many"]

_E = DEVICE_EVENTS
_D = DEVICES
_R = DEVICE_RUNS
_W = WAITS

#: One statement for a whole batch (migrations 0002, 0003); arrays keep it one prepared statement.
_RECORD_EVENTS_SQL = (
    "SELECT idx, status, seq, run_key, run_id, run_workflow, run_status, run_started_by_event,"
    " run_created_at, run_updated_at, waiting, out_of_order"
    " FROM orch_record_events($1::text[], $2::text[], $3::text[], $4::text[],"
    " $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz, $9::integer)"
)


def _result(status: str, sequence: int | None, out_of_order: bool = False) -> RecordResult:
    return RecordResult(status=status, sequence=sequence, out_of_order=out_of_order)


def _payload_text(payload: object) -> str:
    """The payload as JSON text; NaN and infinities pass (as PostgreSQL's refusal to find)."""
    return json.dumps(payload, separators=(",", ":"))


def _canonical(payload: object) -> str:
    """One text per JSON value, whatever the key order (content comparison on SQLite)."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True)


def _refusals(events: Sequence[DeviceEvent]) -> dict[int, str]:
    """What makes each unstorable event unstorable, by its position in ``events``."""
    found: dict[int, str] = {}
    for position, event in enumerate(events):
        problem = unstorable(event.device_id, event.event_id, event.name, event.payload)
        if problem is not None:
            found[position] = f"event {event.event_id!r} of device {event.device_id!r}: {problem}"
    return found


def _refused(refused: dict[int, str], fallback: str) -> EventRefusedError:
    description = "; ".join(refused.values()) if refused else fallback
    return EventRefusedError(description, refused)


async def _snapshot(connection: AsyncConnection, device_id: str) -> RunSnapshot:
    """The device's run and the names its open waits are for (inside the record transaction)."""
    row = (await connection.execute(select(_R).where(_R.c.device_id == device_id))).mappings()
    found = row.first()
    if found is None:
        return RunSnapshot(None)
    run = DeviceRun(**{name: found[name] for name in DeviceRun.model_fields})
    names = await connection.scalars(
        select(_W.c.event_name)
        .where(
            _W.c.run_id == run.run_id,
            _W.c.device_id == device_id,
            _W.c.status == "waiting",
            _W.c.event_name.is_not(None),
        )
        .distinct()
    )
    return RunSnapshot(run, frozenset(str(name) for name in names))


def _data_errors() -> tuple[type[BaseException], ...]:
    """asyncpg's refusals of values: the server's class 22 and the client's encoding errors."""
    try:
        import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
    except ImportError:  # pragma: no cover - SQLite-only installs never reach the PG path
        return ()
    return (asyncpg.exceptions.DataError, asyncpg.exceptions._base.DataError, UnicodeEncodeError)


_DATA_ERRORS = _data_errors()


async def _lock_device(connection: AsyncConnection, device_id: str, now: datetime) -> RowMapping:
    """The device's counters, row-locked until the transaction ends (created if new)."""
    locked = (
        select(_D.c.count, _D.c.last_sequence, _D.c.last_occurred_at)
        .where(_D.c.device_id == device_id)
        .with_for_update()
    )
    row = (await connection.execute(locked)).mappings().first()
    if row is None:
        await insert_device_if_missing(connection, device_id, now)
        row = (await connection.execute(locked)).mappings().first()
    if row is None:  # pragma: no cover - the row was inserted or existed one statement ago
        raise StoreError(f"device row for {device_id!r} vanished inside its transaction")
    return row


async def record_many(
    db: Database, events: Sequence[DeviceEvent], max_events_per_device: int
) -> RecordBatch:
    """Record the events in one transaction (each device's in the order given) and read each
    device's run snapshot after recording (see ``store.events``)."""
    if not events:
        return RecordBatch([], {})
    # Devices are locked in sorted order (no deadlock between batches); stable, so each
    # device's events keep their order.
    order = sorted(range(len(events)), key=lambda i: events[i].device_id)
    now = utc_now()
    if db.dialect == "postgresql":
        try:
            return await _record_pg(
                db, [events[i] for i in order], order, now, max_events_per_device
            )
        except _DATA_ERRORS as exc:
            # Class 22 (data exception) and the driver's own encoding refusals are decided
            # by the values alone: the same batch fails the same way every time.
            raise _refused(_refusals(events), f"{type(exc).__name__}: {exc}") from exc
    # SQLite stores what PostgreSQL refuses: refuse it here too, before anything is written.
    refused = _refusals(events)
    if refused:
        raise _refused(refused, "")
    return await _record_portable(db, [events[i] for i in order], order, now, max_events_per_device)


async def _record_pg(
    db: Database, ordered: list[DeviceEvent], order: list[int], now: datetime, limit: int
) -> RecordBatch:
    """One call of ``orch_record_events`` (migrations 0002/0003) for the sorted batch."""
    async with db.native() as connection:
        rows = await connection.fetch(
            _RECORD_EVENTS_SQL,
            [e.device_id for e in ordered],
            [e.event_id for e in ordered],
            [e.name for e in ordered],
            [_payload_text(e.payload) for e in ordered],
            [e.enqueued_at for e in ordered],
            [e.received_at for e in ordered],
            [e.occurred_at for e in ordered],
            now,
            limit,
        )
    results: list[RecordResult | None] = [None] * len(ordered)
    runs: dict[str, RunSnapshot] = {}
    for row in rows:
        position = row["idx"] - 1
        results[order[position]] = _result(row["status"], row["seq"], row["out_of_order"])
        device_id = ordered[position].device_id
        if device_id in runs:
            continue
        run = None
        if row["run_key"] is not None:
            run = DeviceRun(
                device_id=device_id,
                run_key=row["run_key"],
                run_id=row["run_id"],
                workflow=row["run_workflow"],
                status=row["run_status"],
                started_by_event=row["run_started_by_event"],
                created_at=row["run_created_at"],
                updated_at=row["run_updated_at"],
            )
        runs[device_id] = RunSnapshot(run, frozenset(row["waiting"] or ()))
    if any(result is None for result in results):  # pragma: no cover - one row per event
        raise StoreError("orch_record_events returned fewer rows than events")
    return RecordBatch([r for r in results if r is not None], runs)


async def _record_portable(
    db: Database, ordered: list[DeviceEvent], order: list[int], now: datetime, limit: int
) -> RecordBatch:
    """The same steps as ``orch_record_events`` in Core statements, in one transaction (SQLite)."""
    results: list[RecordResult | None] = [None] * len(ordered)
    runs: dict[str, RunSnapshot] = {}
    async with db.transaction() as connection:
        start = 0
        while start < len(ordered):
            device_id = ordered[start].device_id
            end = start
            while end < len(ordered) and ordered[end].device_id == device_id:
                end += 1
            device = await _lock_device(connection, device_id, now)
            held, last, refused, changed = (
                int(device["count"]),
                int(device["last_sequence"]),
                0,
                False,
            )
            latest: datetime | None = device["last_occurred_at"]
            for position in range(start, end):
                event = ordered[position]
                first = (
                    await connection.execute(
                        select(_E.c.sequence, _E.c.name, _E.c.payload).where(
                            _E.c.device_id == device_id, _E.c.event_id == event.event_id
                        )
                    )
                ).first()
                if first is not None:
                    stored_as = (first.name, _canonical(first.payload))
                    same = stored_as == (event.name, _canonical(event.payload))
                    status = "duplicate" if same else "conflict"
                    results[order[position]] = _result(status, int(first.sequence))
                    continue
                changed = True
                if held >= limit:
                    refused += 1
                    results[order[position]] = _result("overflow", None)
                    continue
                last += 1
                held += 1
                late = bool(event.occurred_at and latest and event.occurred_at < latest)
                if event.occurred_at is not None and (latest is None or not late):
                    latest = event.occurred_at
                await connection.execute(
                    _E.insert().values(
                        device_id=device_id,
                        sequence=last,
                        event_id=event.event_id,
                        name=event.name,
                        payload=event.payload,
                        enqueued_at=event.enqueued_at,
                        received_at=event.received_at or now,
                        occurred_at=event.occurred_at,
                        out_of_order=late,
                    )
                )
                results[order[position]] = _result("inserted", last, late)
            if changed:
                await connection.execute(
                    update(_D)
                    .where(_D.c.device_id == device_id)
                    .values(
                        count=held,
                        last_sequence=last,
                        overflowed=_D.c.overflowed + refused,
                        last_occurred_at=latest,
                        last_activity_at=now,
                    )
                )
            runs[device_id] = await _snapshot(connection, device_id)
            start = end
    return RecordBatch([r for r in results if r is not None], runs)
