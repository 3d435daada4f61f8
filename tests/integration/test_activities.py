"""The built-in activities against real parts: a local HTTP server, SQLite and PostgreSQL.

HTTP: a threaded server on 127.0.0.1 records every request it receives, so the SSRF cases can
assert that nothing was sent. Records, events, notify and the idempotency proof run on the
``database`` fixture (SQLite and PostgreSQL) from ``tests/integration/conftest.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from interpreter.errors import ActivityError
from tasks.builtin.http import HttpRequestInput, http_request
from tasks.context import ActivityContext
from tasks.settings import HttpSettings

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
            path = self.path
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
