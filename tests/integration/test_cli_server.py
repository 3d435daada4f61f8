"""``orchestration server start | stop | status`` and its reuse by ``run``.

Every command runs as a subprocess in a temporary working directory (the local state directory
``.orchestration/`` is relative to it) with ``HOME`` there too and no ``PREFECT_*``/``ORCH_*``
variables, so a user's own state and Prefect profile are never touched. Reuse is proved from the
outside: the same pid and URL before and after two runs, no server started by either, and each
run read back from that server with the Prefect client. Wall times of ``run`` on the reused server
and on its own embedded one are printed (``-s``), not asserted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEFINITION = REPO / "tests" / "fixtures" / "definitions" / "valid" / "succeed-output.json"
RUN_INPUT = '{"id": 1, "a": 2}'
#: A cold interpreter importing Prefect, or a first server start with its migrations, on a loaded
#: machine.
DEADLINE_SECONDS = 240


class Workspace:
    """A working directory with its own ``.orchestration/`` and ``HOME``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_file = root / ".orchestration" / "server.json"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ORCH_"))}
        self.env.update({"PYTHONPATH": str(REPO), "ORCH_OTEL_EXPORTER": "none", "HOME": str(root)})

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli.main", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=DEADLINE_SECONDS,
            check=False,
        )

    def cli_json(self, *args: str, code: int = 0) -> dict[str, Any]:
        done = self.cli(*args, "--output", "json")
        assert done.returncode == code, done.stdout + done.stderr
        data = json.loads(done.stdout)
        assert isinstance(data, dict)
        return data

    def recorded_pid(self) -> int | None:
        try:
            return int(json.loads(self.state_file.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return None


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Workspace]:
    space = Workspace(tmp_path)
    yield space
    # A failed test must not leave its server running: stop it, or kill the pid it recorded.
    pid = space.recorded_pid()
    if pid is not None:
        space.cli("server", "stop", "--timeout", "10")
        if space.recorded_pid() is not None:
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rpartition(")")[2].split()[0] == "Z")


def _wait_gone(pid: int, deadline: float = 30.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _timed_run(space: Workspace) -> tuple[float, subprocess.CompletedProcess[str]]:
    began = time.monotonic()
    done = space.cli("run", str(DEFINITION), "--input", RUN_INPUT, "--output", "json")
    return time.monotonic() - began, done


async def _read_runs(api_url: str, run_ids: list[str]) -> dict[str, str]:
    """Each run's state as the given server has it."""
    from prefect.client.orchestration import PrefectClient

    states = {}
    async with PrefectClient(api=api_url) as client:
        for run_id in run_ids:
            flow_run = await client.read_flow_run(uuid.UUID(run_id))
            states[run_id] = flow_run.state.type.value if flow_run.state else "none"
    return states


async def test_start_reuse_stop_and_fall_back(workspace: Workspace) -> None:
    before = await asyncio.to_thread(workspace.cli, "server", "status")
    assert before.returncode == 1, before.stdout + before.stderr
    assert "not running" in before.stdout

    started = await asyncio.to_thread(workspace.cli_json, "server", "start", "--port", "0", code=0)
    again = await asyncio.to_thread(workspace.cli_json, "server", "start", code=0)
    status = await asyncio.to_thread(workspace.cli_json, "server", "status", code=0)

    assert (started["status"], started["started"]) == ("running", True)
    assert (again["started"], again["pid"], again["url"]) == (False, started["pid"], started["url"])
    assert (status["status"], status["pid"]) == ("running", started["pid"])
    assert status["apiUrl"] == started["url"] + "/api"
    assert status["home"] == str(workspace.root / ".orchestration" / "prefect")
    assert workspace.recorded_pid() == started["pid"]

    reused = []
    for _ in range(2):
        seconds, done = await asyncio.to_thread(_timed_run, workspace)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "starting a local Prefect server" not in done.stdout + done.stderr
        reused.append((seconds, json.loads(done.stdout)))
    after = await asyncio.to_thread(workspace.cli_json, "server", "status", code=0)

    assert (after["pid"], after["url"]) == (started["pid"], started["url"])
    run_ids = [summary["runId"] for _, summary in reused]
    assert len(set(run_ids)) == 2
    for _, summary in reused:
        assert summary["status"] == "succeeded", summary
        # The server still answers, so the link is given (an embedded one gives none).
        assert summary["url"] == f"{started['url']}/runs/flow-run/{summary['runId']}"
    states = await _read_runs(status["apiUrl"], run_ids)
    assert states == dict.fromkeys(run_ids, "COMPLETED")
    # The app's embedded database is the one the commands always use.
    assert (workspace.root / ".orchestration" / "orchestration.db").is_file()

    stopped = await asyncio.to_thread(workspace.cli_json, "server", "stop", code=0)
    gone = await asyncio.to_thread(_wait_gone, int(started["pid"]))
    after_stop = await asyncio.to_thread(workspace.cli, "server", "status")

    assert (stopped["status"], stopped["pid"]) == ("stopped", started["pid"])
    assert gone, f"pid {started['pid']} still alive after stop"
    assert not workspace.state_file.exists()
    assert after_stop.returncode == 1, after_stop.stdout + after_stop.stderr
    assert "not running" in after_stop.stdout

    # No server recorded: `run` starts and stops its own, as before, and gives no dead link.
    seconds, done = await asyncio.to_thread(_timed_run, workspace)
    assert done.returncode == 0, done.stdout + done.stderr
    embedded = json.loads(done.stdout)
    assert embedded["url"] is None
    assert "orchestration server start" in embedded["view"]

    # ... on the same Prefect database: a server started again sees all three runs.
    restarted = await asyncio.to_thread(
        workspace.cli_json, "server", "start", "--port", "0", code=0
    )
    every = await _read_runs(restarted["apiUrl"], [*run_ids, embedded["runId"]])
    assert set(every.values()) == {"COMPLETED"}
    await asyncio.to_thread(workspace.cli_json, "server", "stop", code=0)

    print(
        "\nrun wall time: reused server "
        + ", ".join(f"{s:.1f}s" for s, _ in reused)
        + f"; own embedded server {seconds:.1f}s"
    )


def _state(space: Workspace, pid: int, port: int = 9) -> None:
    space.state_file.parent.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    space.state_file.write_text(
        json.dumps(
            {
                "url": url,
                "apiUrl": f"{url}/api",
                "pid": pid,
                "home": str(space.root / ".orchestration" / "prefect"),
                "database": "sqlite+aiosqlite:///prefect.db",
                "log": "server.log",
                "startedAt": "2026-01-01T00:00:00+00:00",
            }
        )
    )


def test_a_state_file_whose_pid_is_gone_is_removed(workspace: Workspace) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=DEADLINE_SECONDS)
    _state(workspace, dead.pid)

    data = workspace.cli_json("server", "status", code=1)

    assert (data["status"], data["removedStale"], data["pid"]) == ("not running", True, dead.pid)
    assert not workspace.state_file.exists()


def test_a_reused_pid_is_neither_trusted_nor_signalled(workspace: Workspace) -> None:
    # The recorded pid now belongs to another program: not our server, never killed.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _state(workspace, other.pid)
        stopped = workspace.cli("server", "stop")
        _state(workspace, other.pid)
        status = workspace.cli("server", "status")

        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert "stale" in stopped.stdout
        assert status.returncode == 1, status.stdout + status.stderr
        assert not workspace.state_file.exists()
        assert other.poll() is None  # still running: stop did not signal it
    finally:
        other.kill()
        other.wait(timeout=30)


def test_garbage_in_the_state_file_is_removed(workspace: Workspace) -> None:
    workspace.state_file.parent.mkdir(parents=True)
    workspace.state_file.write_text("{not json")

    done = workspace.cli("server", "status")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert not workspace.state_file.exists()
