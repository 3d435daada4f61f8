"""Runs survive the app database dropping their connections (issue 8, item 3).

A background task calls ``pg_terminate_backend`` on every connection to the app database every
0.3 s while runs start, wait for an event, sleep on a timer (suspended, woken by the resumer) and
finish. The runs' bookkeeping (journal, wait registration and resolution, event claims) retries
lost connections, so every run completes and each activity runs once. The activity here counts
its calls in this process's memory (the executor runs in-process), so that the count itself
never depends on the database the storm is hitting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import pytest
import pytest_asyncio
from pydantic import BaseModel, ConfigDict

from tasks.context import ActivityContext
from tasks.registry import ActivityInput
from tests.integration.test_flow_harness import FlowSystem, flow_test_registry
from tests.support.postgres import PostgresServer

pytestmark = pytest.mark.integration

RUNS = 12
#: Calls of ``test.tally`` by name, counted in memory (see the module docstring).
TALLY: Counter[str] = Counter()

DEFINITION = {
    "name": "rt-db-drops",
    "version": "1",
    "configuration": {"onFailure": "fail"},
    "startAt": "Before",
    "states": {
        "Before": {
            "type": "task",
            "activity": "test.tally",
            "input": {"name": "$.input.before"},
            "next": "WaitReady",
        },
        "WaitReady": {
            "type": "wait",
            "event": {
                "name": "device.ready",
                "timeoutSeconds": 600,
                "resultPath": "$.state.ready",
            },
            "next": "Nap",
        },
        "Nap": {"type": "wait", "seconds": 4, "next": "After"},
        "After": {
            "type": "task",
            "activity": "test.tally",
            "input": {"name": "$.input.after"},
            "end": True,
        },
    },
}


class TallyInput(ActivityInput):
    name: str


class _Tallied(BaseModel):
    model_config = ConfigDict(extra="allow")


@pytest.fixture(scope="module")
def storm_database(postgres: PostgresServer) -> str:
    """The name of a fresh app database (the one the storm terminates connections to)."""
    return postgres.create_database("dropapp")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def drop_system(
    prefect_server: Any,
    postgres: PostgresServer,
    storm_database: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[FlowSystem]:
    """The flow harness's system on its own app database, with the in-memory ``test.tally``."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    from flows import runtime
    from flows.executor import Executor, deploy
    from flows.workflow import run_workflow

    registry = flow_test_registry()

    @registry.activity(
        name="test.tally",
        description="count one call in memory",
        retry_safe=True,
        changes_state=False,
        input_model=TallyInput,
        output_model=_Tallied,
    )
    async def tally(_ctx: ActivityContext, data: TallyInput) -> _Tallied:
        TALLY[data.name] += 1
        return _Tallied(name=data.name)

    url = postgres.sqlalchemy_url(storm_database)
    definitions_dir = tmp_path_factory.mktemp("drop-definitions")
    environment = pytest.MonkeyPatch()
    environment.setenv("ORCH_DEFINITIONS_DIRECTORY", str(definitions_dir))
    with temporary_settings(
        updates={
            PREFECT_API_URL: prefect_server.api_url,
            PREFECT_HOME: prefect_server.home,
            PREFECT_LOCAL_STORAGE_PATH: prefect_server.home / "results",
            PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
        }
    ):
        runtime.configure(
            database_url=url,
            registry=registry,
            settings=runtime.FlowSettings(short_wait_seconds=2.0),
        )
        await runtime.get_resources()
        deployment_id = await deploy(run_workflow, "flow-db-drops")
        executor = Executor(
            {deployment_id: run_workflow},
            concurrency=RUNS,
            poll_seconds=0.2,
            resumer_tick_seconds=0.3,
        )
        task = asyncio.create_task(executor.run())
        try:
            yield FlowSystem(deployment_id, url, executor, None, definitions_dir)
        finally:
            environment.undo()
            executor.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=60)
            await runtime.reset()
            from prefect.logging.handlers import APILogHandler

            await APILogHandler.aflush()


async def _storm(admin_dsn: str, database: str, stop: asyncio.Event, hits: list[int]) -> None:
    """Terminate every other connection to ``database`` every 0.3 s until ``stop``."""
    connection = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        while not stop.is_set():
            killed = await connection.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            hits.append(len(killed))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.3)
    finally:
        await connection.close()


async def _despite_the_storm(call: Callable[[], Awaitable[Any]], what: str) -> Any:
    """The test's own database calls (sending an event) try again until they get through: only
    the runs' resilience is under test, not the test's."""
    end = time.monotonic() + 60
    while True:
        try:
            return await call()
        except Exception as exc:
            if time.monotonic() > end:
                raise AssertionError(f"{what} failed for 60 s: {exc!r}") from exc
            await asyncio.sleep(0.1)


async def test_runs_complete_while_the_app_database_drops_connections(
    drop_system: FlowSystem, postgres: PostgresServer, storm_database: str, tmp_path: Path
) -> None:
    definition = tmp_path / "db-drops.json"
    definition.write_text(json.dumps(DEFINITION))
    tag = uuid.uuid4().hex[:8]
    devices = [f"drop-{tag}-{n}" for n in range(RUNS)]
    names = {
        device: {"before": f"{device}-before", "after": f"{device}-after"} for device in devices
    }
    stop = asyncio.Event()
    hits: list[int] = []
    storm = asyncio.create_task(_storm(postgres.admin_dsn, storm_database, stop, hits))
    try:
        run_ids = {
            device: await drop_system.start(definition, names[device], device_id=device)
            for device in devices
        }
        for device, run_id in run_ids.items():
            await drop_system.suspended(run_id, "waitready")
            await _despite_the_storm(
                functools.partial(drop_system.send_event, device, "device.ready", {"ok": 1}),
                f"sending {device}'s event",
            )
        finals = {device: await drop_system.final(run_id) for device, run_id in run_ids.items()}
    finally:
        stop.set()
        await storm

    assert sum(hits) > 0, "the storm terminated no connection"
    failed = {
        device: f"{flow_run.state.type.value}: {flow_run.state.message}"
        for device, flow_run in finals.items()
        if not flow_run.state.is_completed()
    }
    assert failed == {}, failed
    for device in devices:
        for name in names[device].values():
            assert TALLY[name] == 1, (name, TALLY[name])
