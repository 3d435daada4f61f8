"""The dead-letter processor against the fake broker (real SDK) with a real local webhook."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from pydantic import SecretStr

from listeners.deadletters import process_dead_letters_once
from listeners.settings import ServiceBusSettings
from tests.integration.ops_helpers import WebhookReceiver
from tests.support.fake_servicebus import Broker, start_broker

pytestmark = [pytest.mark.integration, pytest.mark.servicebus]


@pytest.fixture
def broker(shared_dir: Path, tmp_path: Path) -> Iterator[Broker]:
    started = start_broker(shared_dir, tmp_path, max_delivery=2)
    yield started
    started.stop()


@pytest.fixture
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


async def dead_letter(broker: Broker, device: str, message_id: str, reason: str) -> None:
    """Put a message on the queue and dead-letter it with ``reason`` through the SDK."""
    async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_queue_sender(broker.queue) as sender:
            body = json.dumps({"deviceId": device, "name": "boot", "payload": {}})
            await sender.send_messages(
                ServiceBusMessage(body, session_id=device, message_id=message_id)
            )
        async with client.get_queue_receiver(
            broker.queue, session_id=device, max_wait_time=5
        ) as receiver:
            (received,) = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
            await receiver.dead_letter_message(
                received, reason=reason, error_description=f"{reason} in a test"
            )


async def test_dead_letters_are_reported_alerted_completed_and_recoverable_ones_resubmitted(
    broker: Broker, webhook: WebhookReceiver
) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    await dead_letter(broker, device, "poison-1", "SchemaViolation")
    await dead_letter(broker, device, "retry-1", "MaxDeliveryCountExceeded")
    settings = ServiceBusSettings(
        connection_string=SecretStr(broker.connection_string),
        queue_name=broker.queue,
        alert_webhook_url=webhook.url,
    )

    report = await process_dead_letters_once(settings, resubmit=True, max_wait_time=1)

    by_id = {d.message_id: d for d in report.handled}
    assert set(by_id) == {"poison-1", "retry-1"}
    assert by_id["poison-1"].reason == "SchemaViolation"
    assert by_id["poison-1"].description == "SchemaViolation in a test"
    assert by_id["poison-1"].device_id == device
    assert not by_id["poison-1"].resubmitted and by_id["retry-1"].resubmitted
    alerts = webhook.matching(lambda body: body.get("kind") == "dead-letter")
    assert sorted(a["messageId"] for a in alerts) == ["poison-1", "retry-1"]
    # Completed: a second pass finds nothing.
    assert (await process_dead_letters_once(settings, max_wait_time=1)).handled == []
    # The recoverable one is back on the queue, in its device's session, body intact.
    async with (
        ServiceBusClient.from_connection_string(broker.connection_string) as client,
        client.get_queue_receiver(
            broker.queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=5
        ) as receiver,
    ):
        (back,) = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        assert back.session_id == device
        assert str(back.message_id).startswith("retry-1~resubmit-")  # new id, same event id
        assert json.loads(str(back))["deviceId"] == device
        assert json.loads(str(back))["eventId"] == "retry-1"
        props: dict[Any, Any] = dict(back.application_properties or {})
        assert props.get(b"resubmittedFrom", props.get("resubmittedFrom")) in (
            b"MaxDeliveryCountExceeded",
            "MaxDeliveryCountExceeded",
        )
        await receiver.complete_message(back)


async def test_a_failed_alert_leaves_the_dead_letter_for_the_next_pass(broker: Broker) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    await dead_letter(broker, device, "poison-2", "UnparseableBody")
    unreachable = ServiceBusSettings(
        connection_string=SecretStr(broker.connection_string),
        queue_name=broker.queue,
        alert_webhook_url="http://127.0.0.1:9/hook",  # discard port: connection refused
    )

    failed = await process_dead_letters_once(unreachable, max_wait_time=1, max_messages=1)
    assert failed.handled == [] and failed.alert_failures == 1

    quiet = unreachable.model_copy(update={"alert_webhook_url": None})
    later = await process_dead_letters_once(quiet, max_wait_time=1)
    assert [d.message_id for d in later.handled] == ["poison-2"]


async def test_a_pass_without_resubmit_keeps_recoverable_letters_for_one_that_resubmits(
    broker: Broker,
) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    await dead_letter(broker, device, "poison-3", "SchemaViolation")
    await dead_letter(broker, device, "retry-3", "MaxDeliveryCountExceeded")
    await dead_letter(broker, device, "full-3", "DeviceEventOverflow")
    settings = ServiceBusSettings(
        connection_string=SecretStr(broker.connection_string), queue_name=broker.queue
    )

    plain = await process_dead_letters_once(settings, max_wait_time=1)
    # The poison one is reported and completed; the good events are left in the queue.
    assert [d.message_id for d in plain.handled] == ["poison-3"]
    assert sorted(d.message_id or "" for d in plain.kept) == ["full-3", "retry-3"]
    assert not any(d.resubmitted for d in plain.kept)

    resubmitting = await process_dead_letters_once(settings, resubmit=True, max_wait_time=1)
    assert sorted(d.message_id or "" for d in resubmitting.handled) == ["full-3", "retry-3"]
    assert all(d.resubmitted for d in resubmitting.handled)
    assert resubmitting.kept == []
    assert (await process_dead_letters_once(settings, resubmit=True, max_wait_time=1)).handled == []
