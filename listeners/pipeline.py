"""What every transport does with a message after receiving it, and how it must settle it.

The message-source port: a transport (``servicebus``, ``local``) turns what it received into an
``IncomingMessage``, hands it to ``Ingress.process`` and settles the message as the returned
``Disposition`` says. Everything after the transport is this one code path:

- a message that can never succeed -> ``DEAD_LETTER`` at once, with reason and description: a
  poison message, an event whose values the database can never store (``EventNotStorable``; the
  rest of its batch is recorded without it), an event id reused with other content
  (``EventIdConflict``);
- recorded and routed (started, resumed, busy or deferred to the outbox) -> ``COMPLETE``;
- the device holds too many events -> ``DEAD_LETTER`` with a recoverable reason (resubmit later);
- anything else went wrong (database down, a bug) -> ``ABANDON``: the broker redelivers, and after
  its maximum delivery count moves the message to the dead-letter queue itself. A transient
  failure (``store.transient``: the database restarting, a connection cut) is first tried again
  here, with backoff, for up to ``transient_budget_seconds`` (default 20 s, under the Service
  Bus loop's stall limit) while the message stays locked: abandoning at once spent one delivery
  per attempt, and a 10 s PostgreSQL restart used up all ten deliveries of Service Bus's default
  and dead-lettered the events.

One log line per message: device, message id, event id, action.

``process_many`` is the same for a batch: the valid messages are recorded in one transaction and
routed together (``Router.handle_many``); if that fails, every one of them is abandoned (nothing of
the batch was committed), while poison messages are still dead-lettered one by one. A duplicate is
completed (acknowledged) and routed nowhere new (see ``listeners.router``).
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from listeners.events import IncomingEvent, IncomingMessage, PoisonMessageError, parse_event
from listeners.router import RecordStatus, RouteAction, RouteResult
from store.errors import EventRefusedError
from store.transient import retry_transient

__all__ = [
    "CONFLICT_REASON",
    "NOT_STORABLE_REASON",
    "OVERFLOW_REASON",
    "REJECTED_REASON",
    "Disposition",
    "EventHandler",
    "Ingress",
    "MessageProcessor",
    "Outcome",
]

log = logging.getLogger("listeners.ingress")

#: How long a batch's transient failures are tried again before its messages are abandoned.
TRANSIENT_BUDGET_SECONDS = 20.0

#: Dead-letter reason of an event refused because its device holds too many; recoverable.
OVERFLOW_REASON = "DeviceEventOverflow"
#: The workflow's definition is missing or invalid: the event is recorded, no run was started.
REJECTED_REASON = "WorkflowDefinitionInvalid"
#: The database can never store a value of the event (NUL, lone surrogate, NaN, ...): final.
NOT_STORABLE_REASON = "EventNotStorable"
#: The event id is stored for the device with other content (a producer reused it): final.
CONFLICT_REASON = "EventIdConflict"


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

    def __init__(
        self,
        router: EventHandler,
        *,
        max_message_bytes: int,
        parse: Callable[[IncomingMessage], IncomingEvent] | None = None,
        transient_budget_seconds: float = TRANSIENT_BUDGET_SECONDS,
    ) -> None:
        self._router = router
        self._max_bytes = max_message_bytes
        self._transient_budget = transient_budget_seconds
        # ``parse`` replaces ``parse_event`` (tests reach the store with what it would refuse).
        self._parse = parse or functools.partial(parse_event, max_bytes=max_message_bytes)

    async def process(self, message: IncomingMessage) -> Outcome:
        return (await self.process_many([message]))[0]

    async def process_many(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        """Outcomes in the order of ``messages`` (see the module docstring)."""
        outcomes: list[Outcome | None] = [None] * len(messages)
        events: list[IncomingEvent] = []
        positions: list[int] = []
        for position, message in enumerate(messages):
            try:
                events.append(self._parse(message))
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
            await self._record_and_route(
                messages, list(zip(positions, events, strict=True)), outcomes
            )
        return [outcome for outcome in outcomes if outcome is not None]

    async def _record_and_route(
        self,
        messages: Sequence[IncomingMessage],
        pending: list[tuple[int, IncomingEvent]],
        outcomes: list[Outcome | None],
    ) -> None:
        """Record and route ``pending`` (positions in ``messages`` with their events) as one batch
        and fill in their outcomes. Events the store refuses for good are dead-lettered and the
        rest go on without them; when the database did not say which event it refused, each is
        tried alone (nothing of a refused batch was written, so trying again doubles nothing)."""
        while pending:
            batch = [event for _, event in pending]
            try:
                # Nothing of a failed batch was committed: trying it again doubles nothing.
                results = await retry_transient(
                    "record and route",
                    functools.partial(self._router.handle_many, batch),
                    budget_seconds=self._transient_budget,
                )
            except EventRefusedError as exc:
                refused = exc.refused or ({0: exc.description} if len(pending) == 1 else {})
                if not refused:
                    for alone in pending:
                        await self._record_and_route(messages, [alone], outcomes)
                    return
                for index, description in refused.items():
                    position, event = pending[index]
                    outcomes[position] = self._not_storable(messages[position], event, description)
                pending = [item for index, item in enumerate(pending) if index not in refused]
                continue
            except Exception as exc:
                # Transient until proven otherwise: the broker's delivery count bounds the retries.
                for position, event in pending:
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
                return
            for (position, event), result in zip(pending, results, strict=True):
                outcomes[position] = self._settle(messages[position], event, result)
            return

    @staticmethod
    def _not_storable(message: IncomingMessage, event: IncomingEvent, description: str) -> Outcome:
        """A value the database can never store: final, like a schema violation."""
        log.warning(
            "device=%r message=%s event=%r action=dead-letter reason=%s: %s",
            event.device_id,
            message.message_id or "-",
            event.event_id,
            NOT_STORABLE_REASON,
            description,
        )
        return Outcome(Disposition.DEAD_LETTER, None, NOT_STORABLE_REASON, description)

    @staticmethod
    def _settle(message: IncomingMessage, event: IncomingEvent, result: RouteResult) -> Outcome:
        where = f"device={event.device_id} message={message.message_id or '-'}"
        if result.recorded is RecordStatus.OVERFLOW:
            description = f"device {event.device_id} holds the maximum number of unconsumed events"
            log.warning(
                "%s event=%s action=dead-letter reason=%s", where, event.event_id, OVERFLOW_REASON
            )
            return Outcome(Disposition.DEAD_LETTER, result, OVERFLOW_REASON, description)
        if result.recorded is RecordStatus.CONFLICT:
            description = (
                f"event id {event.event_id!r} of device {event.device_id} is stored with other "
                "content (another name or payload); the first copy is kept"
            )
            log.warning(
                "%s event=%s action=dead-letter reason=%s: %s",
                where,
                event.event_id,
                CONFLICT_REASON,
                description,
            )
            return Outcome(Disposition.DEAD_LETTER, result, CONFLICT_REASON, description)
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
