"""The dead-letter processor: read the queue's dead-letter sub-queue, report, resubmit, complete.

For each dead letter: one log line (device, message id, reason, description, delivery count), one
alert to the configured webhook (JSON; a failed alert leaves the message in the dead-letter queue
for the next pass, so nothing is reported as handled that was not), then, when ``resubmit`` is on
and the reason is recoverable (``MaxDeliveryCountExceeded``, ``DeviceEventOverflow``, ...), the
message is sent back to the queue with its body, message id, session id and properties (plus a
``resubmittedFrom`` property); finally it is completed. A recoverable letter seen by a pass
without ``resubmit`` is NOT completed: it is abandoned, so it stays in the dead-letter queue for a
pass that resubmits (completing it would delete a good event for good). Resubmitting an event
twice is harmless: the store records an event id once.

``process_dead_letters`` is the Prefect flow that ``prefect.yaml`` schedules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from azure.servicebus import ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.exceptions import ServiceBusError
from prefect import flow

from listeners.pipeline import OVERFLOW_REASON
from listeners.servicebus import make_client, to_incoming
from listeners.settings import ServiceBusSettings

if TYPE_CHECKING:
    from azure.servicebus import ServiceBusReceivedMessage
    from azure.servicebus.aio import ServiceBusReceiver, ServiceBusSender

__all__ = ["DeadLetter", "DeadLetterReport", "process_dead_letters", "process_dead_letters_once"]

log = logging.getLogger(__name__)

ALERT_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    device_id: str | None
    message_id: str | None
    reason: str | None
    description: str | None
    delivery_count: int
    resubmitted: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "deviceId": self.device_id,
            "messageId": self.message_id,
            "reason": self.reason,
            "description": self.description,
            "deliveryCount": self.delivery_count,
            "resubmitted": self.resubmitted,
        }


@dataclass
class DeadLetterReport:
    handled: list[DeadLetter] = field(default_factory=list)
    alert_failures: int = 0
    #: Recoverable letters left in the dead-letter queue by a pass without ``resubmit``.
    kept: list[DeadLetter] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "handled": len(self.handled),
            "resubmitted": sum(d.resubmitted for d in self.handled),
            "alertFailures": self.alert_failures,
            "kept": len(self.kept),
            "messages": [d.as_dict() for d in self.handled],
            "keptMessages": [d.as_dict() for d in self.kept],
        }


def _resubmission(message: ServiceBusReceivedMessage) -> ServiceBusMessage:
    """The dead letter as a new message for the queue.

    It needs a new message id: the broker's duplicate detection drops a message id it saw within
    its window (seen with the fake, as the service does). The id is derived from the dead letter's
    sequence number, so a pass that dies after sending and before completing sends a duplicate the
    broker drops. The event id must not change with it: a body without ``eventId`` gets the
    original message id, which was its event id."""
    incoming = to_incoming(message)
    body = incoming.body
    with contextlib.suppress(ValueError):
        document = json.loads(body)
        if isinstance(document, dict) and not document.get("eventId") and message.message_id:
            document["eventId"] = str(message.message_id)
            body = json.dumps(document, separators=(",", ":")).encode()
    properties: dict[str | bytes, Any] = {}
    properties.update(incoming.properties)
    properties["resubmittedFrom"] = str(message.dead_letter_reason or "")
    properties["originalMessageId"] = str(message.message_id or "")
    return ServiceBusMessage(
        body,
        session_id=message.session_id,
        message_id=f"{message.message_id}~resubmit-{message.sequence_number}",
        correlation_id=message.correlation_id,
        application_properties=properties,
    )


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
            held: list[ServiceBusReceivedMessage] = []
            kept_numbers: set[int | None] = set()
            try:
                await _pass(
                    receiver,
                    sender,
                    settings,
                    resubmit,
                    max_messages,
                    max_wait_time,
                    http,
                    report,
                    held,
                    kept_numbers,
                )
            finally:
                for message in held:
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


async def _pass(
    receiver: ServiceBusReceiver,
    sender: ServiceBusSender,
    settings: ServiceBusSettings,
    resubmit: bool,
    max_messages: int,
    max_wait_time: float,
    http: httpx.AsyncClient | None,
    report: DeadLetterReport,
    held: list[ServiceBusReceivedMessage],
    kept_numbers: set[int | None],
) -> None:
    """Handle dead letters until the queue is idle or ``max_messages`` were handled."""
    while len(report.handled) < max_messages:
        async with asyncio.timeout(max_wait_time + settings.operation_timeout):
            batch = await receiver.receive_messages(
                max_message_count=min(50, max_messages - len(report.handled)),
                max_wait_time=max_wait_time,
            )
        if not batch:
            break
        if all(m.sequence_number in kept_numbers for m in batch):
            # Only letters this pass keeps came back (their lock ran out): done.
            for message in batch:
                await receiver.abandon_message(message)
            break
        for message in batch:
            if message.sequence_number in kept_numbers:
                await receiver.abandon_message(message)
                continue
            reason = message.dead_letter_reason
            # Our own pipeline dead-letters an overflow so that it can come back later.
            recoverable = reason in settings.recoverable_reasons or reason == OVERFLOW_REASON
            letter = DeadLetter(
                device_id=message.session_id,
                message_id=str(message.message_id) if message.message_id else None,
                reason=reason,
                description=message.dead_letter_error_description,
                delivery_count=message.delivery_count or 0,
                resubmitted=recoverable and resubmit,
            )
            log.warning(
                "dead letter device=%s message=%s reason=%s description=%s deliveries=%d",
                letter.device_id,
                letter.message_id,
                letter.reason,
                letter.description,
                letter.delivery_count,
            )
            webhook = settings.alert_webhook_url
            if not await _alert(http, webhook.get_secret_value() if webhook else None, letter):
                # The webhook is down: keep this one (and the rest) for the next pass
                # rather than complete what nobody was told about.
                report.alert_failures += 1
                for unhandled in batch[batch.index(message) :]:
                    await receiver.abandon_message(unhandled)
                return
            if recoverable and not resubmit:
                # A good event that failed for a passing reason: keep it for a pass that
                # resubmits rather than delete it. Held locked until the pass ends, so
                # this pass does not receive it again.
                held.append(message)
                kept_numbers.add(message.sequence_number)
                report.kept.append(letter)
                continue
            if recoverable:
                await sender.send_messages(_resubmission(message))
            await receiver.complete_message(message)
            report.handled.append(letter)


@flow(name="process-dead-letters")
async def process_dead_letters(resubmit: bool = True) -> dict[str, Any]:
    """Scheduled in ``prefect.yaml``: one pass with settings from the environment (the flow is a
    composition root; no secret travels as a parameter)."""
    report = await process_dead_letters_once(ServiceBusSettings(), resubmit=resubmit)
    return report.as_dict()
