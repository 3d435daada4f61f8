"""Helpers for the operations tests: a webhook receiver on 127.0.0.1 and deadline waits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

T = TypeVar("T")


class WebhookReceiver:
    """Records every POSTed JSON body; ``url`` is where to send them."""

    def __init__(self) -> None:
        self.bodies: list[Any] = []
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = {"unparsed": raw.decode(errors="replace")}
                with receiver._lock:
                    receiver.bodies.append(body)
                    receiver._lock.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def matching(self, predicate: Callable[[Any], bool]) -> list[Any]:
        with self._lock:
            return [body for body in self.bodies if predicate(body)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    try:
        yield receiver
    finally:
        receiver.close()


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    deadline_seconds: float,
    what: str,
    interval: float = 0.5,
) -> T:
    """Poll ``probe`` until it returns something other than None; fail at the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        value = await probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_seconds:g}s waiting for {what}")
        await asyncio.sleep(interval)
