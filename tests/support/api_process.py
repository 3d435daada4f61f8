"""The management API as ``orchestration serve-api`` runs it: a subprocess on 127.0.0.1, with its
own copy of ``definitions/``, against the session's real Prefect server, for tests that speak
real HTTP (and raw sockets) to it.

``workflow_deployment()`` creates a deployment of the real workflow flow with no worker (its runs
stay Scheduled); ``serve_api(workdir, ...)`` starts the API, waits until ``/health`` answers 200
and stops it on exit; ``app_env(workdir)`` is the environment the API and a run it started share
(definitions, pinned store, database), for a test that executes such a run itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support.postgres import free_port

__all__ = ["ApiProcess", "app_env", "serve_api", "workflow_deployment"]

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 60


@dataclass(frozen=True)
class ApiProcess:
    base_url: str
    host: str
    port: int
    key: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def workflow_deployment(prefix: str = "api") -> str:
    """``run-workflow/<name>``: a new deployment of the workflow flow (the session's Prefect)."""
    from prefect import get_client

    from flows.workflow import run_workflow

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        async with get_client() as client:
            flow_id = await client.create_flow(run_workflow)
            await client.create_deployment(
                flow_id=flow_id,
                name=name,
                entrypoint="flows/workflow.py:run_workflow",
                pull_steps=[
                    {
                        "prefect.deployments.steps.set_working_directory": {
                            "directory": str(REPO_ROOT)
                        }
                    }
                ],
            )

    asyncio.run(create())
    return f"run-workflow/{name}"


def app_env(workdir: Path, database_url: str | None = None) -> dict[str, str]:
    """This process's environment plus what the API and the workflow runs share: the
    definitions and pinned store under ``workdir``, the database (default: SQLite there)."""
    variables = dict(os.environ)
    variables.update(
        {
            "ORCH_DEFINITIONS_DIRECTORY": str(workdir / "definitions"),
            "ORCH_FLOW_DEFINITIONS_DIR": str(workdir / "pinned"),
            "ORCH_DB_URL": database_url or f"sqlite+aiosqlite:///{workdir / 'orchestration.db'}",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    return variables


@contextmanager
def serve_api(
    workdir: Path,
    *,
    deployment: str,
    database_url: str | None = None,
    env: dict[str, str] | None = None,
    ready_statuses: tuple[int, ...] = (200,),
    keys: Sequence[str] = (),
    **settings: str,
) -> Iterator[ApiProcess]:
    """Run the API until the block ends. ``settings`` become ``ORCH_API_<NAME>`` variables,
    ``env`` is added last (e.g. another ``PREFECT_API_URL``); the API is ready when ``/health``
    answers one of ``ready_statuses`` (503: up, but Prefect is not). It accepts ``keys`` (default:
    one new key); ``ApiProcess.key`` is the first."""
    shutil.copytree(REPO_ROOT / "definitions", workdir / "definitions", dirs_exist_ok=True)
    keys = list(keys) or ["test-key-" + uuid.uuid4().hex]
    key = keys[0]
    port = free_port()
    variables = app_env(workdir, database_url)
    variables.update(
        {
            "ORCH_API_API_KEYS": json.dumps(keys),
            "ORCH_API_DEPLOYMENT": deployment,
            "ORCH_INGRESS_WORKFLOW": "device-decommission",
        }
    )
    variables.update({f"ORCH_API_{name.upper()}": value for name, value in settings.items()})
    variables.update(env or {})
    log_path = workdir / "api.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "serve-api",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=REPO_ROOT,
            env=variables,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        api = ApiProcess(f"http://127.0.0.1:{port}", "127.0.0.1", port, key, log_path)
        try:
            _wait_ready(process, api, ready_statuses)
            yield api
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _wait_ready(
    process: subprocess.Popen[bytes], api: ApiProcess, statuses: tuple[int, ...]
) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        if process.poll() is not None:
            raise AssertionError("the API exited:\n" + api.log_text())
        try:
            if httpx.get(f"{api.base_url}/health", timeout=10).status_code in statuses:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"API not ready in {STARTUP_SECONDS}s:\n" + api.log_text())
        time.sleep(0.2)
