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

``process_many`` is the same for a batch: the valid messages are recorded in one transaction and
routed together (``Router.handle_many``); if that fails, every one of them is abandoned (nothing of
the batch was committed), while poison messages are still dead-lettered one by one.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from listeners.events import IncomingEvent, IncomingMessage, PoisonMessageError, parse_event
from listeners.router import RecordStatus, RouteAction, RouteResult

__all__ = [
    "OVERFLOW_REASON",
    "REJECTED_REASON",
    "Disposition",
    "EventHandler",
    "Ingress",
    "MessageProcessor",
    "Outcome",
]

log = logging.getLogger("listeners.ingress")

#: Dead-letter reason of an event refused because its device holds too many; recoverable.
OVERFLOW_REASON = "DeviceEventOverflow"
#: The workflow's definition is missing or invalid: the event is recorded, no run was started.
REJECTED_REASON = "WorkflowDefinitionInvalid"


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

    async def handle_many(self, events: Sequence[IncomingEvent], /) -> list[RouteResult]: ...


class MessageProcessor(Protocol):
    """What a transport hands its messages to (``Ingress``, or a decorator of it)."""

    async def process(self, message: IncomingMessage, /) -> Outcome: ...

    async def process_many(self, messages: Sequence[IncomingMessage], /) -> list[Outcome]: ...


class Ingress:
    """Parse, record and route one message; say how the transport must settle it."""

    def __init__(self, router: EventHandler, *, max_message_bytes: int) -> None:
        self._router = router
        self._max_bytes = max_message_bytes

    async def process(self, message: IncomingMessage) -> Outcome:
        return (await self.process_many([message]))[0]

    async def process_many(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        """Outcomes in the order of ``messages`` (see the module docstring)."""
        outcomes: list[Outcome | None] = [None] * len(messages)
        events: list[IncomingEvent] = []
        positions: list[int] = []
        for position, message in enumerate(messages):
            try:
                events.append(parse_event(message, max_bytes=self._max_bytes))
            except PoisonMessageError as exc:
                log.warning(
                    "device=%s message=%s action=dead-letter reason=%s: %s",
                    message.session_id or "?",
                    message.message_id or "?",
                    exc.reason,
                    exc.description,
                )
                outcomes[position] = Outcome(
                    Disposition.DEAD_LETTER, reason=exc.reason, description=exc.description
                )
                continue
            positions.append(position)
        if events:
            try:
                results = await self._router.handle_many(events)
            except Exception as exc:
                # Transient until proven otherwise: the broker's delivery count bounds the retries.
                for position, event in zip(positions, events, strict=True):
                    log.exception(
                        "device=%s message=%s event=%s action=abandon: %s",
                        event.device_id,
                        messages[position].message_id or "-",
                        event.event_id,
                        exc,
                    )
                    outcomes[position] = Outcome(
                        Disposition.ABANDON, reason="TransientFailure", description=repr(exc)
                    )
            else:
                for position, event, result in zip(positions, events, results, strict=True):
                    outcomes[position] = self._settle(messages[position], event, result)
        return [outcome for outcome in outcomes if outcome is not None]

    @staticmethod
    def _settle(message: IncomingMessage, event: IncomingEvent, result: RouteResult) -> Outcome:
        where = f"device={event.device_id} message={message.message_id or '-'}"
        if result.recorded is RecordStatus.OVERFLOW:
            description = f"device {event.device_id} holds the maximum number of unconsumed events"
            log.warning(
                "%s event=%s action=dead-letter reason=%s", where, event.event_id, OVERFLOW_REASON
            )
            return Outcome(Disposition.DEAD_LETTER, result, OVERFLOW_REASON, description)
        if result.action is RouteAction.REJECTED:
            # Final: the workflow's definition is missing or invalid (the router logged it).
            log.warning(
                "%s event=%s action=dead-letter reason=%s", where, event.event_id, REJECTED_REASON
            )
            return Outcome(Disposition.DEAD_LETTER, result, REJECTED_REASON, result.detail)
        if log.isEnabledFor(logging.INFO):
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
