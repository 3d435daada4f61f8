"""The ingress message contract: a transport's raw message in, a validated device event out.

Every transport converts what it received into an ``IncomingMessage`` at its edge (Service Bus
messages cannot even be built by user code), and ``parse_event`` turns that into an
``IncomingEvent`` or raises ``PoisonMessageError``: a message that can never succeed, with a stable
``reason`` (what the dead-letter queue shows) and a human ``description``.

Body: ``{"deviceId", "eventId"?, "name", "payload"?, "occurredAt"?}``. The event id is the body's
``eventId``, else the transport's message id; a session id, when there is one, must equal the
device id (one device = one session).

The body is parsed by ``interpreter.jsonsafe.loads``, the same strict parser the API applies to its
bodies: a byte order mark, a member given twice, ``NaN``/``Infinity``, a number out of range, NUL or
a lone surrogate anywhere are refused here, with a JSON pointer in the description, instead of
failing at the database and being retried until dead-lettered. Device and event ids follow
``jsonsafe.ID_PATTERN``, event names ``jsonsafe.NAME_PATTERN`` (the API's rules too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from interpreter import jsonsafe
from interpreter.limits import MAX_DEPTH
from interpreter.problems import pointer

__all__ = [
    "MAX_JSON_DEPTH",
    "EventBody",
    "IncomingEvent",
    "IncomingMessage",
    "PoisonMessageError",
    "PoisonReason",
    "parse_event",
]

#: Deeper bodies are refused (``interpreter.jsonsafe``; ``interpreter.limits.MAX_DEPTH``).
MAX_JSON_DEPTH = MAX_DEPTH

# Refusals of the text itself; every other jsonsafe refusal is about a value: a schema violation.
_UNPARSEABLE_CODES = frozenset(
    {"not-utf8", "byte-order-mark", "too-deep", "invalid-json", "duplicate-key"}
)


class PoisonReason:
    """Dead-letter reasons of messages that can never succeed (stable strings)."""

    TOO_LARGE = "MessageTooLarge"
    UNPARSEABLE = "UnparseableBody"
    SCHEMA = "SchemaViolation"
    SESSION_MISMATCH = "SessionMismatch"
    MISSING_EVENT_ID = "MissingEventId"


class PoisonMessageError(Exception):
    """The message can never be processed; dead-letter it at once with ``reason``."""

    def __init__(self, reason: str, description: str) -> None:
        # Descriptions quote the input (member names, ids): escape what a log line, a terminal or
        # the broker's dead-letter description should not carry raw (NUL, surrogates, controls).
        description = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in description)
        super().__init__(f"{reason}: {description}")
        self.reason = reason
        self.description = description


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """What any transport received, before it is trusted."""

    body: bytes
    message_id: str | None = None
    session_id: str | None = None
    delivery_count: int = 0
    enqueued_at: datetime | None = None
    properties: dict[str, Any] = field(default_factory=dict)


class EventBody(BaseModel):
    """The JSON schema of a device event message."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    device_id: str = Field(alias="deviceId", pattern=jsonsafe.ID_PATTERN)
    event_id: str | None = Field(default=None, alias="eventId", pattern=jsonsafe.ID_PATTERN)
    name: str = Field(pattern=jsonsafe.NAME_PATTERN)
    payload: dict[str, Any] = Field(default_factory=dict)
    occurred_at: AwareDatetime | None = Field(default=None, alias="occurredAt")

    @field_validator("occurred_at")
    @classmethod
    def _in_utc_range(cls, value: datetime | None) -> datetime | None:
        if value is not None:
            require_utc_range(value)
        return value  # as written: the offset is kept for the run's input


def require_utc_range(value: datetime) -> None:
    """Refuse a time whose UTC date falls outside years 1-9999: it would overflow where it is
    stored or compared (``0001-01-01T00:00:00+01:00``, ``9999-12-31T23:59:59-05:00``)."""
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the instant in UTC falls outside the years 1 to 9999") from None


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A validated device event, ready to be recorded and routed."""

    device_id: str
    event_id: str
    name: str
    payload: dict[str, Any]
    occurred_at: datetime
    received_at: datetime
    enqueued_at: datetime | None = None

    def as_input(self) -> dict[str, Any]:
        """The event as a run's ``input.event`` (JSON-safe, camelCase like the message)."""
        return {
            "deviceId": self.device_id,
            "eventId": self.event_id,
            "name": self.name,
            "payload": self.payload,
            "occurredAt": self.occurred_at.isoformat(),
        }


def parse_event(
    message: IncomingMessage, *, max_bytes: int, now: datetime | None = None
) -> IncomingEvent:
    """Validate ``message``; raise ``PoisonMessageError`` for anything that can never succeed."""
    size = len(message.body)
    if size > max_bytes:
        raise PoisonMessageError(
            PoisonReason.TOO_LARGE, f"body is {size} bytes; the limit is {max_bytes}"
        )
    try:
        document = jsonsafe.loads(message.body, max_bytes=max_bytes)
    except jsonsafe.UnsafeJsonError as exc:
        reason = PoisonReason.UNPARSEABLE if exc.code in _UNPARSEABLE_CODES else PoisonReason.SCHEMA
        raise PoisonMessageError(reason, f"{exc.pointer or '(body)'}: {exc.message}") from exc
    try:
        body = EventBody.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{pointer(*error['loc']) or '(body)'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise PoisonMessageError(PoisonReason.SCHEMA, problems) from exc
    if message.session_id is not None and message.session_id != body.device_id:
        raise PoisonMessageError(
            PoisonReason.SESSION_MISMATCH,
            f"deviceId {body.device_id!r} differs from session id {message.session_id!r}",
        )
    event_id = body.event_id or message.message_id
    if not event_id:
        raise PoisonMessageError(
            PoisonReason.MISSING_EVENT_ID, "no eventId in the body and no message id"
        )
    if not jsonsafe.is_valid_id(event_id):
        # Only a message id can get here: the body's eventId was checked with the schema.
        raise PoisonMessageError(
            PoisonReason.SCHEMA,
            f"no eventId in the body, and the message id {event_id[:200]!r} is no valid event id "
            f"(pattern {jsonsafe.ID_PATTERN})",
        )
    received = now or datetime.now(UTC)
    return IncomingEvent(
        device_id=body.device_id,
        event_id=event_id,
        name=body.name,
        payload=body.payload,
        occurred_at=body.occurred_at or message.enqueued_at or received,
        received_at=received,
        enqueued_at=message.enqueued_at,
    )
