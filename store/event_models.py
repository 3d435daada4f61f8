"""The event store's value types: an event as it arrives, as stored, and what recording did."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, JsonValue

from store.runs import RunSnapshot

__all__ = [
    "DeviceEvent",
    "DeviceState",
    "RecordBatch",
    "RecordResult",
    "RecordStatus",
    "StoredEvent",
]

Identifier = Annotated[str, Field(min_length=1, max_length=200)]
RecordStatus = Literal["inserted", "duplicate", "conflict", "overflow"]


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
