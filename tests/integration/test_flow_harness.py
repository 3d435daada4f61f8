"""Harness of the flow tests: an app database, test activities, a deployment and a live executor.

``flow_system`` (session) configures ``flows.runtime`` with an app database on PostgreSQL and a
registry holding the built-ins plus test activities that count their side effects in that
database, registers the ``run_workflow`` deployment and runs the in-process executor (with its
resumer) as a background task of the session's event loop. Tests create runs through the real
Prefect API and wait on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import BaseModel, ConfigDict
from sqlalchemy import text

from interpreter.errors import ActivityError
from tasks.context import ActivityContext
from tasks.registry import BUILTIN_MODULES, ActivityInput, ActivityRegistry
from tests.support.postgres import PostgresServer

RUNTIME_DEFINITIONS = Path(__file__).resolve().parents[1] / "fixtures" / "definitions" / "runtime"
DEADLINE = 90.0


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class CountInput(ActivityInput):
    name: str


class FlakyInput(ActivityInput):
    name: str
    fail_times: int
    error: str = "Device.Busy"
    retryable: bool = True


class FailInput(ActivityInput):
    error: str
    #: The side effect recorded for the attempt (default ``fail:<error>``).
    name: str | None = None
    cause: str = "it failed"
    retryable: bool = False


class SleepInput(ActivityInput):
    seconds: float


class SlowInput(ActivityInput):
    name: str
    seconds: float
    slow_times: int


class SpanInput(ActivityInput):
    group: str
    #: Wait (up to ``meet_deadline``) until this many spans of the group have once been in
    #: progress together (the first ones meet; later ones find it done)...
    meet: int = 1
    meet_deadline: float = 30.0
    #: ...then stay in progress this long (time for one more to enter, were the limit broken).
    seconds: float


@dataclass
class Overlap:
    """How many ``test.span`` calls of one group were in progress at once (this process)."""

    current: int = 0
    most: int = 0
    entries: int = 0
    #: Set once ``meet`` spans of the group have been in progress together.
    met: asyncio.Event = field(default_factory=asyncio.Event)


#: ``test.span`` records here: the executor runs in this process.
OVERLAPS: dict[str, Overlap] = {}


class EchoInput(ActivityInput):
    model_config = ConfigDict(extra="allow", frozen=True)


async def _effect(ctx: ActivityContext, name: str) -> int:
    """Record one side effect named ``name``; return how many it now has."""
    if ctx.db is None:
        raise ActivityError("States.Misconfigured", "no database", retryable=False)
    async with ctx.db.transaction() as connection:
        await connection.execute(
            text("INSERT INTO flow_test_effects (name, run_id) VALUES (:name, :run)"),
            {"name": name, "run": ctx.run_id},
        )
        count = await connection.scalar(
            text("SELECT count(*) FROM flow_test_effects WHERE name = :name"), {"name": name}
        )
    return int(count or 0)


def flow_test_registry() -> ActivityRegistry:
    """The built-in activities plus ``test.*`` ones."""
    import importlib

    registry = ActivityRegistry()
    for module_name in BUILTIN_MODULES:
        importlib.import_module(module_name).register(registry)

    @registry.activity(
        name="test.count",
        description="record one side effect",
        retry_safe=True,
        changes_state=True,
        input_model=CountInput,
        output_model=_Out,
    )
    async def count(ctx: ActivityContext, data: CountInput) -> _Out:
        return _Out(name=data.name, count=await _effect(ctx, data.name))

    @registry.activity(
        name="test.flaky",
        description="fail the first N attempts",
        retry_safe=True,
        changes_state=False,
        input_model=FlakyInput,
        output_model=_Out,
    )
    async def flaky(ctx: ActivityContext, data: FlakyInput) -> _Out:
        attempt = await _effect(ctx, data.name)
        if attempt <= data.fail_times:
            raise ActivityError(data.error, f"attempt {attempt}", retryable=data.retryable)
        return _Out(attempts=attempt)

    @registry.activity(
        name="test.fail",
        description="always fail",
        retry_safe=True,
        changes_state=False,
        input_model=FailInput,
        output_model=_Out,
    )
    async def fail(ctx: ActivityContext, data: FailInput) -> _Out:
        await _effect(ctx, data.name or f"fail:{data.error}")
        raise ActivityError(data.error, data.cause, retryable=data.retryable)

    @registry.activity(
        name="test.sleep",
        description="sleep",
        retry_safe=True,
        changes_state=False,
        input_model=SleepInput,
        output_model=_Out,
    )
    async def sleep(ctx: ActivityContext, data: SleepInput) -> _Out:
        await asyncio.sleep(data.seconds)
        return _Out(slept=data.seconds)

    @registry.activity(
        name="test.slow",
        description="record an attempt; the first slowTimes attempts take `seconds`",
        retry_safe=True,
        changes_state=False,
        input_model=SlowInput,
        output_model=_Out,
    )
    async def slow(ctx: ActivityContext, data: SlowInput) -> _Out:
        attempt = await _effect(ctx, data.name)
        if attempt <= data.slow_times:
            await asyncio.sleep(data.seconds)
        return _Out(attempts=attempt)

    @registry.activity(
        name="test.span",
        description="be in progress for `seconds`, counting how many of the group overlap",
        retry_safe=True,
        changes_state=False,
        input_model=SpanInput,
        output_model=_Out,
    )
    async def span(ctx: ActivityContext, data: SpanInput) -> _Out:
        overlap = OVERLAPS.setdefault(data.group, Overlap())
        overlap.current += 1
        overlap.entries += 1
        overlap.most = max(overlap.most, overlap.current)
        try:
            # A rendezvous, not a race: however slow the machine, spans that may run together
            # do meet (a limit that serialized them would leave each alone until its deadline).
            if overlap.current >= data.meet:
                overlap.met.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(overlap.met.wait(), data.meet_deadline)
            await asyncio.sleep(data.seconds)
        finally:
            overlap.current -= 1
        return _Out(group=data.group)

    @registry.activity(
        name="test.echo",
        description="return the input",
        retry_safe=True,
        changes_state=False,
        input_model=EchoInput,
        output_model=_Out,
    )
    async def echo(ctx: ActivityContext, data: EchoInput) -> _Out:
        return _Out(**(data.model_extra or {}))

    return registry


@dataclass
class FlowSystem:
    deployment_id: uuid.UUID
    database_url: str
    executor: Any
    #: The process's metrics, read on demand (``operations.observability``).
    metric_reader: Any = None
    #: ``ORCH_DEFINITIONS_DIRECTORY`` of the session: besides the working directory, the only
    #: place a run reads a definition path from.
    definitions_dir: Path = Path("definitions")

    def metric_points(self, name: str) -> list[Any]:
        """Every data point recorded so far for the instrument ``name``."""
        data = self.metric_reader.get_metrics_data()
        points: list[Any] = []
        for resource_metrics in data.resource_metrics if data else []:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points

    async def start(
        self,
        definition: str | Path,
        input: dict[str, Any] | None = None,
        *,
        device_id: str | None = None,
        pin: bool = True,
    ) -> uuid.UUID:
        """Create a run of ``definition``: pinned by hash as the CLI does, or (``pin=False``) by
        path only, as the ingress does (the flow then pins it in a cached task)."""
        from flows.definitions import pin as pin_definition
        from flows.workflow import run_name, run_tags
        from interpreter.loader import load_definition

        path = Path(definition)
        if not path.is_absolute():
            path = RUNTIME_DEFINITIONS / path
        text = path.read_text()
        workflow = json.loads(text)["name"]
        parameters: dict[str, Any] = {
            "workflow": str(path),
            "input": input or {},
            "device_id": device_id,
        }
        if pin:
            parameters["definition_hash"] = await pin_definition(load_definition(text))
        return await self.create(
            parameters,
            name=run_name(workflow, device_id, uuid.uuid4().hex),
            tags=run_tags(workflow, device_id, None),
        )

    async def create(
        self, parameters: dict[str, Any], *, name: str | None = None, tags: list[str] | None = None
    ) -> uuid.UUID:
        """Create a run with exactly these parameters, as an API caller would."""
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            flow_run = await client.create_flow_run_from_deployment(
                self.deployment_id, parameters=parameters, name=name, tags=tags
            )
        run_id: uuid.UUID = flow_run.id
        return run_id

    async def read(self, run_id: uuid.UUID) -> Any:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            return await client.read_flow_run(run_id)

    async def wait_state(
        self,
        run_id: uuid.UUID,
        done: Callable[[Any], bool],
        what: str,
        deadline: float = DEADLINE,
    ) -> Any:
        end = time.monotonic() + deadline
        flow_run = None
        while time.monotonic() < end:
            flow_run = await self.read(run_id)
            if flow_run.state is not None and done(flow_run.state):
                return flow_run
            await asyncio.sleep(0.2)
        state = flow_run.state if flow_run else None
        raise AssertionError(f"run {run_id} not {what} within {deadline}s (state: {state})")

    async def idle(self, deadline: float = 30.0) -> None:
        """Wait until the executor holds no run (a suspended run's engine returns shortly after
        the server shows it Paused)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if not self.executor.in_flight:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.executor.in_flight} runs still in flight after {deadline}s")

    async def final(self, run_id: uuid.UUID, deadline: float = DEADLINE) -> Any:
        return await self.wait_state(run_id, lambda s: s.is_final(), "final", deadline)

    async def suspended(self, run_id: uuid.UUID, key: str | None = None) -> Any:
        def paused(state: Any) -> bool:
            if not state.is_paused():
                return False
            return key is None or str(state.state_details.pause_key).startswith(key)

        return await self.wait_state(run_id, paused, f"suspended at {key or 'a wait'}")

    async def result(self, run_id: uuid.UUID) -> Any:
        flow_run = await self.final(run_id)
        assert flow_run.state.is_completed(), flow_run.state
        return await flow_run.state.aresult()

    async def effects(self, name: str) -> int:
        from flows.runtime import get_resources

        resources = await get_resources()
        async with resources.db.transaction() as connection:
            count = await connection.scalar(
                text("SELECT count(*) FROM flow_test_effects WHERE name = :name"), {"name": name}
            )
        return int(count or 0)

    async def effect_order(self, prefix: str) -> list[str]:
        from flows.runtime import get_resources

        resources = await get_resources()
        async with resources.db.transaction() as connection:
            rows = await connection.execute(
                text("SELECT name FROM flow_test_effects WHERE name LIKE :p ORDER BY id"),
                {"p": f"{prefix}%"},
            )
            return [str(row[0]) for row in rows]

    async def send_event(self, subject: str, name: str, payload: Any = None) -> None:
        """Record the event as the ingress does; the resumer wakes the waiting run."""
        from flows.runtime import get_resources
        from store.events import DeviceEvent

        resources = await get_resources()
        await resources.events.record(
            DeviceEvent(device_id=subject, event_id=uuid.uuid4().hex, name=name, payload=payload)
        )

    async def history(self, run_id: uuid.UUID) -> list[str]:
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            states = await client.read_flow_run_states(run_id)
        return [str(state.name) for state in states]


class SessionResumer:
    """The flow tests' timer resumer (``flows.timers.Resumer``), stoppable and startable again in
    the context it was made in (the session server's settings)."""

    def __init__(self, tick_seconds: float) -> None:
        self.tick_seconds = tick_seconds
        self._context = contextvars.copy_context()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        from flows.timers import Resumer

        if self._task is not None:
            return
        self._stop = asyncio.Event()
        loop = Resumer(tick_seconds=self.tick_seconds).run(self._stop)
        self._task = asyncio.get_running_loop().create_task(loop, context=self._context)

    async def stop(self) -> None:
        if self._task is None or self._stop is None:
            return
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self._task, timeout=60)
        self._task = None


#: The session's running resumers (one per flow_system), for tests that must run without them.
SESSION_RESUMERS: list[SessionResumer] = []


@pytest.fixture(scope="session")
def flow_database_url(postgres: PostgresServer) -> str:
    """A fresh app database on PostgreSQL for the flow tests."""
    return postgres.sqlalchemy_url(postgres.create_database("flowapp"))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def flow_system(
    prefect_server: Any, flow_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FlowSystem]:
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

    url = flow_database_url
    definitions_dir = tmp_path_factory.mktemp("definitions")
    environment = pytest.MonkeyPatch()
    # Read when the resources are built (below): where runs may read definition paths from.
    environment.setenv("ORCH_DEFINITIONS_DIRECTORY", str(definitions_dir))
    with temporary_settings(
        updates={
            PREFECT_API_URL: prefect_server.api_url,
            PREFECT_HOME: prefect_server.home,
            PREFECT_LOCAL_STORAGE_PATH: prefect_server.home / "results",
            PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
        }
    ):
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        from operations.observability import configure_metrics

        reader = InMemoryMetricReader()
        configure_metrics(reader=reader)
        runtime.configure(
            database_url=url,
            registry=flow_test_registry(),
            settings=runtime.FlowSettings(short_wait_seconds=2.0),
        )
        resources = await runtime.get_resources()
        async with resources.db.transaction() as connection:
            await connection.execute(
                text(
                    "CREATE TABLE IF NOT EXISTS flow_test_effects "
                    "(id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, run_id TEXT)"
                )
            )
        deployment_id = await deploy(run_workflow, "flow-tests")
        executor = Executor(
            {deployment_id: run_workflow},
            concurrency=20,
            poll_seconds=0.2,
            resume_timers=False,
        )
        task = asyncio.create_task(executor.run())
        # The executor's timer resumer, run apart so that a test with a database of its own
        # (tests/integration/test_resumer.py) can stop it: it reads whatever database the runtime
        # is configured with, and would resolve that test's waits as "gone" (their runs live on
        # another Prefect server).
        session_resumer = SessionResumer(tick_seconds=0.3)
        session_resumer.start()
        SESSION_RESUMERS.append(session_resumer)
        try:
            yield FlowSystem(deployment_id, url, executor, reader, definitions_dir)
        finally:
            SESSION_RESUMERS.remove(session_resumer)
            await session_resumer.stop()
            environment.undo()
            executor.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=60)
            await runtime.reset()
            from prefect.logging.handlers import APILogHandler

            await APILogHandler.aflush()  # while the server is still up


@pytest.mark.integration
async def test_harness_runs_a_one_task_definition(flow_system: FlowSystem) -> None:
    run_id = await flow_system.start("one-task.json", {"name": "harness"})
    output = await flow_system.result(run_id)
    assert output["echo"]["name"] == "harness"
