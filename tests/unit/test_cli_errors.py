"""Known failures of the real ``orchestration`` command: one line that says what and where, the
documented exit code, no traceback. Files that never end (``/dev/zero``) or never open (a FIFO)
are refused from what they are; the subprocess timeout is the deadline that proves it.

Nothing here needs a server: each failure is found before one would be contacted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Long enough for a cold interpreter to import Prefect on a loaded machine, far shorter than the
#: hang it guards against.
DEADLINE_SECONDS = 60

#: The variables a developer's shell may hold that would change what these commands see.
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


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The single ``error:`` line on stderr (no traceback, nothing else)."""
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "definition.json"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("command", ["validate", "graph", "explain"])
def test_a_device_file_is_refused_at_once(command: str) -> None:
    done = orchestration(command, "/dev/zero")

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "/dev/zero is a character device, not a regular file" in done.stdout + done.stderr


@pytest.mark.parametrize("command", ["validate", "graph", "explain"])
def test_a_fifo_is_refused_without_waiting_for_a_writer(command: str, fifo: Path) -> None:
    done = orchestration(command, str(fifo))

    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"{fifo} is a FIFO (named pipe), not a regular file" in done.stdout + done.stderr


def test_run_of_a_file_that_is_not_json_is_one_line_before_any_server_starts() -> None:
    done = orchestration("run", "/etc/passwd")

    assert done.returncode == 1
    line = one_error_line(done)
    assert line.startswith("error: /etc/passwd is not a JSON definition: not valid JSON")
    assert "Prefect server" not in done.stdout  # refused before one was started


@pytest.mark.parametrize("path", ["/dev/zero", "FIFO"])
def test_run_of_a_device_or_fifo_is_one_line(path: str, fifo: Path) -> None:
    target = str(fifo) if path == "FIFO" else path

    done = orchestration("run", target)

    assert done.returncode == 1
    assert "not a regular file" in one_error_line(done)


@pytest.mark.parametrize(
    ("args", "env", "variable"),
    [
        (["send-event", "dev-1", "boot"], {"ORCH_DB_POOL_SIZE": "many"}, "ORCH_DB_POOL_SIZE"),
        (
            ["worker"],
            {"ORCH_DB_URL": "sqlite+aiosqlite:///x.db", "ORCH_DB_POOL_SIZE": "many"},
            "ORCH_DB_POOL_SIZE",
        ),
        (["serve-api", "--embedded"], {"ORCH_API_PORT": "eighty"}, "ORCH_API_PORT"),
        (
            ["listen", "--embedded"],
            {"ORCH_SB_CONNECTION_STRING": "Endpoint=sb://x/", "ORCH_SB_RECEIVE_BATCH": "0"},
            "ORCH_SB_RECEIVE_BATCH",
        ),
        (
            ["automations", "apply"],
            {"ORCH_ALERTS_THRESHOLD_HOURS": "soon"},
            "--threshold-hours / ORCH_ALERTS_THRESHOLD_HOURS",
        ),
    ],
    ids=["send-event", "worker", "serve-api", "listen", "automations"],
)
def test_a_malformed_setting_is_one_line_naming_it_exit_2(
    args: list[str], env: dict[str, str], variable: str
) -> None:
    done = orchestration(*args, **env)

    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert f"{variable}: " in line
    assert "many" not in line and "eighty" not in line and "soon" not in line  # no value
    assert "Prefect server" not in done.stdout


@pytest.mark.parametrize("command", ["worker", "listen", "serve-api"])
def test_a_long_running_process_refuses_to_start_without_a_database_setting(command: str) -> None:
    env = {"ORCH_SB_CONNECTION_STRING": "Endpoint=sb://x/"} if command == "listen" else {}

    done = orchestration(command, **env)

    assert done.returncode == 2, done.stderr
    line = one_error_line(done)
    assert "ORCH_DB_URL" in line and "--embedded" in line and "ORCH_EMBEDDED=true" in line


@pytest.mark.parametrize("command", ["worker", "listen", "serve-api"])
def test_help_says_the_database_setting_is_required(command: str) -> None:
    done = orchestration(command, "--help", COLUMNS="200")

    assert done.returncode == 0
    assert "--embedded" in done.stdout
    assert "ORCH_EMBEDDED" in done.stdout
    assert "ORCH_DB_URL" in done.stdout
