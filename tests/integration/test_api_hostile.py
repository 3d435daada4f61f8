"""Hostile input to the management API over real HTTP (``orchestration serve-api`` in a subprocess,
its database on the real PostgreSQL, the real Prefect server): values no store or encoder can take,
ids outside the id rule, ambiguous JSON, slow bodies, and what error answers may say.

Every refusal is a 4xx naming the field, answered at once; nothing reaches Prefect or the database.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from tests.support.api_process import ApiProcess, serve_api, workflow_deployment
from tests.support.postgres import PostgresServer, free_port

pytestmark = [pytest.mark.integration]

WORKFLOW = "device-decommission"
GENERIC_PREFECT_503 = "Prefect is unavailable; try again later"
GENERIC_RECORD_503 = "the event could not be recorded now; try again later"


@pytest.fixture(scope="module")
def api(
    prefect_server: object, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    database = postgres.sqlalchemy_url(postgres.create_database("api_hostile"))
    with serve_api(
        tmp_path_factory.mktemp("api-hostile"),
        deployment=workflow_deployment("hostile"),
        database_url=database,
        body_timeout="1",
    ) as process:
        yield process


@pytest.fixture
def http(api: ApiProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, headers={"X-API-Key": api.key}, timeout=60) as client:
        yield client


def post_raw(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    """``body`` as JSON text the way a hostile client writes it: ``NaN``/``Infinity`` literals,
    ``\\ud800`` and ``\\u0000`` escapes (``json.dumps`` with ASCII output writes all of these)."""
    text = body if isinstance(body, str | bytes) else json.dumps(body)
    raw = text if isinstance(text, bytes) else text.encode()
    return http.post(path, content=raw, headers={"Content-Type": "application/json"})


def refused_at(response: httpx.Response, *loc: str) -> dict[str, Any]:
    """The response is a 422 in FastAPI's shape, one of whose errors sits at ``loc``."""
    assert response.status_code == 422, (response.status_code, response.text)
    response.content.decode("ascii")  # no character any client could fail to decode
    details = response.json()["detail"]
    for detail in details:
        if [str(part) for part in detail["loc"]][: len(loc)] == list(loc):
            assert "input" not in detail  # never echoed: it may be huge or unprintable
            return dict(detail)
    raise AssertionError(f"no error at {loc}: {details}")


def start(**fields: Any) -> dict[str, Any]:
    return {"workflowType": WORKFLOW, **fields}


# -- lone surrogates, NUL, non-finite numbers ------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (start(input={"note": "\ud800"}), ("body", "input", "note")),
        (start(input={"\udc00": 1}), ("body", "input")),
        (start(instanceId="run-\ud800"), ("body", "instanceId")),
        (start(deviceId="dev-\ud800"), ("body", "deviceId")),
        (start(version="\ud800"), ("body", "version")),
        ({"workflowType": "\ud800"}, ("body", "workflowType")),
    ],
    ids=["input", "input-key", "instanceId", "deviceId", "version", "workflowType"],
)
def test_a_lone_surrogate_in_a_start_field_is_422_naming_it(
    http: httpx.Client, body: dict[str, Any], loc: tuple[str, ...]
) -> None:
    detail = refused_at(post_raw(http, "/workflows", body), *loc)
    assert "surrogate" in detail["msg"] or "pattern" in detail["msg"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"name": "ready\ud800"}, ("body", "name")),
        ({"name": "ready", "payload": {"x": ["\udfff"]}}, ("body", "payload", "x", "0")),
        ({"name": "ready", "eventId": "\ud800"}, ("body", "eventId")),
    ],
    ids=["name", "payload", "eventId"],
)
def test_a_lone_surrogate_in_a_device_event_is_422_naming_it(
    http: httpx.Client, body: dict[str, Any], loc: tuple[str, ...]
) -> None:
    refused_at(post_raw(http, "/devices/dev-surrogate/events", body), *loc)


def test_nul_in_a_device_id_is_422_not_a_postgresql_error(http: httpx.Client) -> None:
    refused_at(post_raw(http, "/workflows", start(deviceId="dev\x00one")), "body", "deviceId")
    refused_at(http.post("/devices/dev%00one/events", json={"name": "ready"}), "path", "device_id")


def test_nul_bound_for_prefect_is_422_at_once(http: httpx.Client) -> None:
    refused_at(http.get("/workflows/a%00b"), "path", "workflow_id")
    refused_at(http.delete("/workflows/a%00b"), "path", "workflow_id")
    refused_at(post_raw(http, "/workflows", start(input={"s": "a\x00b"})), "body", "input", "s")
    refused_at(post_raw(http, "/workflows", start(input={"a\x00": 1})), "body", "input")


@pytest.mark.parametrize(
    "number",
    ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", str(2**64), str(-(2**63) - 1)],
)
def test_non_finite_and_out_of_range_numbers_in_run_input_are_422(
    http: httpx.Client, number: str
) -> None:
    instance = f"num-{uuid.uuid4().hex[:12]}"
    text = (
        f'{{"workflowType": "{WORKFLOW}", "instanceId": "{instance}", '
        f'"input": {{"n": [1, {number}]}}}}'
    )
    refused_at(post_raw(http, "/workflows", text), "body", "input", "n", "1")
    # Nothing was started (it used to start with the value stored as null).
    assert http.get(f"/workflows/{instance}").status_code == 404


# -- one id rule, one name rule ----------------------------------------------------------------


@pytest.mark.parametrize("char", ["\n", "\x1b", "\x01", " ", "/"], ids=repr)
def test_ids_and_body_event_names_outside_the_rules_are_422(http: httpx.Client, char: str) -> None:
    bad = f"dev{char}1"
    refused_at(post_raw(http, "/workflows", start(deviceId=bad)), "body", "deviceId")
    refused_at(post_raw(http, "/workflows", start(instanceId=bad)), "body", "instanceId")
    by_path = http.post(f"/devices/{quote(bad, safe='')}/events", json={"name": "ready"})
    assert by_path.status_code == (404 if char == "/" else 422), by_path.text  # "/" splits it
    if char != "/":  # a name may hold "/"
        name = f"ready{char}now"
        refused_at(post_raw(http, "/devices/dev-1/events", {"name": name}), "body", "name")
    refused_at(
        post_raw(http, "/devices/dev-1/events", {"name": "ready", "eventId": bad}),
        "body",
        "eventId",
    )


def test_ids_at_the_documented_length_are_accepted_and_longer_ones_refused(
    http: httpx.Client,
) -> None:
    device = "d" * 128
    accepted = http.post(f"/devices/{device}/events", json={"name": "noise"})
    assert accepted.status_code == 202, accepted.text
    refused_at(http.post(f"/devices/{device}x/events", json={"name": "noise"}), "path")


# -- ambiguous JSON: the same refusals as the event ingress --------------------------------------


def test_duplicate_members_are_refused(http: httpx.Client) -> None:
    detail = refused_at(
        post_raw(http, "/devices/dev-1/events", '{"name": "ready", "name": "other"}'),
        "body",
        "name",
    )
    assert detail["type"] == "duplicate_key"
    refused_at(
        post_raw(
            http,
            "/workflows",
            f'{{"workflowType": "{WORKFLOW}", "deviceId": "a", "deviceId": "b"}}',
        ),
        "body",
        "deviceId",
    )


def test_a_byte_order_mark_is_refused(http: httpx.Client) -> None:
    body = b"\xef\xbb\xbf" + json.dumps({"name": "ready"}).encode()
    detail = refused_at(post_raw(http, "/devices/dev-1/events", body), "body")
    assert "byte order mark" in detail["msg"]


def test_a_body_that_is_not_json_text_is_refused_without_a_500(http: httpx.Client) -> None:
    for content_type in ("application/json", "text/plain", None):
        headers = {"Content-Type": content_type} if content_type else {}
        response = http.post("/workflows", content=b"\xff\xfe\x00", headers=headers)
        assert response.status_code in (415, 422), (content_type, response.text)
        response.content.decode("ascii")


# -- what error answers say ----------------------------------------------------------------------


def test_an_unknown_workflow_answer_names_no_server_directory(
    http: httpx.Client, api: ApiProcess
) -> None:
    response = http.post("/workflows", json={"workflowType": "no-such-workflow"})
    assert response.status_code == 422
    assert "no-such-workflow" in response.text
    workdir = str(api.log.parent)
    assert workdir not in response.text and "/definitions" not in response.text
    assert workdir in api.log_text()  # the detail is logged for the operator


def test_a_definition_holding_a_lone_surrogate_is_422_not_a_500(
    http: httpx.Client, api: ApiProcess
) -> None:
    # Issue 9: such a definition validated, then hashing it raised UnicodeEncodeError (a 500).
    source = api.log.parent / "definitions" / f"{WORKFLOW}.json"
    document = json.loads(source.read_text(encoding="utf-8"))
    document["name"] = "surrogate-workflow"
    document["description"] = "\ud800"
    text = json.dumps(document)  # ensure_ascii: the lone surrogate is written as its escape
    assert "\\ud800" in text
    (api.log.parent / "definitions" / "surrogate-workflow.json").write_text(text, encoding="utf-8")
    response = http.post("/workflows", json={"workflowType": "surrogate-workflow"})
    assert response.status_code == 422, response.text
    assert "surrogate-workflow" in response.text
    assert "invalid-string" in api.log_text()  # the operator's log says what and where


# -- slow bodies ---------------------------------------------------------------------------------


def test_a_body_that_never_arrives_is_timed_out_and_the_connection_closed(
    api: ApiProcess,
) -> None:
    with socket.create_connection((api.host, api.port), timeout=30) as sock:
        sock.sendall(
            b"POST /devices/dev-1/events HTTP/1.1\r\nHost: x\r\nX-API-Key: "
            + api.key.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{"
        )
        reply = b""
        while chunk := sock.recv(4096):  # until the server closes (30 s socket deadline)
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply


# -- a Prefect and a database that fail: generic answers, details in the log ---------------------


@pytest.fixture(scope="module")
def degraded(
    prefect_server: object, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ApiProcess, PostgresServer, str]]:
    """An API whose Prefect URL has nobody listening and whose database can be closed."""
    name = postgres.create_database("api_degraded")
    with serve_api(
        tmp_path_factory.mktemp("api-degraded"),
        deployment="run-workflow/none",
        database_url=postgres.sqlalchemy_url(name),
        env={"PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"},
        ready_statuses=(503,),
        prefect_timeout="3",
    ) as process:
        yield process, postgres, name


def test_prefect_unavailable_answers_503_without_driver_text(
    degraded: tuple[ApiProcess, PostgresServer, str],
) -> None:
    api = degraded[0]
    response = httpx.get(
        f"{api.base_url}/workflows/{uuid.uuid4()}", headers={"X-API-Key": api.key}, timeout=60
    )
    assert response.status_code == 503
    assert response.json() == {"detail": GENERIC_PREFECT_503}
    assert "Prefect unreachable" in api.log_text()  # the driver's words go to the log


def test_a_database_failure_answers_503_without_driver_text(
    degraded: tuple[ApiProcess, PostgresServer, str],
) -> None:
    api, postgres, database = degraded

    async def close_database(allow: bool) -> None:
        conn = await asyncpg.connect(postgres.admin_dsn, timeout=10)
        try:
            await conn.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS {allow}')
            if not allow:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    database,
                )
        finally:
            await conn.close()

    asyncio.run(close_database(False))
    try:
        response = httpx.post(
            f"{api.base_url}/devices/dev-1/events",
            json={"name": "ready"},
            headers={"X-API-Key": api.key},
            timeout=60,
        )
    finally:
        asyncio.run(close_database(True))
    assert response.status_code == 503, response.text
    assert response.json()["detail"] == GENERIC_RECORD_503
    assert "not currently accepting connections" in api.log_text()


def test_the_hostile_api_log_has_no_traceback_of_a_500(api: ApiProcess) -> None:
    """Run last in this module (pytest keeps file order): nothing above ended in a 500."""
    text = api.log_text()
    assert '" 500' not in text and "Exception in ASGI application" not in text
