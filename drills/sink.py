"""The side-effect sink: a local HTTP server that the drill definition's ``http.request`` steps
post to, logging every request's ``Idempotency-Key`` so a drill can count side effects per key.

It runs in the drill's own process on a thread (``ThreadingHTTPServer``); ``delay`` holds each
answer for a while, so a drill can kill a worker while its activities are in flight.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Hit", "Sink"]


@dataclass(frozen=True, slots=True)
class Hit:
    """One request the sink received."""

    key: str
    path: str
    device: str
    step: str
    at: float


class Sink:
    """``with Sink() as sink:`` serves on a free loopback port until the block ends."""

    def __init__(self) -> None:
        self.delay = 0.0
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> Sink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def hits(self) -> list[Hit]:
        with self._lock:
            return list(self._hits)

    def keys_per_device(self) -> dict[str, Counter[str]]:
        """Device -> (idempotency key -> times seen)."""
        out: dict[str, Counter[str]] = {}
        for hit in self.hits():
            out.setdefault(hit.device, Counter())[hit.key] += 1
        return out

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self._hits.append(hit)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body: Any = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                if not isinstance(body, dict):
                    body = {}
                hit = Hit(
                    key=self.headers.get("Idempotency-Key") or "",
                    path=self.path,
                    device=str(body.get("device", "")),
                    step=str(body.get("step", "")),
                    at=time.monotonic(),
                )
                # Logged on arrival: a worker killed while the answer is held still caused the
                # side effect, as a real external system would have seen it.
                sink._record(hit)
                if sink.delay:
                    time.sleep(sink.delay)
                answer = json.dumps({"ok": True}).encode()
                # The caller may have been killed while the answer was held: nobody to answer.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
