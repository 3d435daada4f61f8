"""A real Prefect server for the tests, on PostgreSQL, started and stopped by the test session.

Usage: the ``prefect_server`` fixture (conftest) yields a ``PrefectServer``; while it lives, this
process's Prefect settings point at it (``temporary_settings``) and ``.env`` holds what a subprocess
(worker, executor, CLI) needs to talk to it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.postgres import PostgresServer, free_port

HEALTH_DEADLINE_SECONDS = 120


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def client_env(api_url: str, home: Path) -> dict[str, str]:
    """Settings every Prefect client process of the tests shares."""
    return {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }


def start_prefect_server(postgres: PostgresServer | None) -> PrefectServer:
    """Start ``prefect server start`` on a free port; on PostgreSQL when given, else SQLite."""
    home = Path(tempfile.mkdtemp(prefix="orch-prefect-"))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update(client_env(api_url, home))
    env.pop("PREFECT_API_URL", None)  # the server itself must not think it is a client of another
    env["PREFECT_UI_ENABLED"] = "false"
    env["PREFECT_SERVER_UI_ENABLED"] = "false"
    env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL"] = "0.5"
    env["PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED"] = "false"
    if postgres is not None:
        database = postgres.create_database("prefect")
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = postgres.sqlalchemy_url(database)
    log_path = home / "server.log"
    log = log_path.open("wb")
    prefect_bin = str(Path(sys.executable).with_name("prefect"))
    process = subprocess.Popen(
        [prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = PrefectServer(api_url, home, process, log_path, env=client_env(api_url, home))
    deadline = time.monotonic() + HEALTH_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prefect server exited early:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(
        f"prefect server not healthy in {HEALTH_DEADLINE_SECONDS}s:\n{server.log_tail()}"
    )
