"""What the entry points accept, fuzzed: device events through both transports' parse path, and
the management API's bodies and paths over real HTTP.

Events: a body becomes an ``IncomingMessage`` the way each transport makes one (the local ingress
/ ``send-event`` builds it in-process; a Service Bus message is encoded as AMQP, decoded by the SDK
and converted by ``listeners.servicebus.to_incoming``), then ``parse_event`` either returns an
event every later part can store and send, or refuses it with a reason and a description naming
where. Nothing else may happen: no other exception, no event that PostgreSQL or an encoder would
refuse later.

API: every hostile body or path ends in a 4xx with an ASCII JSON body, never a 5xx.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interpreter import jsonsafe
from listeners.events import (
    IncomingEvent,
    IncomingMessage,
    PoisonMessageError,
    PoisonReason,
    parse_event,
)
from listeners.local import event_message
from tests.support.postgres import PostgresServer

LIMIT = 256 * 1024
REASONS = {
    PoisonReason.TOO_LARGE,
    PoisonReason.UNPARSEABLE,
    PoisonReason.SCHEMA,
    PoisonReason.SESSION_MISMATCH,
    PoisonReason.MISSING_EVENT_ID,
}
BOM = b"\xef\xbb\xbf"

# -- the two transports' way to an IncomingMessage ----------------------------------------------


def via_local(body: bytes, *, message_id: str | None, session_id: str | None) -> IncomingMessage:
    """What ``LocalIngress.send_raw`` hands the pipeline (``send`` builds the same shape)."""
    return IncomingMessage(body=body, message_id=message_id, session_id=session_id)


def via_servicebus(
    body: bytes, *, message_id: str | None, session_id: str | None
) -> IncomingMessage:
    """A Service Bus message as the receiver gets it: encoded to AMQP, decoded by the SDK, then
    converted by the listener's ``to_incoming``."""
    from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
    from azure.servicebus._pyamqp._encode import encode_payload
    from azure.servicebus._transport._pyamqp_transport import PyamqpTransport

    from listeners.servicebus import to_incoming

    sent = ServiceBusMessage(
        body,
        message_id=message_id,
        session_id=session_id,
        application_properties={"source": "fuzz"},
    )
    amqp = PyamqpTransport.to_outgoing_amqp_message(sent.raw_amqp_message)
    received = ServiceBusReceivedMessage.from_bytes(bytes(encode_payload(bytearray(), amqp)))
    return to_incoming(received)


TRANSPORTS: dict[str, Callable[..., IncomingMessage]] = {
    "local": via_local,
    "servicebus": via_servicebus,
}


def parsed(message: IncomingMessage) -> IncomingEvent | PoisonMessageError:
    try:
        return parse_event(message, max_bytes=LIMIT)
    except PoisonMessageError as refused:
        return refused


def assert_storable(event: IncomingEvent) -> None:
    """What an accepted event must be: ids and name by the rules, a payload every store and
    Prefect can hold, an instant that converts to UTC, an input that encodes as strict JSON."""
    assert jsonsafe.is_valid_id(event.device_id), event.device_id
    assert jsonsafe.is_valid_id(event.event_id), event.event_id
    assert re.fullmatch(jsonsafe.NAME_PATTERN, event.name) and "\n" not in event.name
    jsonsafe.check_value(event.payload)
    event.occurred_at.astimezone(UTC)
    json.dumps(event.as_input(), allow_nan=False).encode("utf-8")


def assert_refused_well(refused: PoisonMessageError) -> None:
    assert refused.reason in REASONS
    assert refused.description
    assert refused.description.isprintable(), repr(refused.description)


# -- regression examples: each refused at parse time, naming where --------------------------------


def body_text(**members: Any) -> bytes:
    """A body as a producer may write it (``NaN`` literals, ``\\u0000`` escapes: ``json.dumps``)."""
    return json.dumps(members).encode()


HOSTILE_EVENTS = [
    ("nan", body_text(deviceId="dev-1", name="n", payload={"x": float("nan")}), "/payload/x"),
    ("infinity", body_text(deviceId="dev-1", name="n", payload={"x": float("inf")}), "/payload/x"),
    ("1e400", b'{"deviceId": "dev-1", "name": "n", "payload": {"x": 1e400}}', "/payload/x"),
    ("int-2^64", body_text(deviceId="dev-1", name="n", payload={"x": 2**64}), "/payload/x"),
    ("nul-value", body_text(deviceId="dev-1", name="n", payload={"s": "a\x00"}), "/payload/s"),
    ("nul-key", body_text(deviceId="dev-1", name="n", payload={"k\x00": 1}), "/payload/k\\x00"),
    ("surrogate-name", body_text(deviceId="dev-1", name="n\ud800"), "/name"),
    (
        "surrogate-payload",
        body_text(deviceId="dev-1", name="n", payload={"s": "\udc00"}),
        "/payload/s",
    ),
    ("nul-device", body_text(deviceId="dev\x001", name="n"), "/deviceId"),
    ("nul-event-id", body_text(deviceId="dev-1", name="n", eventId="e\x00"), "/eventId"),
    ("newline-device", body_text(deviceId="dev\n1", name="n"), "/deviceId"),
    ("esc-device", body_text(deviceId="dev\x1b1", name="n"), "/deviceId"),
    ("ctl-device", body_text(deviceId="dev\x011", name="n"), "/deviceId"),
    ("newline-name", body_text(deviceId="dev-1", name="ready\n"), "/name"),
    ("esc-name", body_text(deviceId="dev-1", name="re\x1bady"), "/name"),
    ("ctl-name", body_text(deviceId="dev-1", name="re\x01ady"), "/name"),
    ("duplicate-device", b'{"deviceId": "dev-1", "deviceId": "dev-2", "name": "n"}', "/deviceId"),
    ("bom", BOM + body_text(deviceId="dev-1", name="n"), "byte order mark"),
    (
        "time-overflow",
        body_text(deviceId="dev-1", name="n", occurredAt="0001-01-01T00:00:00+01:00"),
        "/occurredAt",
    ),
]


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize(
    ("body", "where"),
    [(body, where) for _, body, where in HOSTILE_EVENTS],
    ids=[c[0] for c in HOSTILE_EVENTS],
)
def test_hostile_event_bodies_are_refused_at_parse_time_naming_where(
    transport: str, body: bytes, where: str
) -> None:
    message = TRANSPORTS[transport](body, message_id="m-1", session_id="dev-1")
    refused = parsed(message)
    assert isinstance(refused, PoisonMessageError), refused
    assert refused.reason in (PoisonReason.SCHEMA, PoisonReason.UNPARSEABLE)
    assert where in refused.description, refused.description
    assert_refused_well(refused)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
def test_a_message_id_outside_the_id_rule_is_no_event_id(transport: str) -> None:
    body = body_text(deviceId="dev-1", name="n")
    refused = parsed(TRANSPORTS[transport](body, message_id="m\x00\n", session_id="dev-1"))
    assert isinstance(refused, PoisonMessageError)
    assert refused.reason == PoisonReason.SCHEMA
    assert "message id" in refused.description
    assert_refused_well(refused)


@pytest.mark.parametrize(
    ("device", "name", "payload"),
    [
        ("dev\x00", "n", {}),
        ("dev-1", "n\ud800", {}),
        ("dev-1", "n", {"x": float("nan")}),
        ("dev-1", "n", {"x": float("-inf")}),
        ("dev\x1b", "n", {}),
    ],
)
def test_send_event_refuses_what_the_queue_refuses(
    device: str, name: str, payload: dict[str, Any]
) -> None:
    """``orchestration send-event`` builds its message from values: the same refusals apply."""
    refused = parsed(event_message(device, name, payload, event_id="e-1"))
    assert isinstance(refused, PoisonMessageError)
    assert refused.reason == PoisonReason.SCHEMA
    assert_refused_well(refused)


def test_a_servicebus_property_that_is_not_utf8_is_converted_not_raised() -> None:
    """A binary application property the listener cannot decode must not break the batch."""
    from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
    from azure.servicebus._pyamqp._encode import encode_payload
    from azure.servicebus._transport._pyamqp_transport import PyamqpTransport

    from listeners.servicebus import to_incoming

    sent = ServiceBusMessage(body_text(deviceId="dev-1", name="n"), message_id="m-1")
    amqp = PyamqpTransport.to_outgoing_amqp_message(sent.raw_amqp_message)
    amqp = amqp._replace(application_properties={b"raw": b"\xff\xfe", b"k": b"v"})
    received = ServiceBusReceivedMessage.from_bytes(bytes(encode_payload(bytearray(), amqp)))
    message = to_incoming(received)
    assert message.properties["k"] == "v"
    assert isinstance(message.properties["raw"], str)
    assert_storable(parse_event(message, max_bytes=LIMIT))


# -- the fuzz ------------------------------------------------------------------------------------

HOSTILE_CHARS = ["\x00", "\ud800", "\udfff", "\n", "\x1b", "\x01", "\ufeff", "/", " ", "é", "~"]
hostile_text = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.sampled_from(HOSTILE_CHARS + list("ab-9.:")), max_size=12),
    st.sampled_from(["dev-1", "ready", "e-1", "a" * 128, "a" * 129, ""]),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 1e308, -0.0]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | hostile_text,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(hostile_text, children, max_size=3)
    ),
    max_leaves=8,
)
timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat()),
    st.datetimes().map(lambda t: t.isoformat()),  # naive
    st.sampled_from(
        ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "2026-13-01T00:00:00Z", "now"]
    ),
    numbers,
)


def mostly(valid: str, hostile: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """The valid value most of the time, so that one hostile member is often the only fault."""
    return st.one_of(st.just(valid), st.just(valid), st.just(valid), hostile)


event_bodies = st.fixed_dictionaries(
    {
        "deviceId": mostly("dev-1", st.one_of(hostile_text, json_values)),
        "name": mostly("ready", hostile_text),
    },
    optional={
        "eventId": mostly("e-1", hostile_text),
        "payload": st.one_of(st.dictionaries(hostile_text, json_values, max_size=4), json_values),
        "occurredAt": timestamps,
        "extra": json_values,
    },
)


def mutate(text: bytes, how: str) -> bytes:
    """Raw-text damage no ``json.dumps`` writes: a BOM, a member twice, a huge number, a cut."""
    if how == "bom":
        return BOM + text
    if how == "duplicate" and text.startswith(b"{") and len(text) > 2:
        return b'{"deviceId": "dev-2", ' + text[1:]
    if how == "huge-number":
        return re.sub(rb"(?<![\w.])\d+(?![\w.])", b"1e400", text, count=1)
    if how == "cut":
        return text[: len(text) // 2]
    return text


MUTATIONS = st.sampled_from(["none", "none", "bom", "duplicate", "huge-number", "cut"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=event_bodies,
    how=MUTATIONS,
    transport=st.sampled_from(sorted(TRANSPORTS)),
    message_id=st.one_of(st.none(), st.just("m-1"), hostile_text),
)
def test_every_event_body_is_accepted_storable_or_refused_with_a_reason(
    body: dict[str, Any], how: str, transport: str, message_id: str | None
) -> None:
    raw = mutate(json.dumps(body).encode(), how)
    try:
        message = TRANSPORTS[transport](raw, message_id=message_id or None, session_id=None)
    except (UnicodeEncodeError, ValueError):
        # The SDK cannot even send a message id with a lone surrogate: no such message exists.
        return
    result = parsed(message)
    if isinstance(result, PoisonMessageError):
        assert_refused_well(result)
    else:
        assert_storable(result)


# -- the API over real HTTP ----------------------------------------------------------------------

API_STATUSES = {202, 404, 409, 413, 415, 422, 429}


@pytest.fixture(scope="module")
def api(
    prefect_server: object, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    from tests.support.api_process import serve_api, workflow_deployment

    database = postgres.sqlalchemy_url(postgres.create_database("api_fuzz"))
    with serve_api(
        tmp_path_factory.mktemp("api-fuzz"),
        deployment=workflow_deployment("fuzz"),
        database_url=database,
        body_timeout="5",
    ) as process:
        yield process


@pytest.fixture(scope="module")
def http(api: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, headers={"X-API-Key": api.key}, timeout=60) as client:
        yield client


def assert_clean_refusal(response: httpx.Response) -> None:
    assert response.status_code in API_STATUSES, (response.status_code, response.text)
    response.content.decode("ascii")
    assert "Traceback" not in response.text


start_bodies = st.fixed_dictionaries(
    {"workflowType": mostly("device-decommission", hostile_text)},
    optional={
        "input": st.one_of(st.dictionaries(hostile_text, json_values, max_size=4), json_values),
        "instanceId": hostile_text,
        "deviceId": hostile_text,
        "version": mostly("1", hostile_text),
    },
)
api_event_bodies = st.fixed_dictionaries(
    {"name": mostly("noise", hostile_text)},
    optional={
        "payload": st.one_of(st.dictionaries(hostile_text, json_values, max_size=4), json_values),
        "eventId": hostile_text,
        "occurredAt": timestamps,
    },
)


@pytest.mark.integration
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    target=st.sampled_from(["/workflows", "/devices/fuzz-dev/events", "/workflows/x/events/noise"]),
    start=start_bodies,
    event=api_event_bodies,
    how=MUTATIONS,
    content_type=st.sampled_from(["application/json", "application/json", "text/plain", None]),
)
def test_api_bodies_end_in_a_4xx_or_acceptance_never_a_5xx(
    http: httpx.Client,
    target: str,
    start: dict[str, Any],
    event: dict[str, Any],
    how: str,
    content_type: str | None,
) -> None:
    body = start if target == "/workflows" else event
    raw = mutate(json.dumps(body).encode(), how)
    headers = {"Content-Type": content_type} if content_type else {}
    assert_clean_refusal(http.post(target, content=raw, headers=headers))


@pytest.mark.integration
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    segment=st.one_of(hostile_text, st.sampled_from(["a%00b", "%ED%A0%80", "%FF", "..", "%2F"])),
    method=st.sampled_from(["GET", "DELETE", "POST-EVENT", "POST-DEVICE"]),
)
def test_api_paths_end_in_a_4xx_never_a_5xx(http: httpx.Client, segment: str, method: str) -> None:
    # Text is percent-encoded as UTF-8 (a lone surrogate as its 3 bytes); the literal %-forms
    # above go out as written.
    encoded = (
        segment
        if segment.startswith("%") or "%" in segment
        else quote(segment.encode("utf-8", "surrogatepass"), safe="")
    )
    if method == "GET":
        response = http.get(f"/workflows/{encoded}")
    elif method == "DELETE":
        response = http.delete(f"/workflows/{encoded}")
    elif method == "POST-EVENT":
        response = http.post(f"/workflows/run-x/events/{encoded}", json={})
    else:
        response = http.post(f"/devices/{encoded}/events", json={"name": "noise"})
    # 307: an empty segment is FastAPI's redirect to the path without the trailing slash.
    assert response.status_code in API_STATUSES | {307, 405}, (response.status_code, response.text)
    response.content.decode("ascii")
