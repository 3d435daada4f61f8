"""The event store: each device's events, in order, stored once, bounded (the accumulator).

Per device the store keeps its events (with a per-device ``sequence`` 1, 2, 3, ... that never
repeats and never goes back, not even after ``clear``), the count of held events, the last activity
time and how many events were refused for overflow.

- ``record`` is idempotent on ``(device_id, event_id)``: Service Bus redelivers, and a duplicate is
  acknowledged (``duplicate``, with the first copy's sequence) without being stored again or using a
  sequence number. The device's ``devices`` row is locked (``SELECT ... FOR UPDATE`` on PostgreSQL,
  the write lock on SQLite) for the duplicate check, the limit check, the insert and the counter
  update, all in one transaction: sequences are gap-free and race-free, and devices never wait for
  each other on PostgreSQL.
- The same id with other content (another name or payload, compared as JSON values) is a
  ``conflict``: not stored, and the caller dead-letters it (a producer reused an id).
- Events the database can never store (NUL characters, lone surrogates, NaN or infinite numbers;
  see ``store.storable``) raise ``EventRefusedError`` (permanent; it names the events) and nothing
  of the batch is written: SQLite is checked before the write, PostgreSQL refuses the statement.
- ``occurred_at`` (the producer's time, optional) is stored; an event whose producer time is
  earlier than one already recorded for the device is stored in arrival order all the same and
  flagged ``out_of_order`` (on the row and in the result) for the caller to log.
- ``record_many`` records a batch in one transaction (on PostgreSQL one statement: the
  ``orch_record_events`` function of migrations 0002/0003, one round trip for the whole batch), each
  device's events in the order given, and reads after recording, per device, its current run and
  the event names that run waits for (``RunSnapshot``): all the router needs to decide, with no
  second round trip. ``record`` is a batch of one. SQLite runs the same steps as Core statements.
- The limit (``max_events_per_device``, default 1,000) counts held events (consumed or not, until
  cleared). A new event beyond it is not stored: ``record`` returns ``overflow`` (and the device's
  ``overflowed`` counter goes up) so that the caller dead-letters the message with a reason. Nothing
  is dropped silently. A duplicate is reported as ``duplicate`` even when the device is full.
- ``claim(device_id, name, wait_key)`` hands the first unconsumed event with that name to one
  waiting point: it is marked ``consumed_by=wait_key`` with a compare-and-set, so concurrent
  claimers never get the same event, and claiming again with the same key returns the same event.
  ``wait_key`` must identify the waiting point across runs (``<run id>:<wait key>``): the engine's
  wait keys repeat from run to run of one workflow.
- ``clear`` marks the held events cleared (they stop counting and stop being listed). Their ids
  stay so that a late redelivery of a cleared event is still a ``duplicate``;
  ``purge(older_than)`` deletes cleared events for good, which bounds the duplicate-detection
  window to the retention chosen.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue
from sqlalchemy import RowMapping, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from store.columns import utc_now
from store.db import Database
from store.errors import EventRefusedError, StoreError
from store.runs import DeviceRun, RunSnapshot
from store.sql import insert_device_if_missing
from store.storable import unstorable
from store.tables import DEVICE_EVENTS, DEVICE_RUNS, DEVICES, WAITS

__all__ = [
    "DEFAULT_MAX_EVENTS_PER_DEVICE",
    "DeviceEvent",
    "DeviceState",
    "EventStore",
    "RecordBatch",
    "RecordResult",
    "RecordStatus",
    "StoredEvent",
]

DEFAULT_MAX_EVENTS_PER_DEVICE = 1000

Identifier = Annotated[str, Field(min_length=1, max_length=200)]
RecordStatus = Literal["inserted", "duplicate", "conflict", "overflow"]

_E = DEVICE_EVENTS
_D = DEVICES
_R = DEVICE_RUNS
_W = WAITS

#: One statement for a whole batch (migration 0002); arrays keep it one prepared statement.
_RECORD_EVENTS_SQL = (
    "SELECT idx, status, seq, run_key, run_id, run_workflow, run_status, run_started_by_event,"
    " run_created_at, run_updated_at, waiting, out_of_order"
    " FROM orch_record_events($1::text[], $2::text[], $3::text[], $4::text[],"
    " $5::timestamptz[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz, $9::integer)"
)


class DeviceEvent(BaseModel):
    """An event as it arrives (built by the ingress from a Service Bus message or a local call)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: Identifier
    #: The producer's event id, else the broker's message id: the key duplicates are detected on.
    event_id: Identifier
    name: Identifier
    payload: JsonValue = None
    #: When the broker accepted the message (``enqueued_time_utc``), if known.
    enqueued_at: AwareDatetime | None = None
    #: When the ingress received it; ``None`` means "now" by the store's clock.
    received_at: AwareDatetime | None = None
    #: When the producer says the event happened, if it says (out-of-order detection).
    occurred_at: AwareDatetime | None = None


class StoredEvent(BaseModel):
    """An event as stored, with its per-device sequence and who consumed it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str
    event_id: str
    name: str
    payload: JsonValue
    sequence: int
    enqueued_at: datetime | None
    received_at: datetime
    consumed_by: str | None
    consumed_at: datetime | None
    occurred_at: datetime | None = None
    #: Its producer time is earlier than one recorded before it for the device.
    out_of_order: bool = False

    def as_json(self) -> dict[str, Any]:
        """The camelCase JSON document workflows see (timestamps as RFC 3339)."""
        return {
            "deviceId": self.device_id,
            "eventId": self.event_id,
            "name": self.name,
            "payload": self.payload,
            "sequence": self.sequence,
            "enqueuedAt": self.enqueued_at.isoformat() if self.enqueued_at else None,
            "receivedAt": self.received_at.isoformat(),
            "consumedBy": self.consumed_by,
            "consumedAt": self.consumed_at.isoformat() if self.consumed_at else None,
        }


class RecordResult(BaseModel):
    """What ``record`` did: ``inserted`` or ``duplicate`` (both: acknowledge the message),
    ``conflict`` (the id is stored with other content) or ``overflow`` (neither stored: dead-letter
    the message with a reason)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: RecordStatus
    #: The event's sequence (the first copy's for a duplicate or a conflict); None for an overflow.
    sequence: int | None
    #: Inserted with a producer time earlier than one recorded before for the device.
    out_of_order: bool = False

    @property
    def stored(self) -> bool:
        """True when this event is in the store (inserted now or before)."""
        return self.status in ("inserted", "duplicate")


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """What ``record_many`` did: one result per event (in the order given) and, per device, its
    run and what that run waits for as read after the events were recorded."""

    results: list[RecordResult]
    runs: dict[str, RunSnapshot]


class DeviceState(BaseModel):
    """The accumulator's state for one device."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str
    #: Events held (recorded and not cleared).
    count: int
    #: The last sequence handed out (0 before the first event).
    last_sequence: int
    #: Events refused because the device was at its limit.
    overflowed: int
    first_seen_at: datetime
    last_activity_at: datetime


def _stored(row: RowMapping) -> StoredEvent:
    return StoredEvent(
        device_id=row["device_id"],
        event_id=row["event_id"],
        name=row["name"],
        payload=row["payload"],
        sequence=row["sequence"],
        enqueued_at=row["enqueued_at"],
        received_at=row["received_at"],
        consumed_by=row["consumed_by"],
        consumed_at=row["consumed_at"],
        occurred_at=row["occurred_at"],
        out_of_order=row["out_of_order"],
    )


_EVENT_COLUMNS = (
    _E.c.device_id,
    _E.c.event_id,
    _E.c.name,
    _E.c.payload,
    _E.c.sequence,
    _E.c.enqueued_at,
    _E.c.received_at,
    _E.c.consumed_by,
    _E.c.consumed_at,
    _E.c.occurred_at,
    _E.c.out_of_order,
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


def _refused(events: Sequence[DeviceEvent], refused: dict[int, str], fallback: str) -> Exception:
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


# Each lost claim race means another claimer consumed an event, so this bound is never reached by
# honest contention; it stops a livelock caused by a bug from spinning forever.
_MAX_CLAIM_ATTEMPTS = 1000


class EventStore:
    """Record, list, claim and clear the events of devices (see the module docstring)."""

    def __init__(
        self, db: Database, max_events_per_device: int = DEFAULT_MAX_EVENTS_PER_DEVICE
    ) -> None:
        if max_events_per_device < 1:
            raise ValueError("max_events_per_device must be at least 1")
        self._db = db
        self.max_events_per_device = max_events_per_device

    async def _lock_device(
        self, connection: AsyncConnection, device_id: str, now: datetime
    ) -> RowMapping:
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

    async def record(self, event: DeviceEvent) -> RecordResult:
        """Store the event once; ``inserted``, ``duplicate`` or ``overflow`` (see module docs)."""
        return (await self.record_many([event])).results[0]

    async def record_many(self, events: Sequence[DeviceEvent]) -> RecordBatch:
        """Record the events in one transaction (each device's in the order given) and read each
        device's run snapshot after recording (see the module docstring)."""
        if not events:
            return RecordBatch([], {})
        # Devices are locked in sorted order (no deadlock between batches); stable, so each
        # device's events keep their order.
        order = sorted(range(len(events)), key=lambda i: events[i].device_id)
        now = utc_now()
        if self._db.dialect == "postgresql":
            try:
                return await self._record_many_pg([events[i] for i in order], order, now)
            except _DATA_ERRORS as exc:
                # Class 22 (data exception) and the driver's own encoding refusals are decided
                # by the values alone: the same batch fails the same way every time.
                raise _refused(events, _refusals(events), f"{type(exc).__name__}: {exc}") from exc
        # SQLite stores what PostgreSQL refuses: refuse it here too, before anything is written.
        refused = _refusals(events)
        if refused:
            raise _refused(events, refused, "")
        return await self._record_many_portable([events[i] for i in order], order, now)

    async def _record_many_pg(
        self, ordered: builtins.list[DeviceEvent], order: builtins.list[int], now: datetime
    ) -> RecordBatch:
        async with self._db.native() as connection:
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
                self.max_events_per_device,
            )
        results: builtins.list[RecordResult | None] = [None] * len(ordered)
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

    async def _record_many_portable(
        self, ordered: builtins.list[DeviceEvent], order: builtins.list[int], now: datetime
    ) -> RecordBatch:
        results: builtins.list[RecordResult | None] = [None] * len(ordered)
        runs: dict[str, RunSnapshot] = {}
        async with self._db.transaction() as connection:
            start = 0
            while start < len(ordered):
                device_id = ordered[start].device_id
                end = start
                while end < len(ordered) and ordered[end].device_id == device_id:
                    end += 1
                device = await self._lock_device(connection, device_id, now)
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
                    if held >= self.max_events_per_device:
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

    async def list(
        self,
        device_id: str,
        *,
        since_sequence: int | None = None,
        name: str | None = None,
        limit: int | None = None,
    ) -> builtins.list[StoredEvent]:
        """Held events of the device in sequence order; only those after ``since_sequence`` and
        named ``name`` when given; at most ``limit``."""
        query = select(*_EVENT_COLUMNS).where(
            _E.c.device_id == device_id, _E.c.cleared_at.is_(None)
        )
        if since_sequence is not None:
            query = query.where(_E.c.sequence > since_sequence)
        if name is not None:
            query = query.where(_E.c.name == name)
        query = query.order_by(_E.c.sequence)
        if limit is not None:
            query = query.limit(limit)
        async with self._db.transaction(readonly=True) as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [_stored(row) for row in rows]

    async def claim(
        self, device_id: str, name: str, wait_key: str, *, since_sequence: int | None = None
    ) -> StoredEvent | None:
        """The first unconsumed held event named ``name`` (after ``since_sequence`` if given),
        now consumed by ``wait_key``; the same event again for the same ``wait_key``; else None."""
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            try:
                async with self._db.transaction() as connection:
                    mine = (
                        (
                            await connection.execute(
                                select(*_EVENT_COLUMNS).where(
                                    _E.c.device_id == device_id, _E.c.consumed_by == wait_key
                                )
                            )
                        )
                        .mappings()
                        .first()
                    )
                    if mine is not None:
                        return _stored(mine)
                    candidate = select(_E.c.sequence).where(
                        _E.c.device_id == device_id,
                        _E.c.name == name,
                        _E.c.consumed_by.is_(None),
                        _E.c.cleared_at.is_(None),
                    )
                    if since_sequence is not None:
                        candidate = candidate.where(_E.c.sequence > since_sequence)
                    sequence = await connection.scalar(candidate.order_by(_E.c.sequence).limit(1))
                    if sequence is None:
                        return None
                    # Compare-and-set: a concurrent claimer that took this event first makes the
                    # condition false here (PostgreSQL re-checks it after the row lock is released).
                    claimed = await connection.execute(
                        update(_E)
                        .where(
                            _E.c.device_id == device_id,
                            _E.c.sequence == sequence,
                            _E.c.consumed_by.is_(None),
                        )
                        .values(consumed_by=wait_key, consumed_at=utc_now())
                        .returning(*_EVENT_COLUMNS)
                    )
                    row = claimed.mappings().first()
                    if row is not None:
                        return _stored(row)
            except IntegrityError:
                # The same wait_key claimed another event concurrently (unique per device and
                # wait key): the next attempt finds that event.
                continue
        raise StoreError(f"could not claim an event {name!r} for device {device_id!r}")

    async def clear(self, device_id: str) -> int:
        """Clear the device's held events; return how many were cleared."""
        now = utc_now()
        async with self._db.transaction() as connection:
            exists = await connection.scalar(
                select(_D.c.device_id).where(_D.c.device_id == device_id).with_for_update()
            )
            if exists is None:
                return 0
            cleared = await connection.execute(
                update(_E)
                .where(_E.c.device_id == device_id, _E.c.cleared_at.is_(None))
                .values(cleared_at=now)
            )
            await connection.execute(
                update(_D).where(_D.c.device_id == device_id).values(count=0, last_activity_at=now)
            )
            return int(cleared.rowcount)

    async def state(self, device_id: str) -> DeviceState | None:
        """The device's counters, or None for a device never seen."""
        async with self._db.transaction(readonly=True) as connection:
            query = select(_D).where(_D.c.device_id == device_id)
            row = (await connection.execute(query)).mappings().first()
        if row is None:
            return None
        return DeviceState(
            device_id=row["device_id"],
            count=row.count,
            last_sequence=row.last_sequence,
            overflowed=row.overflowed,
            first_seen_at=row.first_seen_at,
            last_activity_at=row.last_activity_at,
        )

    async def purge(self, older_than: datetime) -> int:
        """Delete events cleared before ``older_than`` (ends their duplicate detection)."""
        async with self._db.transaction() as connection:
            result = await connection.execute(
                delete(_E).where(_E.c.cleared_at.is_not(None), _E.c.cleared_at < older_than)
            )
        return int(result.rowcount)

    async def count_held(self, device_id: str) -> int:
        """Held events counted from the events themselves (a consistency check for tests/ops)."""
        async with self._db.transaction(readonly=True) as connection:
            value = await connection.scalar(
                select(func.count())
                .select_from(_E)
                .where(_E.c.device_id == device_id, _E.c.cleared_at.is_(None))
            )
        return int(value or 0)
