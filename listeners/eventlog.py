"""The router's event log over ``store.events.EventStore``: ingress events in, store events out.

The only translation between the two packages' event types (``IncomingEvent`` is the transport's
validated message, ``DeviceEvent`` the store's row shape) and record statuses.
"""

from __future__ import annotations

from collections.abc import Sequence

from listeners.events import IncomingEvent
from listeners.router import Recorded, RecordStatus
from store.events import DeviceEvent, EventStore

__all__ = ["StoreEventLog"]

_STATUS = {
    "inserted": RecordStatus.RECORDED,
    "duplicate": RecordStatus.DUPLICATE,
    "overflow": RecordStatus.OVERFLOW,
}


class StoreEventLog:
    """``EventLog`` over ``store.events.EventStore``."""

    def __init__(self, events: EventStore) -> None:
        self._events = events

    @property
    def store(self) -> EventStore:
        return self._events

    async def record_many(self, events: Sequence[IncomingEvent]) -> Recorded:
        batch = await self._events.record_many(
            [
                DeviceEvent(
                    device_id=event.device_id,
                    event_id=event.event_id,
                    name=event.name,
                    payload=event.payload,
                    enqueued_at=event.enqueued_at,
                    received_at=event.received_at,
                )
                for event in events
            ]
        )
        return Recorded([_STATUS[result.status] for result in batch.results], batch.runs)

    async def is_unconsumed(self, device_id: str, event_id: str, name: str) -> bool:
        held = await self._events.list(device_id, name=name)
        return any(e.event_id == event_id and e.consumed_by is None for e in held)
