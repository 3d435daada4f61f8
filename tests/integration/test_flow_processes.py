"""The flow's processes on a real Prefect server (PostgreSQL): ``orchestration worker`` (the
in-process executor) drains its runs on SIGTERM and exits 0, and ``orchestration run`` executes a
definition end to end, delivering ``--event``s, with exit code 0 on success and 1 on failure."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_flow_harness import RUNTIME_DEFINITIONS, flow_database_url

__all__ = ["flow_database_url"]

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 90.0


def _env(prefect_server: Any, database_url: str) -> dict[str, str]:
    env = {**os.environ, **prefect_server.env}
    # The in-process harness (flow_system) sets it for its own runs; a CLI process starts clean.
    env.pop("ORCH_DEFINITIONS_DIRECTORY", None)
    env.update(
        {
            "ORCH_DB_URL": database_url,
            "PYTHONPATH": str(REPO),
            "ORCH_OTEL_EXPORTER": "none",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
    )
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


async def _wait_for(what: str, probe: Any, deadline: float = DEADLINE) -> Any:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {deadline}s")


class _Hold:
    """A local HTTP endpoint whose GET blocks until ``release`` is set: a run calling it is in
    flight for as long as the test decides."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        hold = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hold.arrived.set()
                released = hold.release.wait(DEADLINE)
                body = json.dumps({"released": released}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hold"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


async def test_worker_drains_a_run_in_flight_on_sigterm_and_exits_0(
    prefect_server: Any, flow_database_url: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = f"drain-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path / "worker.log"
    log = log_path.open("wb")
    hold = _Hold()
    env = _env(prefect_server, flow_database_url)
    # The run's Hold state calls the local endpoint: loopback must be allowed in the worker.
    env.update({"ORCH_HTTP_ALLOW_LOOPBACK": "true", "ORCH_HTTP_ALLOWED_HOSTS": '["127.0.0.1"]'})
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is awaited
        _cli("worker", "--deployment", name, "--concurrency", "5"),
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with get_client() as client:

            async def deployment() -> Any:
                try:
                    return await client.read_deployment_by_name(f"run-workflow/{name}")
                except ObjectNotFound:
                    return None

            found = await _wait_for("the worker registers its deployment", deployment)
            path = RUNTIME_DEFINITIONS / "drain.json"
            flow_run = await client.create_flow_run_from_deployment(
                found.id,
                parameters={"workflow": str(path), "input": {"kind": name, "holdUrl": hold.url}},
            )
            # In flight, deterministically: the run is inside Hold until the test releases it.
            assert await asyncio.to_thread(hold.arrived.wait, DEADLINE), log_path.read_text()
            process.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                return "SIGTERM: no new runs; draining 1 in flight" in log_path.read_text()

            await _wait_for("the worker acknowledges SIGTERM", draining)
            assert process.poll() is None  # still draining: the run is held
            hold.release.set()
            code = await asyncio.to_thread(process.wait, DEADLINE)

            final = await client.read_flow_run(flow_run.id)
        assert code == 0, log_path.read_text()
        assert final.state is not None and final.state.is_completed(), final.state
        output = await final.state.aresult()
        assert output == {"first": {"step": 1}, "held": {"released": True}, "second": {"step": 2}}
        assert "stopped:" in log_path.read_text()
    finally:
        hold.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _run_cli(
    prefect_server: Any, database_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _cli(*args),
        env=_env(prefect_server, database_url),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=DEADLINE * 2,
        check=False,
    )


async def test_cli_run_delivers_events_and_prints_json(
    prefect_server: Any, flow_database_url: str
) -> None:
    result = await asyncio.to_thread(
        _run_cli,
        prefect_server,
        flow_database_url,
        "run",
        str(RUNTIME_DEFINITIONS / "cli-event.json"),
        "--input",
        json.dumps({"model": "TX-200"}),
        "--event",
        'device.ready={"firmware": "2.1"}',
        "--output",
        "json",
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "succeeded"
    assert summary["result"] == {"model": "TX-200", "ready": {"firmware": "2.1"}}
    assert [entry["path"] for entry in summary["trail"]][:1] == ["WaitReady"]
    assert summary["url"].endswith(f"/runs/flow-run/{summary['runId']}")


async def test_cli_run_of_a_failing_definition_exits_1(
    prefect_server: Any, flow_database_url: str
) -> None:
    result = await asyncio.to_thread(
        _run_cli,
        prefect_server,
        flow_database_url,
        "run",
        str(RUNTIME_DEFINITIONS / "cli-fail.json"),
        "--output",
        "json",
    )

    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == "failed"
    assert "Cli.Broken" in summary["error"]


async def test_cli_run_of_an_invalid_definition_outside_the_repo_reports_why(
    prefect_server: Any, flow_database_url: str, tmp_path: Path
) -> None:
    # A file outside the working directory is the user's choice: it is read and validated, and
    # its problem is named (not DefinitionPathError), before any run is created.
    path = tmp_path / "broken.json"
    state = {"type": "succeed", "bogusField": 1}
    document = {"name": "rt-broken", "version": "1", "startAt": "A", "states": {"A": state}}
    path.write_text(json.dumps(document))
    result = await asyncio.to_thread(
        _run_cli, prefect_server, flow_database_url, "run", str(path), "--output", "json"
    )

    assert result.returncode == 1, result.stderr
    assert result.stdout == ""  # refused: no run, no summary
    assert "DefinitionPathError" not in result.stderr, result.stderr
    assert "bogusField" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
