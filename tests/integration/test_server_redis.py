"""The Prefect server with more than one API process, Redis messaging and PostgreSQL, as
docs/OPERATIONS.md ("Scaling out") runs it, carries the system's workflows end to end.

What is started (all real processes): ``prefect server database upgrade`` and Prefect's block
type registration once on a fresh PostgreSQL database (two API processes doing both at their
start race: on a new database one fails on ``block_type``'s unique slug and the server exits),
``prefect server start --workers 2`` (two API processes, no services, neither migrating nor
registering), ``prefect server services start`` (the background services in a process of
their own), all with the ``prefect_redis`` broker, cache, causal ordering and lease storage on Redis
database 7 and Docket on database 8 (both flushed first), and two ``orchestration worker``
executors. Device events through ``orchestration send-event`` start runs that post a side effect,
suspend until ``device.ready``, are resumed by that event and finish; a run started by hand
completes beside them. Every run Completed, every side effect once, and the services process saw
the runs' events through Redis (the event persister stored each run's ``Completed`` event).

Without Redis at 127.0.0.1:6379 the test skips with the reason (fails under ``CI=true``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from drills.sink import Sink
from tests.conftest import missing_service
from tests.integration.test_many_executors import (
    FLOW,
    ORCHESTRATION,
    Team,
    final_states,
    once_definition,
    running_states,
    wait_until,
)
from tests.support.postgres import PostgresServer, free_port
from tests.support.prefect_server import (
    HEALTH_DEADLINE_SECONDS,
    client_env,
    log_tail,
    stop_process,
    wait_answering,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
#: Database numbers nothing else on the machine uses; flushed at the start.
MESSAGING_DB = 7
DOCKET_DB = 8
DEVICES = 3
PREFECT = str(Path(sys.executable).with_name("prefect"))
#: Prefect's block types registered once, before the API processes start (docs/OPERATIONS.md).
REGISTER_BLOCK_TYPES = """import asyncio
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration
async def register():
    async with await provide_database_interface().session() as session:
        await run_block_auto_registration(session=session)
asyncio.run(register())"""


def redis_settings(host: str, port: int, messaging_db: int, docket_db: int) -> dict[str, str]:
    """What every process of a multi-process Prefect server shares (API and services)."""
    return {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_HOST": host,
        "PREFECT_REDIS_MESSAGING_PORT": str(port),
        "PREFECT_REDIS_MESSAGING_DB": str(messaging_db),
        "PREFECT_SERVER_DOCKET_URL": f"redis://{host}:{port}/{docket_db}",
    }


@dataclass
class RedisPrefect:
    """A Prefect server of two API processes plus a services process, on Redis."""

    api_url: str
    home: Path
    database: str
    api: subprocess.Popen[bytes]
    services: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        """The API processes' log (both write to it)."""
        return self.home / "api.log"

    @property
    def client_env(self) -> dict[str, str]:
        return client_env(self.api_url, self.home)

    def api_processes(self) -> int:
        """The live worker processes uvicorn spawned under ``prefect server start``."""
        found = 0
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            found += ppid == self.api.pid and b"spawn_main" in cmdline
        return found

    def logs(self) -> str:
        api = log_tail(self.home / "api.log")
        services = log_tail(self.home / "services.log")
        return f"--- api\n{api}\n--- services\n{services}"

    def stop(self) -> None:
        stop_process(self.api)
        stop_process(self.services)


def flush_redis() -> str | None:
    """Empty the two Redis databases; the reason when Redis does not answer, else None."""
    import redis

    for db in (MESSAGING_DB, DOCKET_DB):
        try:
            connection = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=3)
            connection.ping()
            connection.flushdb()
            connection.close()
        except redis.RedisError as exc:
            return f"no Redis at {REDIS_HOST}:{REDIS_PORT} ({exc})"
    return None


def start_redis_prefect(
    postgres: PostgresServer,
    workers: int = 2,
    *,
    pool: tuple[int, int] = (3, 5),
    extra_env: dict[str, str] | None = None,
) -> RedisPrefect:
    """Migrate a fresh database, start the services process and ``prefect server start
    --workers N`` on Redis; return once the API answers. ``pool``: each process's database pool
    size and overflow; ``extra_env``: more settings for every server process."""
    home = Path(tempfile.mkdtemp(prefix="orch-prefect-redis-"))
    database = postgres.create_database("prefect_redis")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(client_env(api_url, home))
    env.pop("PREFECT_API_URL")  # the server is not a client of another
    env.update(redis_settings(REDIS_HOST, REDIS_PORT, MESSAGING_DB, DOCKET_DB))
    env.update(
        {
            "PREFECT_API_DATABASE_CONNECTION_URL": postgres.sqlalchemy_url(database),
            # Two API processes must not migrate, nor register Prefect's block types, at once
            # (on a new database one fails on block_type's unique slug and the server exits):
            # both are done first, below.
            "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
            "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
            # Three server processes share PostgreSQL's 100 connections with everyone else.
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": str(pool[0]),
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": str(pool[1]),
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "0.5",
            **(extra_env or {}),
        }
    )
    for what, argv in (
        ("prefect server database upgrade", [PREFECT, "server", "database", "upgrade", "-y"]),
        ("block type registration", [sys.executable, "-c", REGISTER_BLOCK_TYPES]),
    ):
        done = subprocess.run(argv, env=env, capture_output=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{what} failed: {done.stderr[-2000:]!r}")

    def spawn(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (home / f"{name}.log").open("wb") as log:
            return subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    services = spawn("services", [PREFECT, "server", "services", "start"])
    api = spawn(
        "api",
        [
            PREFECT,
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--no-ui",
        ],
    )
    server = RedisPrefect(api_url, home, database, api, services)
    try:
        wait_answering(
            api,
            f"{api_url}/health",
            seconds=HEALTH_DEADLINE_SECONDS,
            what="prefect server --workers 2",
            log_path=home / "api.log",
        )
        if services.poll() is not None:
            raise RuntimeError(f"prefect server services exited:\n{server.logs()}")
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def redis_prefect(postgres: PostgresServer) -> Iterator[RedisPrefect]:
    reason = flush_redis()
    if reason is not None:
        missing_service(reason)
    server = start_redis_prefect(postgres)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def app_db(postgres: PostgresServer) -> str:
    return postgres.sqlalchemy_url(postgres.create_database("redisapp"))


def episode_definition(sink_url: str) -> dict[str, Any]:
    """Announce (a side effect), suspend until ``device.ready``, finish (another)."""

    def post(step: str) -> dict[str, Any]:
        return {
            "type": "task",
            "activity": "http.request",
            "input": {
                "method": "POST",
                "url": f"{sink_url}/{step}",
                "json": {"device": "$.system.deviceId", "step": step},
            },
            "retry": {"maxAttempts": 5, "intervalSeconds": 1, "backoffRate": 1},
            "resultPath": f"$.state.{step}",
        }

    return {
        "name": "redis-episode",
        "version": "1",
        "configuration": {"onFailure": "fail"},
        "startAt": "Announce",
        "states": {
            "Announce": {**post("announce"), "next": "WaitReady"},
            "WaitReady": {
                "type": "wait",
                "event": {"name": "device.ready", "timeoutSeconds": 600, "timeoutNext": "Late"},
                "next": "Finish",
            },
            "Finish": {**post("finish"), "end": True},
            "Late": {"type": "fail", "error": "Timeout", "cause": "no device.ready"},
        },
    }


def send_events(team: Team, events: list[dict[str, Any]]) -> None:
    """``orchestration send-event --file -``: the events recorded and routed in one process."""
    lines = "".join(json.dumps(event) + "\n" for event in events)
    done = subprocess.run(
        [ORCHESTRATION, "send-event", "--file", "-", "--output", "json"],
        input=lines.encode(),
        env=team.env(ORCH_INGRESS_WORKFLOW="redis-episode"),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])


async def completed_events(api_url: str, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """The runs whose ``prefect.flow-run.Completed`` event the event persister stored."""
    body = {
        "filter": {
            "event": {"name": ["prefect.flow-run.Completed"]},
            "any_resource": {"id": [f"prefect.flow-run.{run_id}" for run_id in run_ids]},
        },
        "limit": 50,
    }
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(f"{api_url}/events/filter", json=body)
    answer.raise_for_status()
    found: set[uuid.UUID] = set()
    for event in answer.json()["events"]:
        resource_id = str(event["resource"]["prefect.resource.id"])
        found.add(uuid.UUID(resource_id.removeprefix("prefect.flow-run.")))
    return found


async def test_two_api_processes_on_redis_run_workflows_suspended_and_resumed_by_events(
    redis_prefect: RedisPrefect, app_db: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.settings import PREFECT_API_URL, temporary_settings

    assert redis_prefect.api_processes() == 2, redis_prefect.logs()
    team = Team(redis_prefect.client_env, app_db, tmp_path)
    devices = [f"redis-{uuid.uuid4().hex[:6]}-{n}" for n in range(DEVICES)]
    with Sink() as sink, temporary_settings(updates={PREFECT_API_URL: redis_prefect.api_url}):
        team.write(episode_definition(sink.url))
        plain = team.write(once_definition(sink.url))
        try:
            await team.start(2)
            async with get_client() as client:

                async def device_runs() -> dict[str, Any]:
                    found: dict[str, Any] = {}
                    for device in devices:
                        runs = await client.read_flow_runs(
                            flow_run_filter=FlowRunFilter(
                                tags=FlowRunFilterTags(all_=[f"device:{device}"])
                            )
                        )
                        if len(runs) == 1:
                            found[device] = runs[0]
                    return found

                async def all_suspended() -> bool:
                    runs = await device_runs()
                    return len(runs) == DEVICES and all(
                        r.state is not None and r.state.is_paused() for r in runs.values()
                    )

                await asyncio.to_thread(
                    send_events,
                    team,
                    [
                        {"device": d, "name": "hello", "payload": {}, "eventId": f"{d}-hello"}
                        for d in devices
                    ],
                )
                deployment = await client.read_deployment_by_name(f"{FLOW}/{team.deployment}")
                by_hand = await client.create_flow_run_from_deployment(
                    deployment.id, parameters={"workflow": str(plain), "input": {"tag": "plain"}}
                )
                try:
                    await wait_until("every device's run suspended", all_suspended)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{team.logs()}\n{redis_prefect.logs()}") from None
                await asyncio.to_thread(
                    send_events,
                    team,
                    [
                        {"device": d, "name": "device.ready", "payload": {}, "eventId": f"{d}-r"}
                        for d in devices
                    ],
                )
                run_ids = [r.id for r in (await device_runs()).values()] + [by_hand.id]

                async def all_final() -> bool:
                    return len(await final_states(client, run_ids)) == len(run_ids)

                try:
                    await wait_until("every run final", all_final)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{team.logs()}\n{redis_prefect.logs()}") from None
                states = await final_states(client, run_ids)
                executions = await running_states(client, run_ids)

                # The services process stored the runs' events: they crossed Redis.
                async def events_stored() -> bool:
                    stored = await completed_events(redis_prefect.api_url, run_ids)
                    return stored == set(run_ids)

                await wait_until("each run's Completed event stored", events_stored, 60)
            stats = await asyncio.to_thread(team.stop)
        finally:
            await asyncio.to_thread(team.kill)
        hits = Counter((hit.device, hit.step) for hit in sink.hits())

    assert Counter(states.values()) == {"COMPLETED": len(run_ids)}, states
    # A resumed run starts again from the top (one Running per execution): two each, one by hand.
    assert executions == {**dict.fromkeys(run_ids[:-1], 2), by_hand.id: 1}, executions
    expected = {(d, step): 1 for d in devices for step in ("announce", "finish")}
    assert hits == Counter({**expected, ("plain", "act"): 1}), hits
    assert sum(s["claimed"] for s in stats) == DEVICES * 2 + 1, stats
