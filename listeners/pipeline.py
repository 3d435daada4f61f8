"""What every transport does with a message after receiving it, and how it must settle it.

The message-source port: a transport (``servicebus``, ``local``) turns what it received into an
``IncomingMessage``, hands it to ``Ingress.process`` and settles the message as the returned
``Disposition`` says. Everything after the transport is this one code path:

- a message that can never succeed -> ``DEAD_LETTER`` at once, with reason and description;
- recorded and routed (started, resumed, busy or deferred to the outbox) -> ``COMPLETE``;
- the device holds too many events -> ``DEAD_LETTER`` with a recoverable reason (resubmit later);
- anything else went wrong (database down, a bug) -> ``ABANDON``: the broker redelivers, and after
  its maximum delivery count moves the message to the dead-letter queue itself.

One log line per message: device, message id, event id, action.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Protocol

from listeners.events import IncomingEvent, IncomingMessage, PoisonMessageError, parse_event
from listeners.router import RecordStatus, RouteResult

__all__ = [
    "OVERFLOW_REASON",
    "Disposition",
    "EventHandler",
    "Ingress",
    "MessageProcessor",
    "Outcome",
]

log = logging.getLogger("listeners.ingress")

#: Dead-letter reason of an event refused because its device holds too many; recoverable.
OVERFLOW_REASON = "DeviceEventOverflow"


class Disposition(enum.StrEnum):
    COMPLETE = "complete"
    ABANDON = "abandon"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Outcome:
    disposition: Disposition
    result: RouteResult | None = None
    reason: str = ""
    description: str = ""


class EventHandler(Protocol):
    """The router, as the pipeline sees it."""

    async def handle(self, event: IncomingEvent, /) -> RouteResult: ...


class MessageProcessor(Protocol):
    """What a transport hands its messages to (``Ingress``, or a decorator of it)."""

    async def process(self, message: IncomingMessage, /) -> Outcome: ...


class Ingress:
    """Parse, record and route one message; say how the transport must settle it."""

    def __init__(self, router: EventHandler, *, max_message_bytes: int) -> None:
        self._router = router
        self._max_bytes = max_message_bytes

    async def process(self, message: IncomingMessage) -> Outcome:
        where = f"device={message.session_id or '?'} message={message.message_id or '?'}"
        try:
            event = parse_event(message, max_bytes=self._max_bytes)
        except PoisonMessageError as exc:
            log.warning("%s action=dead-letter reason=%s: %s", where, exc.reason, exc.description)
            return Outcome(Disposition.DEAD_LETTER, reason=exc.reason, description=exc.description)
        where = f"device={event.device_id} message={message.message_id or '-'}"
        try:
            result = await self._router.handle(event)
        except Exception as exc:
            # Transient until proven otherwise: the broker's delivery count bounds the retries.
            log.exception("%s event=%s action=abandon: %s", where, event.event_id, exc)
            return Outcome(Disposition.ABANDON, reason="TransientFailure", description=repr(exc))
        if result.recorded is RecordStatus.OVERFLOW:
            description = f"device {event.device_id} holds the maximum number of unconsumed events"
            log.warning(
                "%s event=%s action=dead-letter reason=%s", where, event.event_id, OVERFLOW_REASON
            )
            return Outcome(Disposition.DEAD_LETTER, result, OVERFLOW_REASON, description)
        log.info(
            "%s event=%s name=%s recorded=%s action=%s run=%s%s",
            where,
            event.event_id,
            event.name,
            result.recorded.value,
            result.action.value,
            result.run_id or "-",
            f" ({result.detail})" if result.detail else "",
        )
        return Outcome(Disposition.COMPLETE, result)
