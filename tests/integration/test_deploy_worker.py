"""From a copy of the repository: ``prefect deploy --all --no-prompt`` against the test server, a
``prefect worker start`` subprocess picks up a run of ``run-workflow/device-workflow``, and the
workflow completes. The worker is stopped with SIGTERM twice (it ignores the first)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.objects import StateType

from tests.integration.ops_helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
POOL = "orchestration-local"
AZURE_POOL = "orchestration-aci"
PREFECT = str(Path(sys.executable).with_name("prefect"))
IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", ".orchestration", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"
)
SMOKE_DEFINITION = {
    "name": "ops-smoke",
    "version": "1.0.0",
    "startAt": "Done",
    "states": {"Done": {"type": "succeed", "output": {"deployed": True}}},
}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The repository as a fresh checkout would have it (plus a one-state definition)."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO_ROOT, copy, ignore=IGNORED)
    (copy / "definitions" / "ops-smoke.json").write_text(json.dumps(SMOKE_DEFINITION))
    return copy


@pytest.fixture
def env(prefect_server: Any, tmp_path: Path) -> dict[str, str]:
    values = dict(os.environ)
    values.update(prefect_server.env)
    values["ORCH_DB_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'orchestration.db'}"
    values["PREFECT_WORKER_QUERY_SECONDS"] = "1"
    values["PYTHONPATH"] = ""  # the deployment's working directory must be enough
    return values


@pytest.fixture
def worker_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def _start_worker(log_path: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Started outside the repository: the run must find its code through the deployment.
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def test_deploy_all_then_a_worker_runs_a_workflow_to_completion(
    checkout: Path, env: dict[str, str], worker_processes: list[subprocess.Popen[bytes]]
) -> None:
    async with get_client() as client:
        # Deploying to a pool that does not exist creates nothing: create it first.
        created = _run([PREFECT, "work-pool", "create", POOL, "--type", "process"], checkout, env)
        assert created.returncode == 0, created.stdout + created.stderr
        # --all includes the Azure variants: their pool must be registered too (nothing runs it).
        azure = [PREFECT, "work-pool", "create", AZURE_POOL, "--type", "azure-container-instance"]
        created = _run([*azure, "--overwrite"], checkout, env)
        assert created.returncode == 0, created.stdout + created.stderr
        deployed = _run([PREFECT, "deploy", "--all", "--no-prompt"], checkout, env)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        # Every deployment prefect.yaml declares for the local pool exists now.
        declared = [
            d
            for d in yaml.safe_load((checkout / "prefect.yaml").read_text())["deployments"]
            if d["work_pool"]["name"] == POOL
        ]
        assert declared
        on_pool = {d.name for d in await client.read_deployments() if d.work_pool_name == POOL}
        assert {d["name"] for d in declared} <= on_pool

        deployment = await client.read_deployment_by_name("run-workflow/device-workflow")
        assert deployment.work_pool_name == POOL
        assert deployment.entrypoint == "flows/workflow.py:run_workflow"
        # The resumer is the worker's loop, not a scheduled deployment (flows/timers.py).
        assert not [d for d in declared if d["entrypoint"].startswith("flows/timers.py")]

        log_path = checkout.parent / "worker.log"
        worker = _start_worker(log_path, checkout.parent, env)
        worker_processes.append(worker)

        run = await client.create_flow_run_from_deployment(
            deployment.id,
            parameters={"workflow": "ops-smoke", "input": {"k": uuid.uuid4().hex}},
        )

        async def finished() -> Any:
            state = (await client.read_flow_run(run.id)).state
            return state if state is not None and state.is_final() else None

        try:
            state = await wait_for(finished, deadline_seconds=240, what="the workflow run to end")
        except AssertionError:
            raise AssertionError(log_path.read_text()[-4000:]) from None
        assert state.type == StateType.COMPLETED, f"{state}\n{log_path.read_text()[-4000:]}"
        assert await state.result() == {"deployed": True}
        final = await client.read_flow_run(run.id)
        assert final.infrastructure_pid is not None  # a worker process ran it

        # The worker ignores the first SIGTERM more often than not; the second stops it.
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        assert worker.returncode is not None
