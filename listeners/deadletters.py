"""The dead-letter processor: read the queue's dead-letter sub-queue, report, resubmit, complete.

For each dead letter: one log line (device, message id, reason, description, delivery count), one
alert to the configured webhook (JSON; a failed alert leaves the message in the dead-letter queue
for the next pass, so nothing is reported as handled that was not), then, when ``resubmit`` is on
and the reason is recoverable (``MaxDeliveryCountExceeded``, ``DeviceEventOverflow``, ...), the
message is sent back to the queue with its body, session id and properties; finally it is
completed. A recoverable letter seen by a pass without ``resubmit`` is NOT completed: it is
abandoned, so it stays in the dead-letter queue for a pass that resubmits (completing it would
delete a good event for good). Resubmitting an event twice is harmless: the store records an event
id once.

- A letter whose body can never succeed (refused by the ingress's checks, or holding values the
  database refuses) is not recoverable, whatever its reason says: reported with the refusal and
  completed, never resubmitted.
- A resubmission gets a new message id of bounded length (the broker drops a message id it saw
  before); the original message id and the number of resubmits travel in its application
  properties (``originalMessageId``, ``resubmitCount``). After ``max_resubmits`` the letter stays in
  the dead-letter queue for a person (``exhausted``), so one event cannot circle forever.
- A failure while handling one letter is that letter's alone: logged, the letter left in the
  dead-letter queue (``failed``), and the pass goes on with the others.

``process_dead_letters`` is the Prefect flow that ``prefect.yaml`` schedules.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import ServiceBusError
from prefect import flow, get_run_logger
from prefect.client.schemas.objects import State
from prefect.states import Completed

from listeners.events import PoisonMessageError, parse_event
from listeners.pipeline import NOT_STORABLE_REASON, OVERFLOW_REASON
from listeners.servicebus import make_client, to_incoming
from listeners.settings import ServiceBusSettings
from store.storable import unstorable

if TYPE_CHECKING:
    from azure.servicebus import ServiceBusReceivedMessage
    from azure.servicebus.aio import ServiceBusReceiver, ServiceBusSender

__all__ = [
    "DEFAULT_MAX_RESUBMITS",
    "NO_SERVICE_BUS",
    "DeadLetter",
    "DeadLetterReport",
    "process_dead_letters",
    "process_dead_letters_once",
]

log = logging.getLogger(__name__)

ALERT_TIMEOUT_SECONDS = 10.0
#: Resubmits of one event before its letter stays in the dead-letter queue for a person.
DEFAULT_MAX_RESUBMITS = 5
#: Application properties a resubmission carries (the message id never grows with them).
ORIGINAL_MESSAGE_ID = "originalMessageId"
RESUBMIT_COUNT = "resubmitCount"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    device_id: str | None
    message_id: str | None
    reason: str | None
    description: str | None
    delivery_count: int
    resubmitted: bool
    #: How often this event was resubmitted before (``resubmitCount`` of the letter).
    resubmit_count: int = 0
    #: Why the event can never succeed, found in its body, whatever the reason says.
    refusal: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "deviceId": self.device_id,
            "messageId": self.message_id,
            "reason": self.reason,
            "description": self.description,
            "deliveryCount": self.delivery_count,
            "resubmitted": self.resubmitted,
            "resubmitCount": self.resubmit_count,
            "refusal": self.refusal,
        }


@dataclass
class DeadLetterReport:
    handled: list[DeadLetter] = field(default_factory=list)
    alert_failures: int = 0
    #: Recoverable letters left in the dead-letter queue by a pass without ``resubmit``.
    kept: list[DeadLetter] = field(default_factory=list)
    #: Letters resubmitted ``max_resubmits`` times already: left in the dead-letter queue.
    exhausted: list[DeadLetter] = field(default_factory=list)
    #: Letters whose handling failed (logged): left in the dead-letter queue for the next pass.
    failed: list[DeadLetter] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "handled": len(self.handled),
            "resubmitted": sum(d.resubmitted for d in self.handled),
            "alertFailures": self.alert_failures,
            "kept": len(self.kept),
            "exhausted": len(self.exhausted),
            "failed": len(self.failed),
            "messages": [d.as_dict() for d in self.handled],
            "keptMessages": [d.as_dict() for d in self.kept],
            "exhaustedMessages": [d.as_dict() for d in self.exhausted],
            "failedMessages": [d.as_dict() for d in self.failed],
        }


def _resubmit_count(properties: dict[str, Any]) -> int:
    try:
        return max(0, int(properties.get(RESUBMIT_COUNT, 0)))
    except (TypeError, ValueError):
        return 0


def _resubmission_id(message: ServiceBusReceivedMessage, original: str) -> str:
    """A new message id of bounded length: the original's start and a digest of this letter.

    New, because the broker's duplicate detection drops a message id it saw within its window;
    derived from the letter's id and sequence number, so a pass that dies after sending and before
    completing sends the same id again, which the broker drops; bounded (at most 90 characters), so
    resubmitting a resubmission never grows it past the broker's 128."""
    digest = hashlib.sha256(f"{message.message_id}|{message.sequence_number}".encode()).hexdigest()
    return f"{original[:64]}~resubmit-{digest[:16]}"


def _resubmission(message: ServiceBusReceivedMessage) -> ServiceBusMessage:
    """The dead letter as a new message for the queue: the same body, session and properties,
    a new message id (``_resubmission_id``), and in the properties the original message id, the
    reason it came back from and how often it was resubmitted. The event id must not change: a
    body without ``eventId`` gets the original message id, which was its event id."""
    incoming = to_incoming(message)
    original = str(incoming.properties.get(ORIGINAL_MESSAGE_ID) or message.message_id or "")
    body = incoming.body
    with contextlib.suppress(ValueError):
        document = json.loads(body)
        if isinstance(document, dict) and not document.get("eventId") and original:
            document["eventId"] = original
            body = json.dumps(document, separators=(",", ":")).encode()
    properties: dict[str | bytes, Any] = {}
    properties.update(incoming.properties)
    properties["resubmittedFrom"] = str(message.dead_letter_reason or "")
    properties[ORIGINAL_MESSAGE_ID] = original
    properties[RESUBMIT_COUNT] = _resubmit_count(incoming.properties) + 1
    return ServiceBusMessage(
        body,
        session_id=message.session_id,
        message_id=_resubmission_id(message, original),
        correlation_id=message.correlation_id,
        application_properties=properties,
    )


def _refusal(message: ServiceBusReceivedMessage, max_bytes: int) -> str | None:
    """Why the letter's event can never succeed (the ingress's own checks, and the values the
    database refuses), or None. Such a letter is never resubmitted, whatever its reason says."""
    try:
        event = parse_event(to_incoming(message), max_bytes=max_bytes)
    except PoisonMessageError as exc:
        return f"{exc.reason}: {exc.description}"
    problem = unstorable(event.device_id, event.event_id, event.name, event.payload)
    return f"{NOT_STORABLE_REASON}: {problem}" if problem else None


async def _alert(http: httpx.AsyncClient | None, url: str | None, letter: DeadLetter) -> bool:
    if http is None or url is None:
        return True
    try:
        response = await http.post(url, json={"kind": "dead-letter", **letter.as_dict()})
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.error("dead-letter alert to the webhook failed: %r", exc)
        return False
    return True


async def process_dead_letters_once(
    settings: ServiceBusSettings,
    *,
    resubmit: bool = False,
    max_messages: int = 500,
    max_wait_time: float = 2.0,
    max_resubmits: int = DEFAULT_MAX_RESUBMITS,
) -> DeadLetterReport:
    """One pass over the dead-letter queue (until it is idle or ``max_messages`` were handled)."""
    report = DeadLetterReport()
    client, credential = make_client(settings)
    http = (
        httpx.AsyncClient(timeout=ALERT_TIMEOUT_SECONDS, follow_redirects=False)
        if settings.alert_webhook_url
        else None
    )
    try:
        async with (
            client,
            client.get_queue_receiver(
                settings.queue_name,
                sub_queue=ServiceBusSubQueue.DEAD_LETTER,
                max_wait_time=max_wait_time,
            ) as receiver,
            client.get_queue_sender(settings.queue_name) as sender,
        ):
            pass_: _Pass | None = None
            try:
                pass_ = _Pass(receiver, sender, settings, resubmit, max_resubmits, http, report)
                await pass_.run(max_messages, max_wait_time)
            finally:
                for message in pass_.held if pass_ is not None else ():
                    # Back to the dead-letter queue for a pass that resubmits; a failed
                    # abandon only means the lock runs out, with the same effect.
                    with contextlib.suppress(ServiceBusError):
                        await receiver.abandon_message(message)
    except ServiceBusError as exc:
        log.error("dead-letter pass stopped: %r", exc)
        raise
    finally:
        if http is not None:
            await http.aclose()
        if credential is not None:
            await credential.close()
    return report


class _Pass:
    """One pass's state: letters held (locked) until the pass ends, so that it does not receive
    them again, and the report."""

    def __init__(
        self,
        receiver: ServiceBusReceiver,
        sender: ServiceBusSender,
        settings: ServiceBusSettings,
        resubmit: bool,
        max_resubmits: int,
        http: httpx.AsyncClient | None,
        report: DeadLetterReport,
    ) -> None:
        self.receiver, self.sender, self.settings = receiver, sender, settings
        self.resubmit, self.max_resubmits = resubmit, max_resubmits
        self.http, self.report = http, report
        self.held: list[ServiceBusReceivedMessage] = []
        self.held_numbers: set[int | None] = set()

    def hold(self, message: ServiceBusReceivedMessage) -> None:
        self.held.append(message)
        self.held_numbers.add(message.sequence_number)

    async def run(self, max_messages: int, max_wait_time: float) -> None:
        """Handle dead letters until the queue is idle or ``max_messages`` were handled."""
        report, receiver = self.report, self.receiver
        while len(report.handled) < max_messages:
            async with asyncio.timeout(max_wait_time + self.settings.operation_timeout):
                batch = await receiver.receive_messages(
                    max_message_count=min(50, max_messages - len(report.handled)),
                    max_wait_time=max_wait_time,
                )
            if not batch:
                break
            if all(m.sequence_number in self.held_numbers for m in batch):
                # Only letters this pass keeps came back (their lock ran out): done.
                for message in batch:
                    await receiver.abandon_message(message)
                break
            for index, message in enumerate(batch):
                if message.sequence_number in self.held_numbers:
                    await receiver.abandon_message(message)
                    continue
                if not await self._one(message):
                    # The webhook is down: keep this one (and the rest) for the next pass
                    # rather than complete what nobody was told about.
                    report.alert_failures += 1
                    for unhandled in batch[index:]:
                        await receiver.abandon_message(unhandled)
                    return

    async def _one(self, message: ServiceBusReceivedMessage) -> bool:
        """Handle one letter; False when its alert failed. Any other failure is this letter's
        alone: logged, the letter left in the dead-letter queue, the pass goes on."""
        letter = DeadLetter(
            device_id=message.session_id,
            message_id=str(message.message_id) if message.message_id else None,
            reason=message.dead_letter_reason,
            description=message.dead_letter_error_description,
            delivery_count=message.delivery_count or 0,
            resubmitted=False,
        )
        try:
            return await self._decide(message, letter)
        except Exception as exc:
            log.exception(
                "dead letter device=%s message=%s: handling it failed, left in the dead-letter "
                "queue: %r",
                letter.device_id,
                letter.message_id,
                exc,
            )
            self.hold(message)
            self.report.failed.append(letter)
            return True

    async def _decide(self, message: ServiceBusReceivedMessage, letter: DeadLetter) -> bool:
        settings, report = self.settings, self.report
        count = _resubmit_count(to_incoming(message).properties)
        # Our own pipeline dead-letters an overflow so that it can come back later.
        recoverable = letter.reason in settings.recoverable_reasons or (
            letter.reason == OVERFLOW_REASON
        )
        refusal = _refusal(message, settings.max_message_bytes) if recoverable else None
        exhausted = recoverable and refusal is None and count >= self.max_resubmits
        resubmit = recoverable and refusal is None and not exhausted and self.resubmit
        letter = dataclasses.replace(
            letter, resubmitted=resubmit, resubmit_count=count, refusal=refusal
        )
        log.warning(
            "dead letter device=%s message=%s reason=%s description=%s deliveries=%d "
            "resubmits=%d%s",
            letter.device_id,
            letter.message_id,
            letter.reason,
            letter.description,
            letter.delivery_count,
            count,
            f" refused: {refusal}" if refusal else "",
        )
        webhook = settings.alert_webhook_url
        if not await _alert(self.http, webhook.get_secret_value() if webhook else None, letter):
            return False
        if exhausted:
            log.error(
                "dead letter device=%s message=%s: resubmitted %d times, the limit: left in the "
                "dead-letter queue",
                letter.device_id,
                letter.message_id,
                count,
            )
            self.hold(message)
            report.exhausted.append(letter)
            return True
        if recoverable and refusal is None and not self.resubmit:
            # A good event that failed for a passing reason: keep it for a pass that resubmits
            # rather than delete it. Held locked until the pass ends, so this pass does not
            # receive it again.
            self.hold(message)
            report.kept.append(letter)
            return True
        if resubmit:
            await self.sender.send_messages(_resubmission(message))
        await self.receiver.complete_message(message)
        report.handled.append(letter)
        return True


#: What a scheduled pass says where no Service Bus is configured (e.g. ``prefect deploy --all``
#: on a developer's machine): it ends Completed, named ``Skipped``, instead of failing every 5 min.
NO_SERVICE_BUS = (
    "no Service Bus configured (ORCH_SB_CONNECTION_STRING or ORCH_SB_FULLY_QUALIFIED_NAMESPACE "
    "in the worker's environment), nothing to do"
)


@flow(name="process-dead-letters")
async def process_dead_letters(
    resubmit: bool = True, max_resubmits: int = DEFAULT_MAX_RESUBMITS
) -> dict[str, Any] | State[Any]:
    """Scheduled in ``prefect.yaml``: one pass with settings from the environment (the flow is a
    composition root; no secret travels as a parameter). Without a Service Bus it logs one line
    and ends ``Completed`` named ``Skipped`` (``NO_SERVICE_BUS``); ``deadletters process`` still
    refuses to start without one."""
    settings = ServiceBusSettings()
    if not settings.configured:
        get_run_logger().info(NO_SERVICE_BUS)
        return Completed(name="Skipped", message=NO_SERVICE_BUS)
    report = await process_dead_letters_once(
        settings, resubmit=resubmit, max_resubmits=max_resubmits
    )
    return report.as_dict()
