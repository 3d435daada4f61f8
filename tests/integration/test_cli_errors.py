"""Services out of reach, as the real ``orchestration`` command meets them: one line that names
the database or the Prefect API (password masked) and exit 1, never a traceback.

"Out of reach" is a real refused connection: a free local port that nothing listens on.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.postgres import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 120
_CLEARED = ("ORCH_DB_URL", "ORCH_EMBEDDED", "ORCH_SB_CONNECTION_STRING", "PREFECT_API_URL")


def orchestration(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    environ.update({"ORCH_OTEL_EXPORTER": "none", **env})
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )


def _closed_database() -> str:
    return f"postgresql+asyncpg://app:db-pass-42@127.0.0.1:{free_port()}/app"


def _closed_prefect() -> str:
    return f"http://127.0.0.1:{free_port()}/api"


def _last_error(done: subprocess.CompletedProcess[str], *, at_most: int = 2) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert 1 <= len(lines) <= at_most, done.stderr
    assert lines[-1].startswith("error: "), done.stderr
    return lines[-1]


def test_send_event_with_the_database_out_of_reach() -> None:
    done = orchestration(
        "send-event",
        "dev-1",
        "boot",
        ORCH_DB_URL=_closed_database(),
        PREFECT_API_URL=_closed_prefect(),
    )

    assert done.returncode == 1
    line = _last_error(done)
    assert line.startswith("error: cannot reach the database postgresql+asyncpg://app:***@")
    assert "db-pass-42" not in done.stderr


def test_worker_with_the_prefect_api_out_of_reach() -> None:
    api = _closed_prefect()

    done = orchestration("worker", ORCH_DB_URL="sqlite+aiosqlite:///x.db", PREFECT_API_URL=api)

    assert done.returncode == 1
    assert _last_error(done).startswith(f"error: cannot reach the Prefect API at {api}: ")


def test_orch_embedded_lets_the_worker_start_on_the_embedded_database() -> None:
    api = _closed_prefect()

    done = orchestration("worker", ORCH_EMBEDDED="true", PREFECT_API_URL=api)

    # Past the database check: it stops at the next thing it needs, the Prefect API.
    assert done.returncode == 1
    assert _last_error(done).startswith(f"error: cannot reach the Prefect API at {api}: ")


@pytest.mark.parametrize("args", [["automations", "list"], ["automations", "apply"]])
def test_automations_with_the_prefect_api_out_of_reach(args: list[str]) -> None:
    api = _closed_prefect()

    done = orchestration(*args, PREFECT_API_URL=api)

    assert done.returncode == 1
    assert _last_error(done).startswith(f"error: cannot reach the Prefect API at {api}: ")


def test_serve_api_with_the_database_out_of_reach() -> None:
    done = orchestration(
        "serve-api",
        "--port",
        str(free_port()),
        ORCH_DB_URL=_closed_database(),
        PREFECT_API_URL=_closed_prefect(),
        ORCH_API_ALLOW_ANONYMOUS="true",
    )

    assert done.returncode == 1
    # uvicorn's own JSON lines (started, startup failed) come first; ours is the last.
    line = _last_error(done, at_most=4)
    assert line.startswith("error: cannot reach the database postgresql+asyncpg://app:***@")
    assert "db-pass-42" not in done.stderr


def test_deadletters_process_with_service_bus_out_of_reach() -> None:
    port = free_port()
    connection = (
        f"Endpoint=sb://127.0.0.1:{port}/;SharedAccessKeyName=k;SharedAccessKey=sb-key-42;"
        "UseDevelopmentEmulator=true;"
    )

    done = orchestration("deadletters", "process", ORCH_SB_CONNECTION_STRING=connection)

    assert done.returncode == 1
    # The processor's own log line of the stopped pass, then ours.
    line = _last_error(done)
    assert line.startswith(f"error: cannot reach Service Bus at sb://127.0.0.1:{port}/: ")
    assert "sb-key-42" not in done.stderr
