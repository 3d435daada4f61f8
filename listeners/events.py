"""The ingress message contract: a transport's raw message in, a validated device event out.

Every transport converts what it received into an ``IncomingMessage`` at its edge (Service Bus
messages cannot even be built by user code), and ``parse_event`` turns that into an
``IncomingEvent`` or raises ``PoisonMessageError``: a message that can never succeed, with a stable
``reason`` (what the dead-letter queue shows) and a human ``description``.

Body: ``{"deviceId", "eventId"?, "name", "payload"?, "occurredAt"?}``. The event id is the body's
``eventId``, else the transport's message id; a session id, when there is one, must equal the
device id (one device = one session).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "MAX_JSON_DEPTH",
    "EventBody",
    "IncomingEvent",
    "IncomingMessage",
    "PoisonMessageError",
    "PoisonReason",
    "parse_event",
]

#: Deeper bodies are refused before ``json.loads`` (which recurses and can blow the stack).
MAX_JSON_DEPTH = 64


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

    device_id: str = Field(alias="deviceId", min_length=1, max_length=128)
    event_id: str | None = Field(default=None, alias="eventId", min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    occurred_at: AwareDatetime | None = Field(default=None, alias="occurredAt")


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


def _depth_exceeds(text: str, limit: int) -> bool:
    """Whether JSON nesting goes deeper than ``limit``, found without recursion."""
    depth = 0
    in_string = False
    escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


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
        text = message.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PoisonMessageError(PoisonReason.UNPARSEABLE, f"body is not UTF-8: {exc}") from exc
    if _depth_exceeds(text, MAX_JSON_DEPTH):
        raise PoisonMessageError(
            PoisonReason.UNPARSEABLE, f"JSON nesting deeper than {MAX_JSON_DEPTH} levels"
        )
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise PoisonMessageError(PoisonReason.UNPARSEABLE, f"body is not JSON: {exc}") from exc
    try:
        body = EventBody.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(body)'}: {error['msg']}"
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
