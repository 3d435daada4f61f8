"""The dead-letter processor against the fake broker (real SDK) with a real local webhook."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusReceivedMessage
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


MAX_MESSAGE_ID = 128  # Service Bus refuses longer message ids (the SDK raises ValueError)


def properties(message: ServiceBusReceivedMessage) -> dict[str, Any]:
    """Application properties with text keys and values (the SDK hands out bytes)."""
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else v
        )
        for k, v in (message.application_properties or {}).items()
    }


async def dead_letter(
    broker: Broker,
    device: str,
    message_id: str,
    reason: str,
    *,
    body: str | None = None,
) -> None:
    """Put a message on the queue and dead-letter it with ``reason`` through the SDK."""
    async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        async with client.get_queue_sender(broker.queue) as sender:
            if body is None:
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
        assert len(str(back.message_id)) <= MAX_MESSAGE_ID
        assert json.loads(str(back))["deviceId"] == device
        assert json.loads(str(back))["eventId"] == "retry-1"
        props = properties(back)
        assert props["resubmittedFrom"] == "MaxDeliveryCountExceeded"
        assert props["originalMessageId"] == "retry-1"
        assert props["resubmitCount"] == 1
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


async def fail_again(broker: Broker, device: str) -> ServiceBusReceivedMessage:
    """What a listener that still cannot process the resubmitted event does: the broker's max
    delivery count moves it to the dead-letter queue (done here through the SDK, at once)."""
    async with (
        ServiceBusClient.from_connection_string(broker.connection_string) as client,
        client.get_queue_receiver(broker.queue, session_id=device, max_wait_time=5) as receiver,
    ):
        (back,) = await receiver.receive_messages(max_message_count=1, max_wait_time=5)
        await receiver.dead_letter_message(
            back, reason="MaxDeliveryCountExceeded", error_description="failed again"
        )
        return back


async def test_resubmits_keep_the_message_id_bounded_count_in_properties_and_stop_at_the_cap(
    broker: Broker,
) -> None:
    """Issue 9: each resubmit appended ``~resubmit-N`` to the id; past 128 characters the SDK
    raised ValueError and every later pass crashed on the same letter."""
    device = f"dev-{uuid.uuid4().hex[:8]}"
    original = "m" * 120
    await dead_letter(broker, device, original, "MaxDeliveryCountExceeded")
    settings = ServiceBusSettings(
        connection_string=SecretStr(broker.connection_string), queue_name=broker.queue
    )

    ids = []
    for attempt in (1, 2, 3):
        report = await process_dead_letters_once(
            settings, resubmit=True, max_wait_time=1, max_resubmits=3
        )
        assert [d.resubmitted for d in report.handled] == [True], attempt
        assert report.handled[0].resubmit_count == attempt - 1
        back = await fail_again(broker, device)
        ids.append(str(back.message_id))
        props = properties(back)
        assert props["resubmitCount"] == attempt
        assert props["originalMessageId"] == original
        assert json.loads(str(back))["eventId"] == original  # the event id never changes
    assert all(len(i) <= MAX_MESSAGE_ID for i in ids)
    assert len(set(ids)) == 3 and len({len(i) for i in ids}) == 1  # new each time, not growing

    capped = await process_dead_letters_once(
        settings, resubmit=True, max_wait_time=1, max_resubmits=3
    )
    assert capped.handled == []
    assert [d.resubmit_count for d in capped.exhausted] == [3]
    assert not capped.exhausted[0].resubmitted
    # Kept in the dead-letter queue for a person to look at, not resubmitted, not deleted.
    again = await process_dead_letters_once(
        settings, resubmit=True, max_wait_time=1, max_resubmits=3
    )
    assert [d.message_id for d in again.exhausted] == [ids[-1]]


SMALL_LIMIT = 16 * 1024


@pytest.fixture
def small_broker(shared_dir: Path, tmp_path: Path) -> Iterator[Broker]:
    """A broker that takes messages of at most ``SMALL_LIMIT`` bytes."""
    started = start_broker(shared_dir, tmp_path, max_delivery=2, max_size=SMALL_LIMIT)
    if not started.fake:
        pytest.skip("needs the fake broker's --max-size")
    yield started
    started.stop()


async def test_a_letter_that_fails_does_not_stop_the_pass_for_the_others(
    small_broker: Broker,
) -> None:
    """One letter whose resubmission the broker refuses (too large with the properties added)
    is left in the dead-letter queue and reported; the letters after it are handled."""
    broker = small_broker
    device = f"dev-{uuid.uuid4().hex[:8]}"
    # The largest body the broker takes as a first send: its resubmission, a few properties
    # larger, is refused.
    from azure.servicebus.exceptions import MessageSizeExceededError

    size = SMALL_LIMIT
    while True:
        padding = "x" * size
        body = json.dumps({"deviceId": device, "name": "boot", "payload": {"pad": padding}})
        try:
            await dead_letter(broker, device, "huge-1", "MaxDeliveryCountExceeded", body=body)
            break
        except MessageSizeExceededError:
            size -= 32
    await dead_letter(broker, device, "poison-4", "SchemaViolation")
    await dead_letter(broker, device, "retry-4", "MaxDeliveryCountExceeded")
    settings = ServiceBusSettings(
        connection_string=SecretStr(broker.connection_string), queue_name=broker.queue
    )

    report = await process_dead_letters_once(settings, resubmit=True, max_wait_time=1)

    assert [d.message_id for d in report.failed] == ["huge-1"]
    assert "huge-1" not in [d.message_id for d in report.handled]
    assert sorted(d.message_id or "" for d in report.handled) == ["poison-4", "retry-4"]
    # The failed one is still there for the next pass (which fails on it alone again).
    later = await process_dead_letters_once(settings, resubmit=True, max_wait_time=1)
    assert [d.message_id for d in later.failed] == ["huge-1"] and later.handled == []


BODIES_NEVER_STORABLE = [
    pytest.param('{"deviceId": "%s", "name": "boot", "payload": {"v": NaN}}', id="nan"),
    pytest.param('{"deviceId": "%s", "name": "boot", "payload": {"v": 1e400}}', id="1e400"),
    pytest.param('{"deviceId": "%s", "name": "boot", "payload": {"s": "\\u0000"}}', id="nul"),
    pytest.param('{"deviceId": "%s", "name": "boot", "payload": {"s": "\\ud800"}}', id="surr"),
    pytest.param('{"deviceId": "%s", "name": "boot", "payload": [1]}', id="schema"),
]


@pytest.mark.parametrize("template", BODIES_NEVER_STORABLE)
async def test_a_letter_that_can_never_be_stored_is_not_resubmitted_whatever_its_reason(
    broker: Broker, template: str
) -> None:
    """A deterministic refusal is not recoverable: resubmitting it only brings it back."""
    device = f"dev-{uuid.uuid4().hex[:8]}"
    await dead_letter(broker, device, "bad-1", "MaxDeliveryCountExceeded", body=template % device)
    settings = ServiceBusSettings(
        connection_string=SecretStr(broker.connection_string), queue_name=broker.queue
    )

    report = await process_dead_letters_once(settings, resubmit=True, max_wait_time=1)

    (letter,) = report.handled
    assert not letter.resubmitted
    assert letter.refusal  # what can never succeed, said
    assert (await process_dead_letters_once(settings, resubmit=True, max_wait_time=1)).handled == []
    async with (
        ServiceBusClient.from_connection_string(broker.connection_string) as client,
        client.get_queue_receiver(broker.queue, session_id=device, max_wait_time=2) as receiver,
    ):
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=2) == []
