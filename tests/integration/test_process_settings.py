"""The settings each long-running process really reads are the ones the drift test assumes.

``tests/unit/test_infra_settings.py`` checks infra/main.bicep against ``PROCESS_SETTINGS``: which
settings models each command reads. That table is the one hand-written link, so here each command
runs as the real ``orchestration`` program (a subprocess) with ``BaseSettings.__init__`` wrapped
to record every settings model it builds, and does its work: the worker executes a run, the API
answers ``/health``, the listener connects to the fake Service Bus. The models recorded must be
exactly the table's: one more (a new reader, like the worker's reconciler of ``ORCH_INGRESS_*``)
or one fewer fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import get_client

from tests.integration.ops_helpers import wait_for
from tests.support.fake_servicebus import Broker, start_broker
from tests.support.infra import REPO_ROOT
from tests.support.postgres import free_port
from tests.unit.test_infra_settings import ALL_MODELS, PROCESS_SETTINGS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Runs the CLI with every settings model's construction recorded, one class name per line.
RECORDING_CLI = """
import os, sys
from pydantic_settings import BaseSettings
seen = set()
original = BaseSettings.__init__
def recording(self, *args, **kwargs):
    name = type(self).__name__
    if name not in seen:
        seen.add(name)
        with open(os.environ["ORCH_TEST_SETTINGS_SEEN"], "a") as out:
            out.write(name + "\\n")
    original(self, *args, **kwargs)
BaseSettings.__init__ = recording
from cli.main import main
sys.argv[0] = "orchestration"
main()
"""

OURS = {model.__name__ for model in ALL_MODELS}
DEFINITION = {
    "name": "settings-probe",
    "version": "1",
    "startAt": "Done",
    "states": {"Done": {"type": "succeed", "output": {"ok": True}}},
}
DEADLINE_SECONDS = 120


def _expected(command: tuple[str, ...]) -> set[str]:
    return {model.__name__ for model in PROCESS_SETTINGS[("orchestration", *command)]}


def _seen(path: Path) -> set[str]:
    names = set(path.read_text().split()) if path.exists() else set()
    return names & OURS


@pytest.fixture
def run_cli(tmp_path: Path) -> Iterator[Any]:
    """Start ``orchestration ARGS`` recording; stopped with SIGTERM (then killed) afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
        seen = tmp_path / f"seen-{len(started)}.txt"
        log = tmp_path / f"process-{len(started)}.log"
        variables = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        variables.update(env)
        variables.update(
            {
                "ORCH_TEST_SETTINGS_SEEN": str(seen),
                "ORCH_OTEL_EXPORTER": "none",
                "ORCH_DB_URL": f"sqlite+aiosqlite:///{tmp_path / 'orchestration.db'}",
                "ORCH_DEFINITIONS_DIRECTORY": str(tmp_path / "definitions"),
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        (tmp_path / "definitions").mkdir(exist_ok=True)
        (tmp_path / "definitions" / "settings-probe.json").write_text(json.dumps(DEFINITION))
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-c", RECORDING_CLI, *args],
                cwd=tmp_path,
                env=variables,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        return process, seen

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


async def _until_recorded(process: subprocess.Popen[bytes], seen: Path, expected: set[str]) -> None:
    async def settled() -> bool | None:
        got = _seen(seen)
        extra = got - expected
        assert not extra, f"reads settings PROCESS_SETTINGS does not list: {sorted(extra)}"
        if process.poll() is not None:
            log = seen.with_name(seen.name.replace("seen", "process").replace(".txt", ".log"))
            raise AssertionError(
                f"exited {process.returncode}, read {sorted(got)}:\n{log.read_text()}"
            )
        return True if got == expected else None

    try:
        await wait_for(settled, deadline_seconds=DEADLINE_SECONDS, what="the settings read")
    except AssertionError as exc:
        missing = sorted(expected - _seen(seen))
        raise AssertionError(f"{exc}\nnot read (yet): {missing}") from None


async def test_the_worker_reads_what_the_table_says(
    prefect_server: Any, run_cli: Any, tmp_path: Path
) -> None:
    deployment = f"settings-probe-{uuid.uuid4().hex[:8]}"
    env = dict(prefect_server.env)
    # The reconciler would otherwise start runs of another test's deployment.
    env["ORCH_INGRESS_DEPLOYMENT"] = f"run-workflow/{deployment}"
    process, seen = run_cli(["worker", "--deployment", deployment, "--concurrency", "2"], env)
    async with get_client() as client:

        async def created() -> Any:
            try:
                return await client.read_deployment_by_name(f"run-workflow/{deployment}")
            except Exception:  # not created yet
                return None

        found = await wait_for(created, deadline_seconds=DEADLINE_SECONDS, what="the deployment")
        run = await client.create_flow_run_from_deployment(
            found.id, parameters={"workflow": "settings-probe", "input": {}}
        )

        async def finished() -> Any:
            state = (await client.read_flow_run(run.id)).state
            return state if state is not None and state.is_final() else None

        state = await wait_for(finished, deadline_seconds=DEADLINE_SECONDS, what="the run to end")
        assert state.is_completed(), state
    await _until_recorded(process, seen, _expected(("worker",)))


async def test_the_api_reads_what_the_table_says(
    prefect_server: Any, run_cli: Any, tmp_path: Path
) -> None:
    port = free_port()
    env = dict(prefect_server.env)
    env["ORCH_API_ALLOW_ANONYMOUS"] = "true"
    process, seen = run_cli(["serve-api", "--host", "127.0.0.1", "--port", str(port)], env)

    async def healthy() -> bool | None:
        try:
            async with httpx.AsyncClient(timeout=5) as http:
                response = await http.get(f"http://127.0.0.1:{port}/health")
        except httpx.TransportError:
            return None
        return True if response.status_code == 200 else None

    await wait_for(healthy, deadline_seconds=DEADLINE_SECONDS, what="the API's /health")
    await _until_recorded(process, seen, _expected(("serve-api",)))


@pytest.fixture
def broker(shared_dir: Path, tmp_path: Path) -> Iterator[Broker]:
    started = start_broker(shared_dir, tmp_path)
    yield started
    started.stop()


async def test_the_listener_reads_what_the_table_says(
    prefect_server: Any, run_cli: Any, broker: Broker
) -> None:
    env = dict(prefect_server.env)
    env["ORCH_SB_CONNECTION_STRING"] = broker.connection_string
    env["ORCH_SB_QUEUE_NAME"] = broker.queue
    process, seen = run_cli(["listen"], env)
    await _until_recorded(process, seen, _expected(("listen",)))
