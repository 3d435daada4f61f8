"""``http.request``'s allow-list is host or host:port, and a redirect keeps its port.

Two real HTTP servers on 127.0.0.1, on two ports: the "public" one answers and redirects, the
"internal" one stands for another service on the same host (an admin port). Each records what it
received, so a refusal is also proven by the internal server never seeing a request.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from interpreter.errors import ActivityError
from tasks.builtin.http import HttpRequestInput, http_request
from tasks.builtin.netguard import InvalidHostError, host_allowed, split_entry
from tasks.context import ActivityContext
from tasks.settings import HttpSettings

pytestmark = pytest.mark.integration


@dataclass
class Server:
    port: int = 0
    paths: list[str] = field(default_factory=list)
    redirect_to: str = ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _start(server: Server) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            server.paths.append(self.path)
            if self.path == "/hop" and server.redirect_to:
                self.send_response(302)
                self.send_header("Location", server.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = b'{"port": %d}' % server.port
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    return httpd, thread


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    public, internal = Server(), Server()
    started = [_start(public), _start(internal)]
    yield public, internal
    for httpd, thread in started:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _context(*allowed: str) -> ActivityContext:
    return ActivityContext(http=HttpSettings(allowed_hosts=list(allowed), allow_loopback=True))


async def _get(ctx: ActivityContext, url: str) -> dict[str, Any]:
    result = await http_request(ctx, HttpRequestInput.model_validate({"url": url}))
    return result.model_dump(mode="json", by_alias=True)


async def test_a_redirect_to_another_port_of_an_allowed_host_is_refused(
    servers: tuple[Server, Server],
) -> None:
    public, internal = servers
    public.redirect_to = internal.url("/admin")

    with pytest.raises(ActivityError) as caught:
        await _get(_context("127.0.0.1"), public.url("/hop"))

    assert caught.value.error == "Http.Forbidden"
    assert f"port {public.port} to another port {internal.port}" in caught.value.cause
    assert public.paths == ["/hop"]
    assert internal.paths == []  # the other service never saw a request


async def test_a_same_port_redirect_is_still_followed(servers: tuple[Server, Server]) -> None:
    public, _ = servers
    public.redirect_to = "/landing"

    result = await _get(_context("127.0.0.1"), public.url("/hop"))

    assert result["json"] == {"port": public.port}
    assert public.paths == ["/hop", "/landing"]


async def test_a_host_port_entry_allows_that_port_only(servers: tuple[Server, Server]) -> None:
    public, internal = servers
    ctx = _context(f"127.0.0.1:{public.port}")

    assert (await _get(ctx, public.url("/direct")))["json"] == {"port": public.port}
    with pytest.raises(ActivityError) as caught:
        await _get(ctx, internal.url("/direct"))

    assert caught.value.error == "Http.Forbidden"
    assert "not in the allow-list" in caught.value.cause
    assert internal.paths == []


def test_allow_list_entries_parse_host_and_port() -> None:
    assert split_entry("Example.com") == ("example.com", None)
    assert split_entry("*.example.com:8443") == ("*.example.com", 8443)
    assert split_entry("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert split_entry("2001:db8::1") == ("2001:db8::1", None)
    with pytest.raises(InvalidHostError):
        split_entry("example.com:http")
    assert host_allowed("api.example.com", ["*.example.com:8443"], 8443)
    assert not host_allowed("api.example.com", ["*.example.com:8443"], 443)
    assert host_allowed("api.example.com", ["*.example.com"], 443)
