"""The image's HEALTHCHECK script (infra/image/healthcheck.py) against a real HTTP server.

It picks the endpoint from the command line of the container's first process: the API's
``/health``, the Prefect server's ``/api/health``, nothing for the processes without one.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.infra import INFRA


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", INFRA / "image" / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = _load()


class _Health(BaseHTTPRequestHandler):
    status = 200
    seen: list[str] = []

    def do_GET(self) -> None:
        _Health.seen.append(self.path)
        self.send_response(_Health.status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    _Health.seen = []
    _Health.status = 200
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()


def _cmdline(tmp_path: Path, *argv: str) -> Path:
    path = tmp_path / "cmdline"
    path.write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    return path


def test_the_api_is_asked_for_health_and_a_failure_is_unhealthy(
    server: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_API_PORT", str(server))
    cmdline = _cmdline(tmp_path, "/opt/venv/bin/python", "/opt/venv/bin/orchestration", "serve-api")
    assert healthcheck.main(cmdline) == 0
    assert _Health.seen == ["/health"]
    _Health.status = 503
    assert healthcheck.main(cmdline) == 1


def test_the_prefect_server_is_asked_on_its_own_path(
    server: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_SERVER_API_PORT", str(server))
    assert healthcheck.main(_cmdline(tmp_path, "prefect", "server", "start")) == 0
    assert _Health.seen == ["/api/health"]


def test_a_process_without_an_endpoint_passes_and_nothing_listening_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert healthcheck.main(_cmdline(tmp_path, "orchestration", "listen")) == 0
    assert healthcheck.main(_cmdline(tmp_path, "prefect", "worker", "start")) == 0
    monkeypatch.setenv("ORCH_API_PORT", "1")  # nothing listens on port 1
    assert healthcheck.main(_cmdline(tmp_path, "orchestration", "serve-api")) == 1
