"""The ingress message contract (``listeners.events.parse_event``) and the listeners' exports."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

import listeners
from listeners.events import (
    MAX_JSON_DEPTH,
    IncomingMessage,
    PoisonMessageError,
    PoisonReason,
    parse_event,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LIMIT = 1024


def message(body: object, **fields: object) -> IncomingMessage:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return IncomingMessage(body=raw, **fields)  # type: ignore[arg-type]


def poison(msg: IncomingMessage, max_bytes: int = LIMIT) -> PoisonMessageError:
    with pytest.raises(PoisonMessageError) as refused:
        parse_event(msg, max_bytes=max_bytes, now=NOW)
    return refused.value


def test_a_full_body_becomes_an_event() -> None:
    enqueued = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    event = parse_event(
        message(
            {
                "deviceId": "dev-1",
                "eventId": "e-1",
                "name": "device.ready",
                "payload": {"firmware": "2.1"},
                "occurredAt": "2026-01-02T04:00:00+01:00",
            },
            message_id="m-1",
            session_id="dev-1",
            enqueued_at=enqueued,
        ),
        max_bytes=LIMIT,
        now=NOW,
    )
    assert (event.device_id, event.event_id, event.name) == ("dev-1", "e-1", "device.ready")
    assert event.payload == {"firmware": "2.1"}
    assert event.occurred_at == datetime(2026, 1, 2, 3, 0, tzinfo=UTC)  # the same instant
    assert (event.received_at, event.enqueued_at) == (NOW, enqueued)
    assert event.as_input() == {
        "deviceId": "dev-1",
        "eventId": "e-1",
        "name": "device.ready",
        "payload": {"firmware": "2.1"},
        "occurredAt": "2026-01-02T04:00:00+01:00",
    }


def test_the_event_id_falls_back_to_the_message_id_and_times_to_the_broker_then_now() -> None:
    enqueued = datetime(2026, 1, 1, tzinfo=UTC)
    with_broker = parse_event(
        message({"deviceId": "d", "name": "n"}, message_id="m-9", enqueued_at=enqueued),
        max_bytes=LIMIT,
        now=NOW,
    )
    assert (with_broker.event_id, with_broker.occurred_at, with_broker.payload) == (
        "m-9",
        enqueued,
        {},
    )
    local = parse_event(message({"deviceId": "d", "name": "n", "eventId": "x"}), max_bytes=LIMIT)
    assert local.occurred_at == local.received_at
    assert local.received_at.tzinfo is not None


def test_a_body_over_the_limit_is_refused_unread() -> None:
    refused = poison(message(b"{" + b" " * LIMIT + b"}"))
    assert refused.reason == PoisonReason.TOO_LARGE == "MessageTooLarge"
    assert str(LIMIT) in refused.description


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "deeper than"),
    ],
    ids=["not-utf8", "not-json", "too-deep"],
)
def test_unparseable_bodies_are_refused(raw: bytes, why: str) -> None:
    refused = poison(message(raw), max_bytes=10_000)
    assert refused.reason == PoisonReason.UNPARSEABLE
    assert why in refused.description


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    deep_text = "[" * (MAX_JSON_DEPTH * 2)
    body = {"deviceId": "d", "eventId": "e", "name": "n", "payload": {"text": deep_text}}
    assert parse_event(message(body), max_bytes=10_000).payload == {"text": deep_text}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "n"}, "deviceId"),
        ({"deviceId": "", "name": "n"}, "deviceId"),
        ({"deviceId": "d"}, "name"),
        ({"deviceId": "d", "name": "n", "payload": [1]}, "payload"),
        ({"deviceId": "d", "name": "n", "extra": 1}, "extra"),
        ({"deviceId": "d", "name": "n", "occurredAt": "2026-01-01T00:00:00"}, "occurredAt"),
        (["not", "an", "object"], "(body)"),
    ],
    ids=["no-device", "empty-device", "no-name", "payload-list", "unknown", "naive-time", "array"],
)
def test_schema_violations_name_the_field(body: object, field: str) -> None:
    refused = poison(message(body, message_id="m"))
    assert refused.reason == PoisonReason.SCHEMA
    assert field in refused.description


def test_a_device_other_than_the_session_is_refused() -> None:
    refused = poison(message({"deviceId": "a", "name": "n"}, message_id="m", session_id="b"))
    assert refused.reason == PoisonReason.SESSION_MISMATCH
    assert "'a'" in refused.description and "'b'" in refused.description


def test_an_event_without_any_id_is_refused() -> None:
    refused = poison(message({"deviceId": "d", "name": "n"}))
    assert refused.reason == PoisonReason.MISSING_EVENT_ID


def test_the_listeners_public_surface_is_pinned() -> None:
    assert listeners.__all__ == sorted(listeners.__all__)
    assert listeners.__all__ == [
        "ControlError",
        "ControlUnavailableError",
        "IncomingEvent",
        "IncomingMessage",
        "PoisonMessageError",
        "RecordStatus",
        "RouteAction",
        "RouteResult",
        "Router",
        "RunControl",
        "parse_event",
    ]
    assert all(hasattr(listeners, name) for name in listeners.__all__)
