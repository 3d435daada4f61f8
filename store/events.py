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
- ``record_many`` records a batch in one transaction (``store.recording``; on PostgreSQL one
  statement: the ``orch_record_events`` function of migrations 0002/0003, one round trip for the
  whole batch), each device's events in the order given, and reads after recording, per device,
  its current run and the event names that run waits for (``RunSnapshot``): all the router needs
  to decide, with no second round trip. ``record`` is a batch of one. SQLite runs the same steps
  as Core statements.
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
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import RowMapping, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from store.columns import utc_now
from store.db import Database
from store.errors import StoreError
from store.event_models import (
    DeviceEvent,
    DeviceState,
    RecordBatch,
    RecordResult,
    RecordStatus,
    StoredEvent,
)
from store.recording import record_many
from store.tables import DEVICE_EVENTS, DEVICES

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

_E = DEVICE_EVENTS
_D = DEVICES


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

    async def record(self, event: DeviceEvent) -> RecordResult:
        """Store the event once; ``inserted``, ``duplicate`` or ``overflow`` (see module docs)."""
        return (await self.record_many([event])).results[0]

    async def record_many(self, events: Sequence[DeviceEvent]) -> RecordBatch:
        """Record the events in one transaction (each device's in the order given) and read each
        device's run snapshot after recording (see the module docstring; ``store.recording``)."""
        return await record_many(self._db, events, self.max_events_per_device)

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
