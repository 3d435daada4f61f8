"""The router's event log over ``store.events.EventStore``: ingress events in, store events out.

The only translation between the two packages' event types (``IncomingEvent`` is the transport's
validated message, ``DeviceEvent`` the store's row shape) and record statuses. An event the store
model refuses (an id or name that is no storable text) is refused like one the database refuses:
``EventRefusedError`` naming its position, before anything is written. An event recorded with a
producer time earlier than one recorded before for its device is logged here (the store flags the
row ``out_of_order``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from pydantic import ValidationError

from listeners.events import IncomingEvent
from listeners.router import Recorded, RecordStatus
from store.errors import EventRefusedError
from store.events import DeviceEvent, EventStore

__all__ = ["StoreEventLog"]

log = logging.getLogger("listeners.ingress")

_STATUS = {
    "inserted": RecordStatus.RECORDED,
    "duplicate": RecordStatus.DUPLICATE,
    "conflict": RecordStatus.CONFLICT,
    "overflow": RecordStatus.OVERFLOW,
}


def _producer_time(event: IncomingEvent) -> datetime | None:
    """The producer's ``occurredAt``; None when ``occurred_at`` only repeats the broker's enqueue
    time or our receive time (the parser's fallbacks), which say nothing about the producer's
    order."""
    if event.occurred_at in (event.enqueued_at, event.received_at):
        return None
    return event.occurred_at


def _device_event(event: IncomingEvent) -> DeviceEvent:
    return DeviceEvent(
        device_id=event.device_id,
        event_id=event.event_id,
        name=event.name,
        payload=event.payload,
        enqueued_at=event.enqueued_at,
        received_at=event.received_at,
        occurred_at=_producer_time(event),
    )


class StoreEventLog:
    """``EventLog`` over ``store.events.EventStore``."""

    def __init__(self, events: EventStore) -> None:
        self._events = events

    @property
    def store(self) -> EventStore:
        return self._events

    async def record_many(self, events: Sequence[IncomingEvent]) -> Recorded:
        rows: list[DeviceEvent] = []
        refused: dict[int, str] = {}
        for position, event in enumerate(events):
            try:
                rows.append(_device_event(event))
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
                    for error in exc.errors(include_url=False, include_input=False)
                )
                refused[position] = f"event {event.event_id!r}: {problems}"
        if refused:
            raise EventRefusedError("; ".join(refused.values()), refused)
        batch = await self._events.record_many(rows)
        for event, result in zip(events, batch.results, strict=True):
            if result.out_of_order:
                log.warning(
                    "device=%s event=%s out of order: occurredAt %s is earlier than an event "
                    "recorded before it (stored in arrival order, flagged out_of_order)",
                    event.device_id,
                    event.event_id,
                    event.occurred_at.isoformat(),
                )
        return Recorded([_STATUS[result.status] for result in batch.results], batch.runs)

    async def is_unconsumed(self, device_id: str, event_id: str, name: str) -> bool:
        held = await self._events.list(device_id, name=name)
        return any(e.event_id == event_id and e.consumed_by is None for e in held)
