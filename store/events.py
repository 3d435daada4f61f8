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
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue
from sqlalchemy import RowMapping, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from store.columns import utc_now
from store.db import Database
from store.errors import StoreError
from store.sql import insert_or_ignore
from store.tables import DEVICE_EVENTS, DEVICES

__all__ = [
    "DEFAULT_MAX_EVENTS_PER_DEVICE",
    "DeviceEvent",
    "DeviceState",
    "EventStore",
    "RecordResult",
    "RecordStatus",
    "StoredEvent",
]

DEFAULT_MAX_EVENTS_PER_DEVICE = 1000

Identifier = Annotated[str, Field(min_length=1, max_length=200)]
RecordStatus = Literal["inserted", "duplicate", "overflow"]

_E = DEVICE_EVENTS
_D = DEVICES


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
    """What ``record`` did: ``inserted`` or ``duplicate`` (both: acknowledge the message) or
    ``overflow`` (not stored: dead-letter the message with a reason)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: RecordStatus
    #: The event's sequence (the first copy's for a duplicate); ``None`` for an overflow.
    sequence: int | None

    @property
    def stored(self) -> bool:
        """True when the event is in the store (inserted now or before)."""
        return self.status != "overflow"


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
)

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
            select(_D.c.count, _D.c.last_sequence)
            .where(_D.c.device_id == device_id)
            .with_for_update()
        )
        row = (await connection.execute(locked)).mappings().first()
        if row is None:
            await insert_or_ignore(
                connection,
                _D,
                {
                    "device_id": device_id,
                    "count": 0,
                    "last_sequence": 0,
                    "overflowed": 0,
                    "first_seen_at": now,
                    "last_activity_at": now,
                },
                ["device_id"],
            )
            row = (await connection.execute(locked)).mappings().first()
        if row is None:  # pragma: no cover - the row was inserted or existed one statement ago
            raise StoreError(f"device row for {device_id!r} vanished inside its transaction")
        return row

    async def record(self, event: DeviceEvent) -> RecordResult:
        """Store the event once; ``inserted``, ``duplicate`` or ``overflow`` (see module docs)."""
        now = utc_now()
        async with self._db.transaction() as connection:
            device = await self._lock_device(connection, event.device_id, now)
            first = await connection.scalar(
                select(_E.c.sequence).where(
                    _E.c.device_id == event.device_id, _E.c.event_id == event.event_id
                )
            )
            if first is not None:
                return RecordResult(status="duplicate", sequence=int(first))
            if device["count"] >= self.max_events_per_device:
                await connection.execute(
                    update(_D)
                    .where(_D.c.device_id == event.device_id)
                    .values(overflowed=_D.c.overflowed + 1, last_activity_at=now)
                )
                return RecordResult(status="overflow", sequence=None)
            sequence = int(device["last_sequence"]) + 1
            inserted = await insert_or_ignore(
                connection,
                _E,
                {
                    "device_id": event.device_id,
                    "sequence": sequence,
                    "event_id": event.event_id,
                    "name": event.name,
                    "payload": event.payload,
                    "enqueued_at": event.enqueued_at,
                    "received_at": event.received_at or now,
                },
                ["device_id", "event_id"],
            )
            if not inserted:  # pragma: no cover - excluded by the device lock; kept as a guard
                raise StoreError(f"event {event.event_id!r} appeared while its device was locked")
            await connection.execute(
                update(_D)
                .where(_D.c.device_id == event.device_id)
                .values(count=_D.c.count + 1, last_sequence=sequence, last_activity_at=now)
            )
            return RecordResult(status="inserted", sequence=sequence)

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
