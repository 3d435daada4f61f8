"""A real Prefect server for the tests, on PostgreSQL, started and stopped by the test session.

Usage: the ``prefect_server`` fixture (conftest) yields a ``PrefectServer``; while it lives, this
process's Prefect settings point at it (``temporary_settings``) and ``.env`` holds what a subprocess
(worker, executor, CLI) needs to talk to it.

``wait_answering``, ``stop_process`` and ``log_tail`` serve every server a test starts as a
subprocess (this one, Prefect's UI in ``tests.support.browser``): wait until a URL answers 200,
stop it, show the end of its log.
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
        stop_process(self.process)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL when it has not ended after 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def log_tail(log_path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a server's log."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {log_path})"


def wait_answering(
    process: subprocess.Popen[bytes], url: str, *, seconds: float, what: str, log_path: Path
) -> None:
    """Return once ``url`` answers 200. When ``process`` ends first, or ``seconds`` pass (then it
    is stopped), raise ``RuntimeError`` naming ``what`` with the end of its log."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    stop_process(process)
    raise RuntimeError(f"{what} did not answer {url} in {seconds:g}s:\n{log_tail(log_path)}")


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
    wait_answering(
        process,
        f"{api_url}/health",
        seconds=HEALTH_DEADLINE_SECONDS,
        what="prefect server",
        log_path=log_path,
    )
    return PrefectServer(api_url, home, process, log_path, env=client_env(api_url, home))
