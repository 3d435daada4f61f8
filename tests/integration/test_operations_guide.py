"""docs/OPERATIONS.md, walked by its own commands: the guide's smoke test, automated.

From a copy of the repository (what a fresh checkout has), on a new PostgreSQL database and the
session's Prefect server (on PostgreSQL, as the guide sets it up), the documented commands run
as subprocesses, in the guide's order:

- 1.5 ``orchestration db migrate``; 1.6 ``prefect work-pool create``, ``prefect deploy --name
  device-workflow --name crash-guard``, ``prefect deployment ls``;
- 1.7 ``orchestration worker`` (the executor) and 1.8 ``orchestration serve-api``, kept running;
- 1.12 the smoke test: the guide's own ``smoke-test.json`` (read from the guide), validated; two
  ``send-event`` calls start and resume a run that completes with the device's payload, read back
  through ``GET /workflows/{id}``; the API's start, status and terminate;
- 1.7 + 1.9: a run started by hand for a device (``prefect deployment run ... device_id``) is the
  device's run: that device's event reaches it instead of starting a second run, and a second
  hand-started run for the device is refused (it fails, naming the run that has the device);
- the default ingress workflow (``device-onboarding``) started by a device event waits for
  ``device.ready`` instead of failing at its first step.

Also here: ``process-dead-letters`` (``prefect deploy --all`` schedules it every 5 minutes)
without a Service Bus ends Completed ``Skipped``, with the reason in its message.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.ops_helpers import wait_for
from tests.support.postgres import PostgresServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
GUIDE = REPO_ROOT / "docs" / "OPERATIONS.md"
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
ORCHESTRATION = str(BIN / "orchestration")
POOL = "orchestration-local"
IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", ".orchestration", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"
)
COMMAND_SECONDS = 180
RUN_SECONDS = 60
_SB_VARIABLES = ("ORCH_SB_CONNECTION_STRING", "ORCH_SB_FULLY_QUALIFIED_NAMESPACE")


def guide_smoke_definition() -> dict[str, Any]:
    """The ``smoke-test.json`` the guide tells the reader to write (1.12)."""
    text = GUIDE.read_text()
    found = re.search(r"cat > definitions/smoke-test\.json <<'EOF'\n(.*?)\nEOF\n", text, re.S)
    assert found, "the guide no longer writes definitions/smoke-test.json"
    document: dict[str, Any] = json.loads(found.group(1))
    return document


@dataclass
class Guide:
    """The reader's terminal: a checkout, its environment and the processes it started."""

    checkout: Path
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen[bytes]]

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            args,
            cwd=self.checkout,
            env={**self.env, **extra},
            capture_output=True,
            text=True,
            timeout=COMMAND_SECONDS,
            check=False,
        )
        assert done.returncode == 0, (
            f"{' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
        return done

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                args, cwd=self.checkout, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"

    def send_event(self, device: str, name: str, *extra: str, **env: str) -> dict[str, Any]:
        done = self.run(ORCHESTRATION, "send-event", device, name, *extra, "-o", "json", **env)
        result: dict[str, Any] = json.loads(done.stdout)
        return result


@pytest.fixture
def guide(prefect_server: Any, postgres: PostgresServer, tmp_path: Path) -> Iterator[Guide]:
    checkout = tmp_path / "orchestration"
    shutil.copytree(REPO_ROOT, checkout, ignore=IGNORED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "PYTEST"))}
    env.update(prefect_server.env)
    env.update(
        {
            # ~/.orchestration-local.env of 1.3, on a database of its own.
            "ORCH_DB_URL": postgres.sqlalchemy_url(postgres.create_database("ops_guide")),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
            "ORCH_API_API_KEYS": json.dumps(["ops-guide-key"]),
            "ORCH_DB_POOL_SIZE": "2",
            "ORCH_DB_MAX_OVERFLOW": "2",
            "ORCH_OTEL_EXPORTER": "none",
            "PREFECT_LOGGING_LEVEL": "INFO",
        }
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    started = Guide(checkout, env, logs, [])
    try:
        yield started
    finally:
        for process in started.processes:
            if process.poll() is None:
                process.terminate()
        for process in started.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


async def test_the_guide_from_nothing_to_a_completed_smoke_test(guide: Guide) -> None:
    # 1.5 and 1.6: schema, pool, the two local deployments.
    migrated = guide.run(ORCHESTRATION, "db", "migrate")
    assert migrated.stdout.strip()
    guide.run(PREFECT, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    guide.run(
        PREFECT, "deploy", "--name", "device-workflow", "--name", "crash-guard", "--no-prompt"
    )
    listed = guide.run(PREFECT, "deployment", "ls").stdout
    assert "run-workflow/device-workflow" in listed
    assert "crash-guard/crash-guard" in listed

    # 1.7 and 1.8: the executor and the API, running.
    worker = guide.start("worker", ORCHESTRATION, "worker", "--concurrency", "10")
    port = free_port()
    api = guide.start("api", ORCHESTRATION, "serve-api", "--host", "127.0.0.1", "--port", str(port))
    headers = {"X-API-Key": "ops-guide-key"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

        async def healthy() -> dict[str, Any] | None:
            assert api.poll() is None, guide.log("api")
            assert worker.poll() is None, guide.log("worker")
            try:
                answer = await http.get("/health")
            except httpx.TransportError:
                return None
            return answer.json() if answer.status_code == 200 else None

        health = await wait_for(healthy, deadline_seconds=90, what="the API's /health")
        assert health == {"status": "ok", "prefect": True}

        async def ended(run_id: str) -> dict[str, Any]:
            async def probe() -> dict[str, Any] | None:
                answer = await http.get(f"/workflows/{run_id}", headers=headers)
                assert answer.status_code == 200, answer.text
                body: dict[str, Any] = answer.json()
                if body["status"] in {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}:
                    return body
                return None

            try:
                return await wait_for(probe, deadline_seconds=RUN_SECONDS, what=f"run {run_id}")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{guide.log('worker')}") from None

        async def waiting(run_id: str) -> dict[str, Any]:
            async def probe() -> dict[str, Any] | None:
                body: dict[str, Any] = (
                    await http.get(f"/workflows/{run_id}", headers=headers)
                ).json()
                assert body["status"] not in {"FAILED", "CRASHED"}, body
                return body if body["status"] == "PAUSED" else None

            return await wait_for(probe, deadline_seconds=RUN_SECONDS, what=f"{run_id} to wait")

        # 1.12: the guide's smoke-test workflow, through a device's events.
        definition = guide.checkout / "definitions" / "smoke-test.json"
        definition.write_text(json.dumps(guide_smoke_definition(), indent=2))
        guide.run(ORCHESTRATION, "validate", "definitions/smoke-test.json")
        device = f"dev-smoke-{uuid.uuid4().hex[:8]}"
        first = guide.send_event(device, "device.hello", ORCH_INGRESS_WORKFLOW="smoke-test")
        assert first["action"] == "started", first
        run_id = first["runId"]
        await waiting(run_id)
        second = guide.send_event(
            device,
            "device.ready",
            "--payload",
            '{"battery": 97}',
            ORCH_INGRESS_WORKFLOW="smoke-test",
        )
        assert (second["action"], second["runId"]) == ("resumed", run_id), second
        done = await ended(run_id)
        assert done["status"] == "COMPLETED", done
        assert done["output"] == {"ready": {"battery": 97}}
        assert [step["state"] for step in done["trail"]] == ["WaitReady", "Done"]

        # The API's own start, status and terminate.
        started = await http.post(
            "/workflows",
            headers=headers,
            json={"workflowType": "smoke-test", "instanceId": f"smoke-api-{uuid.uuid4().hex[:8]}"},
        )
        assert started.status_code == 202, started.text
        instance = started.json()["instanceId"]
        status = (await http.get(f"/workflows/{instance}", headers=headers)).json()
        assert status["status"] in {"SCHEDULED", "PENDING", "RUNNING", "PAUSED"}, status
        await waiting(instance)
        terminated = await http.delete(f"/workflows/{instance}", headers=headers)
        assert terminated.status_code == 200, terminated.text
        assert (await ended(instance))["status"] == "CANCELLED"

        # 1.7 + 1.9: a run started by hand for a device is that device's run.
        device = f"dev-hand-{uuid.uuid4().hex[:8]}"
        by_hand = [
            PREFECT, "deployment", "run", "run-workflow/device-workflow",
            "--param", "workflow=smoke-test", "--param", f"device_id={device}",
        ]  # fmt: skip
        hand = guide.run(*by_hand).stdout
        found = re.search(r"UUID:\s*([0-9a-f-]{36})", hand)
        assert found, hand
        hand_run = found.group(1)
        await waiting(hand_run)
        # A second run for the device, by hand: refused, the first one named.
        refused = re.search(r"UUID:\s*([0-9a-f-]{36})", guide.run(*by_hand).stdout)
        assert refused
        failed = await ended(refused.group(1))
        assert failed["status"] == "FAILED", failed
        assert f"device {device} already has run {hand_run}" in (failed["stateMessage"] or "")
        event = guide.send_event(device, "device.ready", "--payload", '{"battery": 12}')
        assert (event["action"], event["runId"]) == ("resumed", hand_run), event
        done = await ended(hand_run)
        assert (done["status"], done["output"]) == ("COMPLETED", {"ready": {"battery": 12}})

        # The default ingress workflow, started by an event: it waits for device.ready.
        device = f"dev-onboard-{uuid.uuid4().hex[:8]}"
        hello = guide.send_event(device, "device.hello", "--payload", '{"firmware": "1.4.2"}')
        assert hello["action"] == "started", hello
        onboarding = await waiting(hello["runId"])
        assert "waiting at WaitForDeviceReady for event 'device.ready'" in (
            onboarding["stateMessage"] or ""
        )


async def test_dead_letters_without_a_service_bus_end_completed_skipped(
    prefect_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from listeners.deadletters import NO_SERVICE_BUS, process_dead_letters

    for name in _SB_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    state = await process_dead_letters(return_state=True)
    assert state.is_completed(), state
    assert (state.name, state.message) == ("Skipped", NO_SERVICE_BUS)


def test_the_default_ingress_workflow_runs_on_what_the_router_gives_it() -> None:
    """``device-onboarding`` on the input a device event starts it with (``input.event`` only,
    as ``listeners.router`` builds it) reaches its end instead of failing at its first step."""
    from datetime import UTC, datetime

    from interpreter.loader import load_definition
    from interpreter.simulate import Mocks, simulate
    from listeners.events import IncomingEvent

    repo_mocks = json.loads(
        (REPO_ROOT / "definitions" / "mocks" / "device-onboarding.mocks.json").read_text()
    )
    event = IncomingEvent(
        device_id="dev-1",
        event_id="e-1",
        name="device.hello",
        payload={},
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
        received_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    repo_mocks["input"] = {"event": event.as_input()}
    definition = load_definition((REPO_ROOT / "definitions" / "device-onboarding.json").read_text())
    result = simulate(definition, Mocks.model_validate(repo_mocks))
    assert result.status == "succeeded", [(e.path, e.outcome) for e in result.trail]


def test_a_caught_failure_keeps_its_error_and_cause_in_the_runs_message() -> None:
    """A step's failure caught into a compensation that had nothing to undo (event-started
    ``device-onboarding`` before this fix) ended with the compensation's error alone: the
    ``States.PathNotFound`` and its path were nowhere in the run's message."""
    from flows.workflow import WorkflowFailedError

    cause = "path '$.input.model' matched nothing in state 'CreateOnboardingRecord'"
    error = WorkflowFailedError(
        "CreateOnboardingRecord",
        "OnboardingFailed",
        "onboarding did not complete",
        origin=("CreateOnboardingRecord", "States.PathNotFound", cause),
    )
    assert str(error) == (
        f"CreateOnboardingRecord failed (States.PathNotFound: {cause}); "
        "ended CreateOnboardingRecord: OnboardingFailed: onboarding did not complete"
    )
    # A failure that is its own end says it once.
    alone = WorkflowFailedError("S", "E", "why", origin=("S", "E", "why"))
    assert str(alone) == "S: E: why"
