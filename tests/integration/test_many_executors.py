"""Several ``orchestration worker`` processes on one deployment never execute a run twice.

Scale-out on Prefect itself (issue 11): three executors poll the same deployment of a real
Prefect server (PostgreSQL) and claim due runs by proposing ``Pending``; the server lets one
claimant have each run. Forty runs are created at once, each with one ``http.request`` step that
posts its run's tag to a local sink (``drills.sink``). Every run must complete, the sink must see
each run's side effect exactly once, each run's Prefect state history must hold exactly one
``Running`` state, and the executors' own claim counters must add up to the number of runs.

``Team`` (the processes, their environment and the definition) is reused by
``test_server_redis``, which runs the same executors against a multi-process Prefect server.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from drills.procs import Process
from drills.sink import Sink
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ORCHESTRATION = str(Path(sys.executable).with_name("orchestration"))
RUNS = 40
EXECUTORS = 3
DEADLINE = 120.0
FLOW = "run-workflow"


def once_definition(sink_url: str) -> dict[str, Any]:
    """One step with a side effect: POST the run's tag to the sink (retried on a hiccup with the
    same idempotency key), then succeed."""
    return {
        "name": "many-executors",
        "version": "1",
        "configuration": {"onFailure": "fail"},
        "startAt": "Act",
        "states": {
            "Act": {
                "type": "task",
                "activity": "http.request",
                "input": {
                    "method": "POST",
                    "url": f"{sink_url}/act",
                    "json": {"device": "$.input.tag", "step": "act"},
                },
                "retry": {"maxAttempts": 5, "intervalSeconds": 1, "backoffRate": 1},
                "resultPath": "$.state.act",
                "next": "Done",
            },
            "Done": {"type": "succeed", "output": {"tag": "$.input.tag"}},
        },
    }


@dataclass
class Team:
    """``orchestration worker`` processes sharing one app database, definitions directory and
    deployment, talking to the Prefect API at ``prefect_env``'s ``PREFECT_API_URL``."""

    prefect_env: dict[str, str]
    app_db_url: str
    directory: Path
    deployment: str = field(default_factory=lambda: f"many-{uuid.uuid4().hex[:8]}")
    workers: list[Process] = field(default_factory=list)

    def write(self, document: dict[str, Any]) -> Path:
        path = self.directory / "definitions" / f"{document['name']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2))
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "PREFECT_"))}
        env.update(self.prefect_env)
        env.update(
            {
                "PYTHONPATH": str(REPO),
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "ORCH_DB_URL": self.app_db_url,
                # Three executors plus everyone else share PostgreSQL's 100 connections.
                "ORCH_DB_POOL_SIZE": "2",
                "ORCH_DB_MAX_OVERFLOW": "2",
                "ORCH_DEFINITIONS_DIRECTORY": str(self.directory / "definitions"),
                "ORCH_FLOW_DEFINITIONS_DIR": str(self.directory / "pinned"),
                "ORCH_HTTP_ALLOWED_HOSTS": '["127.0.0.1"]',
                "ORCH_HTTP_ALLOW_LOOPBACK": "true",
                "ORCH_INGRESS_DEPLOYMENT": f"{FLOW}/{self.deployment}",
                "ORCH_INGRESS_RECONCILE_INTERVAL": "1",
                "ORCH_OTEL_EXPORTER": "none",
                **extra,
            }
        )
        return env

    async def start(self, count: int, concurrency: int = 20) -> None:
        """Start ``count`` executors; the first alone (it migrates the app database and creates
        the deployment), then the others at once. Returns when each says it is executing."""
        for n in range(count):
            argv = [
                ORCHESTRATION,
                "worker",
                "--deployment",
                self.deployment,
                "--concurrency",
                str(concurrency),
            ]
            self.workers.append(Process(f"worker{n + 1}", argv, self.env(), self.directory))
        first, *rest = self.workers
        await first.start().wait_for_output("executing runs of deployment", DEADLINE)
        for worker in rest:
            worker.start()
        await asyncio.gather(
            *(w.wait_for_output("executing runs of deployment", DEADLINE) for w in rest)
        )

    def stop(self) -> list[dict[str, int]]:
        """SIGTERM every executor (they drain and exit); their final counters, in order."""
        for worker in self.workers:
            worker.stop()
        return [stopped_stats(worker) for worker in self.workers]

    def kill(self) -> None:
        for worker in self.workers:
            worker.kill()

    def logs(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log_tail(30)}" for w in self.workers)


def stopped_stats(worker: Process) -> dict[str, int]:
    """The counters a stopped ``orchestration worker`` prints (``stopped: {...}``)."""
    for line in reversed(worker.log_text().splitlines()):
        if line.startswith("stopped: "):
            found: dict[str, int] = ast.literal_eval(line.removeprefix("stopped: "))
            return found
    raise AssertionError(f"{worker.name} printed no 'stopped:' line:\n{worker.log_tail()}")


async def wait_until(
    what: str, probe: Callable[[], Awaitable[bool]], deadline: float = DEADLINE
) -> None:
    end = time.monotonic() + deadline
    while not await probe():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {deadline:g}s")
        await asyncio.sleep(0.5)


async def final_states(client: Any, run_ids: list[UUID]) -> dict[UUID, str]:
    """Run id -> state type name of each run that is in a final state."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)), limit=len(run_ids)
    )
    return {r.id: r.state.type.name for r in runs if r.state is not None and r.state.is_final()}


async def running_states(client: Any, run_ids: list[UUID]) -> dict[UUID, int]:
    """Run id -> how many ``Running`` states its history holds (one per execution)."""
    from prefect.client.schemas.objects import StateType

    async def count(run_id: UUID) -> int:
        states = await client.read_flow_run_states(run_id)
        return sum(1 for s in states if s.type == StateType.RUNNING)

    counts = await asyncio.gather(*(count(run_id) for run_id in run_ids))
    return dict(zip(run_ids, counts, strict=True))


@pytest.fixture
def app_db(postgres: PostgresServer) -> str:
    """A fresh app database (created in a sync fixture: ``create_database`` runs its own loop)."""
    return postgres.sqlalchemy_url(postgres.create_database("many"))


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as found:
        # Each side effect takes a moment: runs overlap, so every executor finds work in flight.
        found.delay = 0.3
        yield found


async def test_three_executors_execute_forty_runs_each_exactly_once(
    prefect_server: Any, app_db: str, sink: Sink, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client

    team = Team(dict(prefect_server.env), app_db, tmp_path)
    path = team.write(once_definition(sink.url))
    try:
        await team.start(EXECUTORS)
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(f"{FLOW}/{team.deployment}")
            tags = [f"run-{n:02d}" for n in range(RUNS)]
            created = await asyncio.gather(
                *(
                    client.create_flow_run_from_deployment(
                        deployment.id, parameters={"workflow": str(path), "input": {"tag": tag}}
                    )
                    for tag in tags
                )
            )
            run_ids = [run.id for run in created]

            async def all_final() -> bool:
                for worker in team.workers:
                    assert worker.alive, f"{worker.name} exited:\n{worker.log_tail()}"
                return len(await final_states(client, run_ids)) == RUNS

            try:
                await wait_until(f"{RUNS} runs final", all_final)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{team.logs()}") from None
            states = await final_states(client, run_ids)
            executions = await running_states(client, run_ids)
        stats = await asyncio.to_thread(team.stop)
    finally:
        await asyncio.to_thread(team.kill)

    assert Counter(states.values()) == {"COMPLETED": RUNS}, team.logs()
    # Each run's side effect reached the outside world once, with one idempotency key.
    per_tag = sink.keys_per_device()
    assert sorted(per_tag) == tags
    assert {tag: sum(keys.values()) for tag, keys in per_tag.items()} == dict.fromkeys(tags, 1)
    # Each run was executed once: one Running state, and one claim among all executors.
    assert executions == dict.fromkeys(run_ids, 1)
    assert sum(s["claimed"] for s in stats) == RUNS, stats
    assert sum(s["completed"] for s in stats) == RUNS, stats
    # The work was shared (not one executor doing it all while the others idled).
    assert sum(1 for s in stats if s["claimed"] > 0) >= 2, stats
