"""The built-in activities against real parts: a local HTTP server, SQLite and PostgreSQL.

HTTP: a threaded server on 127.0.0.1 records every request it receives, so the SSRF cases can
assert that nothing was sent. Records, events, notify and the idempotency proof run on the
``database`` fixture (SQLite and PostgreSQL) from ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from interpreter.errors import ActivityError
from store.db import Database
from tasks.builtin.http import HttpRequestInput, http_request
from tasks.builtin.records import CreateRecordInput, RecordOutput, create_record
from tasks.context import ActivityContext
from tasks.registry import ActivityRegistry, default_registry
from tasks.settings import DefinitionSettings, HttpSettings, NotifySettings

# -- a real HTTP server ---------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class LocalServer:
    port: int
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            server.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            path = self.path.split("?", 1)[0]
            if path == "/json":
                payload = json.dumps({"ok": True, "method": self.command}).encode()
                self._send(
                    200,
                    payload,
                    {"Content-Type": "application/json", "Set-Cookie": "session=s3cret"},
                )
            elif path == "/echo":
                self._send(201, body, {"Content-Type": "application/json"})
            elif path == "/fail":
                self._send(503, b"down")
            elif path == "/missing":
                self._send(404, b"no")
            elif path == "/big":
                self._send(200, b"x" * 4096, {"Content-Type": "text/plain"})
            elif path == "/big-undeclared":
                # No Content-Length: the body ends when the connection closes.
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(b"y" * 4096)
                self.close_connection = True
            elif path == "/redirect":
                self._send(302, b"", {"Location": "/json"})
            elif path == "/redirect-loop":
                self._send(302, b"", {"Location": "/redirect-loop"})
            elif path == "/redirect-away":
                self._send(302, b"", {"Location": f"http://localhost:{server.port}/json"})
            elif path == "/redirect-metadata":
                self._send(302, b"", {"Location": "http://169.254.169.254/latest/meta-data/"})
            elif path == "/slow":
                server.release.wait(timeout=30)
                self._send(200, b"late")
            else:
                self._send(404, b"unknown path")

        do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815  # http.server names them

    return Handler


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    holder = LocalServer(port=0)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(holder))
    httpd.daemon_threads = True
    holder.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield holder
    holder.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def loopback_context(**settings: Any) -> ActivityContext:
    http = HttpSettings(allowed_hosts=["127.0.0.1"], allow_loopback=True, **settings)
    return ActivityContext(http=http, idempotency_key="run-1:step:1")


async def call_http(ctx: ActivityContext, **raw: Any) -> dict[str, Any]:
    result = await http_request(ctx, HttpRequestInput.model_validate(raw))
    return result.model_dump(mode="json", by_alias=True)


# -- HTTP: behaviour -------------------------------------------------------------------------------


async def test_http_get_returns_status_json_and_no_secret_headers(
    local_server: LocalServer,
) -> None:
    result = await call_http(
        loopback_context(),
        url=local_server.url("/json"),
        headers={"Authorization": "Bearer top-secret"},
    )

    assert result["status"] == 200
    assert result["json"] == {"ok": True, "method": "GET"}
    assert "set-cookie" not in result["headers"]
    assert "top-secret" not in json.dumps(result)
    (seen,) = local_server.seen
    assert seen.headers["Host"] == f"127.0.0.1:{local_server.port}"
    assert seen.headers["Authorization"] == "Bearer top-secret"
    assert seen.headers["Idempotency-Key"] == "run-1:step:1"


async def test_http_post_sends_json_body(local_server: LocalServer) -> None:
    result = await call_http(
        loopback_context(), method="POST", url=local_server.url("/echo"), json={"a": [1, 2]}
    )

    assert result["status"] == 201
    assert result["json"] == {"a": [1, 2]}
    assert json.loads(local_server.seen[0].body) == {"a": [1, 2]}


async def test_http_5xx_is_a_retryable_error(local_server: LocalServer) -> None:
    with pytest.raises(ActivityError) as caught:
        await call_http(loopback_context(), url=local_server.url("/fail"))

    assert caught.value.error == "Http.Status5xx"
    assert caught.value.retryable is True


async def test_http_4xx_is_not_retryable(local_server: LocalServer) -> None:
    with pytest.raises(ActivityError) as caught:
        await call_http(loopback_context(), url=local_server.url("/missing"))

    assert caught.value.error == "Http.Status4xx"
    assert caught.value.retryable is False


@pytest.mark.parametrize("path", ["/big", "/big-undeclared"])
async def test_http_response_over_the_cap_is_refused(local_server: LocalServer, path: str) -> None:
    with pytest.raises(ActivityError) as caught:
        await call_http(loopback_context(max_response_bytes=1024), url=local_server.url(path))

    assert caught.value.error == "Http.ResponseTooLarge"
    assert caught.value.retryable is False


async def test_http_same_host_redirect_is_followed(local_server: LocalServer) -> None:
    result = await call_http(loopback_context(), url=local_server.url("/redirect"))

    assert result["json"] == {"ok": True, "method": "GET"}
    assert [seen.path for seen in local_server.seen] == ["/redirect", "/json"]


async def test_http_redirect_loop_stops_after_the_limit(local_server: LocalServer) -> None:
    with pytest.raises(ActivityError) as caught:
        await call_http(loopback_context(max_redirects=3), url=local_server.url("/redirect-loop"))

    assert caught.value.error == "Http.TooManyRedirects"
    assert len(local_server.seen) == 4


@pytest.mark.parametrize("path", ["/redirect-away", "/redirect-metadata"])
async def test_http_redirect_to_another_host_is_refused(
    local_server: LocalServer, path: str
) -> None:
    ctx = ActivityContext(http=HttpSettings(allowed_hosts=["*"], allow_loopback=True))

    with pytest.raises(ActivityError) as caught:
        await call_http(ctx, url=local_server.url(path))

    assert caught.value.error == "Http.Forbidden"
    assert "another host" in caught.value.cause
    assert [seen.path for seen in local_server.seen] == [path]


async def test_http_timeout_is_retryable(local_server: LocalServer) -> None:
    with pytest.raises(ActivityError) as caught:
        await call_http(loopback_context(), url=local_server.url("/slow"), timeoutSeconds=0.3)

    assert caught.value.error == "Http.Timeout"
    assert caught.value.retryable is True


async def test_http_connection_refused_is_retryable(local_server: LocalServer) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ActivityError) as caught:
            await call_http(loopback_context(), url=f"http://127.0.0.1:{closed_port}/")

    assert caught.value.error == "Http.Connection"
    assert caught.value.retryable is True


async def test_http_host_outside_the_allow_list_is_refused(local_server: LocalServer) -> None:
    ctx = ActivityContext(http=HttpSettings(allowed_hosts=["api.example.com"], allow_loopback=True))

    with pytest.raises(ActivityError) as caught:
        await call_http(ctx, url=local_server.url("/json"))

    assert caught.value.error == "Http.Forbidden"
    assert caught.value.retryable is False
    assert local_server.seen == []


# -- HTTP: SSRF refusals (every host allowed by the list; the addresses must still be refused) ----

SSRF_URLS = [
    "http://127.0.0.1:{port}/json",
    "http://2130706433:{port}/json",  # decimal 127.0.0.1
    "http://0x7f.1:{port}/json",  # hex and short form
    "http://0177.0.0.1:{port}/json",  # octal
    "http://0x7f000001:{port}/json",
    "http://[::ffff:127.0.0.1]:{port}/json",  # IPv4-mapped IPv6
    "http://[::1]:{port}/json",
    "http://localhost:{port}/json",  # a name that resolves to loopback
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[::ffff:169.254.169.254]/",
    "http://168.63.129.16/",  # Azure platform address
    "http://10.0.0.1/",
    "http://192.168.1.1/",
    "http://0.0.0.0:{port}/json",
    "http://0:{port}/json",
    "http://[::]:{port}/json",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "ftp://example.com/",
    "http://user:pw@example.com/",
]


@pytest.mark.parametrize("template", SSRF_URLS)
async def test_http_refuses_internal_addresses_in_every_spelling(
    local_server: LocalServer, template: str
) -> None:
    ctx = ActivityContext(http=HttpSettings(allowed_hosts=["*"], allow_loopback=False))

    with pytest.raises(ActivityError) as caught:
        await call_http(ctx, url=template.format(port=local_server.port))

    assert caught.value.error == "Http.Forbidden"
    assert caught.value.retryable is False
    assert local_server.seen == []


async def test_allow_loopback_does_not_open_private_or_metadata_addresses() -> None:
    ctx = ActivityContext(http=HttpSettings(allowed_hosts=["*"], allow_loopback=True))

    for url in ("http://169.254.169.254/", "http://10.1.2.3/", "http://168.63.129.16/"):
        with pytest.raises(ActivityError) as caught:
            await call_http(ctx, url=url)
        assert caught.value.error == "Http.Forbidden", url


# -- the registry's call path (validation, errors) -------------------------------------------------


async def test_call_refuses_invalid_input_naming_the_field_paths() -> None:
    with pytest.raises(ActivityError) as caught:
        await default_registry().call(
            "http.request",
            ActivityContext(idempotency_key="k"),
            {"method": "BREW", "url": "", "headers": {"x": 1}, "extra": True},
        )

    error = caught.value
    assert error.error == "States.InvalidInput"
    assert error.retryable is False
    for path in ("method", "url", "headers.x", "extra"):
        assert path in error.cause


async def test_call_of_an_unknown_activity_names_close_matches() -> None:
    with pytest.raises(ActivityError) as caught:
        await default_registry().call("records.craete", ActivityContext(), {})

    assert caught.value.error == "States.InvalidInput"
    assert "records.create" in caught.value.cause


async def test_state_changing_call_without_idempotency_store_is_refused() -> None:
    with pytest.raises(ActivityError) as caught:
        await default_registry().call(
            "events.clear", ActivityContext(idempotency_key="k"), {"deviceId": "d1"}
        )

    assert caught.value.error == "States.Misconfigured"
    assert caught.value.retryable is False


# -- records, events, notify on SQLite and PostgreSQL ---------------------------------------------


def context_for(db: Database, key: str | None = None, **fields: Any) -> ActivityContext:
    base = ActivityContext.for_database(db)
    return base.for_call(idempotency_key=key, run_id="run-1", device_id="dev-1", **fields)


async def count_rows(db: Database, table: str, where: str = "1 = 1") -> int:
    from sqlalchemy import text

    async with db.transaction(readonly=True) as connection:
        value = await connection.scalar(text(f"SELECT count(*) FROM {table} WHERE {where}"))
    return int(value or 0)


async def test_records_create_update_get_and_rollback(database: Database) -> None:
    registry = default_registry()

    created = await registry.call(
        "records.create",
        context_for(database, "run-1:create:1"),
        {"kind": "onboarding", "key": "dev-1", "data": {"model": "X1"}},
    )
    updated = await registry.call(
        "records.update",
        context_for(database, "run-1:update:1"),
        {"id": created["id"], "data": {"ready": True}, "status": "processed"},
    )
    fetched = await registry.call("records.get", context_for(database), {"id": created["id"]})
    rolled = await registry.call(
        "records.rollbackCreate", context_for(database, "run-1:undo:1"), {"id": created["id"]}
    )
    after = await registry.call("records.get", context_for(database), {"id": created["id"]})

    assert set(created) == {"id", "kind", "key", "data", "status", "createdAt", "updatedAt"}
    assert created["kind"] == "onboarding"
    assert created["key"] == "dev-1"
    assert updated["data"] == {"model": "X1", "ready": True}
    assert updated["status"] == "processed"
    assert fetched == updated
    assert rolled == {"id": created["id"], "rolledBack": True}
    assert after["status"] == "rolled_back"


async def test_records_update_of_a_missing_record_is_not_found(database: Database) -> None:
    with pytest.raises(ActivityError) as caught:
        await default_registry().call(
            "records.update", context_for(database, "k-missing"), {"id": "nope", "status": "x"}
        )

    assert caught.value.error == "Records.NotFound"
    assert caught.value.retryable is False


async def test_records_create_replayed_with_its_key_returns_the_first_record(
    database: Database,
) -> None:
    registry = default_registry()
    ctx = context_for(database, "run-1:create:1")

    first = await registry.call("records.create", ctx, {"kind": "k", "data": {"n": 1}})
    again = await registry.call("records.create", ctx, {"kind": "k", "data": {"n": 1}})

    assert again == first
    assert await count_rows(database, "records") == 1


async def test_same_key_with_another_input_is_a_conflict(database: Database) -> None:
    registry = default_registry()
    ctx = context_for(database, "run-1:create:1")
    await registry.call("records.create", ctx, {"kind": "k", "data": {"n": 1}})

    with pytest.raises(ActivityError) as caught:
        await registry.call("records.create", ctx, {"kind": "k", "data": {"n": 2}})

    assert caught.value.error == "States.IdempotencyConflict"
    assert caught.value.retryable is False
    assert await count_rows(database, "records") == 1


async def record_events(db: Database, device_id: str, names: list[str]) -> None:
    from store.events import DeviceEvent, EventStore

    store = EventStore(db)
    for index, name in enumerate(names):
        await store.record(DeviceEvent(device_id=device_id, event_id=f"e{index}", name=name))


async def test_events_get_defaults_to_the_run_device_and_clear_clears(database: Database) -> None:
    registry = default_registry()
    await record_events(database, "dev-1", ["boot", "report", "report"])
    await record_events(database, "dev-2", ["boot"])

    got = await registry.call("events.get", context_for(database), {})
    reports = await registry.call("events.get", context_for(database), {"name": "report"})
    later = await registry.call(
        "events.get", context_for(database), {"sinceSequence": got["events"][0]["sequence"]}
    )
    cleared = await registry.call("events.clear", context_for(database, "run-1:clear:1"), {})
    replayed = await registry.call("events.clear", context_for(database, "run-1:clear:1"), {})
    left = await registry.call("events.get", context_for(database), {})
    other = await registry.call("events.get", context_for(database), {"deviceId": "dev-2"})

    assert got["count"] == 3
    assert got["names"] == ["boot", "report"]
    assert [event["name"] for event in got["events"]] == ["boot", "report", "report"]
    assert reports["count"] == 2
    assert later["count"] == 2
    assert cleared == {"cleared": 3}
    assert replayed == {"cleared": 3}  # the first result, not a second clear's 0
    assert left["count"] == 0
    assert other["count"] == 1


async def test_notify_without_webhook_logs_and_records(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tasks")
    ctx = context_for(database, "run-1:notify:1", state="Notify")

    result = await default_registry().call(
        "notify.send", ctx, {"channel": "ops", "subject": "Device onboarded", "message": "dev-1"}
    )
    await default_registry().call(
        "notify.send", ctx, {"channel": "ops", "subject": "Device onboarded", "message": "dev-1"}
    )

    assert result == {"delivered": True, "channel": "ops", "via": "log"}
    assert "Device onboarded" in caplog.text
    assert await count_rows(database, "records", "kind = 'notification'") == 1


async def test_notify_posts_to_the_webhook_once_per_key(
    database: Database, local_server: LocalServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    webhook = local_server.url("/echo?token=webhook-secret")
    ctx = context_for(database, "run-1:notify:1", state="Notify")
    ctx = replace(ctx, notify=NotifySettings(webhook_url=webhook))

    results = [
        await default_registry().call("notify.send", ctx, {"subject": "hello", "data": {"a": 1}})
        for _ in range(2)
    ]

    assert results[0] == {"delivered": True, "channel": "log", "via": "webhook"}
    assert results[1] == results[0]
    (seen,) = local_server.seen
    body = json.loads(seen.body)
    assert body["subject"] == "hello"
    assert body["data"] == {"a": 1}
    assert body["runId"] == "run-1"
    assert seen.headers["Idempotency-Key"] == "run-1:notify:1"
    assert "webhook-secret" not in caplog.text
    assert "webhook-secret" not in json.dumps(results)


async def test_notify_webhook_5xx_is_retryable_and_hides_the_url(
    database: Database, local_server: LocalServer
) -> None:
    ctx = replace(
        context_for(database, "k-notify"),
        notify=NotifySettings(webhook_url=local_server.url("/fail?token=webhook-secret")),
    )

    with pytest.raises(ActivityError) as caught:
        await default_registry().call("notify.send", ctx, {"subject": "hello"})

    assert caught.value.error == "Notify.Unavailable"
    assert caught.value.retryable is True
    assert "webhook-secret" not in str(caught.value)


async def test_http_request_through_the_registry_sends_once_per_key(
    database: Database, local_server: LocalServer
) -> None:
    ctx = replace(
        context_for(database, "run-1:post:1"),
        http=HttpSettings(allowed_hosts=["127.0.0.1"], allow_loopback=True),
    )
    raw = {"method": "POST", "url": local_server.url("/echo"), "json": {"n": 1}}

    first = await default_registry().call("http.request", ctx, raw)
    second = await default_registry().call("http.request", ctx, raw)

    assert first == second
    assert first["json"] == {"n": 1}
    assert len(local_server.seen) == 1


# -- THE IDEMPOTENCY PROOF -------------------------------------------------------------------------


class SideEffectLostError(Exception):
    """The connection was lost after the side effect happened, before its result was recorded."""


def flaky_registry(attempts: list[int], *, fail_first: bool) -> ActivityRegistry:
    """A fresh registry with ``test.createThenFail``: the real ``records.create`` side effect,
    then (on the first attempt only, if asked) a failure before the result can be recorded."""
    registry = ActivityRegistry()

    @registry.activity(
        name="test.createThenFail",
        description="records.create, then fail once after the insert",
        retry_safe=True,
        changes_state=True,
        input_model=CreateRecordInput,
        output_model=RecordOutput,
    )
    async def create_then_fail(ctx: ActivityContext, request: CreateRecordInput) -> RecordOutput:
        attempts.append(1)
        record = await create_record(ctx, request)  # the side effect: a row in `records`
        if fail_first and len(attempts) == 1:
            raise SideEffectLostError("connection lost after the insert")
        return record

    return registry


async def test_activity_failing_after_its_side_effect_is_retried_without_repeating_it(
    database: Database,
) -> None:
    attempts: list[int] = []
    registry = flaky_registry(attempts, fail_first=True)
    ctx = context_for(database, "run-1:CreateRecord:1")
    raw = {"kind": "onboarding", "data": {"deviceId": "dev-1"}}

    with pytest.raises(ActivityError) as caught:
        await registry.call("test.createThenFail", ctx, raw)
    rows_after_failure = await count_rows(database, "records")
    retried = await registry.call("test.createThenFail", ctx, raw)
    replayed = await registry.call("test.createThenFail", ctx, raw)

    assert caught.value.error == "States.TaskFailed"
    assert caught.value.retryable is True
    assert rows_after_failure == 1  # the side effect did happen before the failure
    assert len(attempts) == 2  # the retry really ran the activity again ...
    assert await count_rows(database, "records") == 1  # ... and repeated no side effect
    assert replayed == retried  # a replay gets the recorded result without running it
    assert len(attempts) == 2
    assert retried["data"] == {"deviceId": "dev-1"}


async def test_concurrent_duplicates_with_one_key_make_one_side_effect(database: Database) -> None:
    attempts: list[int] = []
    registry = ActivityRegistry()

    @registry.activity(
        name="test.insert",
        description="insert a keyless record: only the idempotency record can deduplicate it",
        retry_safe=True,
        changes_state=True,
        input_model=CreateRecordInput,
        output_model=RecordOutput,
    )
    async def insert(ctx: ActivityContext, request: CreateRecordInput) -> RecordOutput:
        attempts.append(1)
        record = await ctx.require_records().create(request.kind, request.data, None)
        return RecordOutput.model_validate(record.as_json())

    ctx = context_for(database, "run-1:Insert:1")
    raw = {"kind": "concurrent", "data": {"n": 1}}

    results = await asyncio.wait_for(
        asyncio.gather(*(registry.call("test.insert", ctx, raw) for _ in range(10))), timeout=60
    )

    assert len(attempts) == 1
    assert await count_rows(database, "records") == 1
    assert all(result == results[0] for result in results)


async def test_concurrent_builtin_creates_with_one_key_make_one_record(database: Database) -> None:
    ctx = context_for(database, "run-2:CreateRecord:1")
    raw = {"kind": "onboarding", "data": {"deviceId": "dev-9"}}

    results = await asyncio.wait_for(
        asyncio.gather(*(default_registry().call("records.create", ctx, raw) for _ in range(10))),
        timeout=60,
    )

    assert await count_rows(database, "records") == 1
    assert {result["id"] for result in results} == {results[0]["id"]}


# -- definitions -----------------------------------------------------------------------------------

REPO_DEFINITIONS = Path(__file__).resolve().parents[2] / "definitions"


def definition_text(name: str, version: str) -> str:
    document = json.loads((REPO_DEFINITIONS / "device-onboarding.json").read_text())
    document.update(name=name, version=version)
    return json.dumps(document)


def definitions_context(directory: Path) -> ActivityContext:
    return ActivityContext(definitions=DefinitionSettings(directory=str(directory)))


async def test_definitions_load_current_and_by_version(tmp_path: Path) -> None:
    (tmp_path / "flow.json").write_text(definition_text("flow", "2.0.0"))
    (tmp_path / "flow").mkdir()
    (tmp_path / "flow" / "1.9.0.json").write_text(definition_text("flow", "1.9.0"))
    (tmp_path / "flow" / "1.10.0.json").write_text(definition_text("flow", "1.10.0"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "1.9.0.json").write_text(definition_text("other", "1.9.0"))
    (tmp_path / "other" / "1.10.0.json").write_text(definition_text("other", "1.10.0"))
    ctx = definitions_context(tmp_path)
    registry = default_registry()

    current = await registry.call("definitions.load", ctx, {"workflow": "flow"})
    old = await registry.call("definitions.load", ctx, {"workflow": "flow", "version": "1.9.0"})
    same = await registry.call("definitions.load", ctx, {"workflow": "flow", "version": "2.0.0"})
    latest = await registry.call("definitions.load", ctx, {"workflow": "other"})

    assert current["definition"]["version"] == "2.0.0"
    assert old["definition"]["version"] == "1.9.0"
    assert same["hash"] == current["hash"]
    assert old["hash"] != current["hash"]
    assert latest["version"] == "1.10.0"  # numeric order, not text order


async def test_definitions_load_errors(tmp_path: Path) -> None:
    (tmp_path / "flow").mkdir()
    (tmp_path / "flow" / "1.0.0.json").write_text(definition_text("flow", "1.0.0"))
    (tmp_path / "broken.json").write_text("{not json")
    ctx = definitions_context(tmp_path)
    registry = default_registry()

    with pytest.raises(ActivityError) as missing:
        await registry.call("definitions.load", ctx, {"workflow": "flow", "version": "9.9.9"})
    with pytest.raises(ActivityError) as broken:
        await registry.call("definitions.load", ctx, {"workflow": "broken"})
    with pytest.raises(ActivityError) as escape:
        await registry.call("definitions.load", ctx, {"workflow": "../etc/passwd"})

    assert missing.value.error == "Definitions.NotFound"
    assert "1.0.0" in missing.value.cause  # lists what exists
    assert broken.value.error == "Definitions.Invalid"
    assert escape.value.error == "States.InvalidInput"


async def test_definitions_load_reads_the_repository_samples() -> None:
    result = await default_registry().call(
        "definitions.load", definitions_context(REPO_DEFINITIONS), {"workflow": "device-onboarding"}
    )

    assert result["definition"]["name"] == "device-onboarding"
    assert len(result["hash"]) == 64


async def test_definitions_validate_reports_unknown_activities() -> None:
    document = json.loads((REPO_DEFINITIONS / "device-onboarding.json").read_text())
    good = await default_registry().call(
        "definitions.validate", ActivityContext(), {"definition": document}
    )
    text = json.dumps(document).replace('"records.create"', '"records.craete"')
    bad = await default_registry().call(
        "definitions.validate", ActivityContext(), {"definition": json.loads(text)}
    )

    assert good == {"valid": True, "problems": good["problems"]}
    assert all(problem["severity"] == "warning" for problem in good["problems"])
    assert bad["valid"] is False
    assert any("records.create" in json.dumps(problem) for problem in bad["problems"])
