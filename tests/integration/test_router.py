"""Start-or-route on a real Prefect server and PostgreSQL.

Two deployments of the probe flow (``tests/support/ingress_probe.py``): ``idle`` has no executor
(its runs stay scheduled: a busy device), ``served`` is executed by ``flow.serve`` in a subprocess
(its runs really wait, suspend and get resumed). Prefect outages are real: the router talks to
Prefect through a TCP proxy that the test switches off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from listeners.control import PrefectRunControl
from listeners.local import IngressRuntime, open_ingress
from listeners.pipeline import Disposition
from listeners.router import DefinitionPin, RecordStatus, RouteAction
from listeners.settings import IngressSettings
from tests.support.postgres import PostgresServer, free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
DEADLINE = 90.0
T = TypeVar("T")


async def wait_until(probe: Callable[[], Awaitable[T]], what: str, deadline: float = DEADLINE) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    end = time.monotonic() + deadline
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline}s waiting for {what}")
        await asyncio.sleep(0.2)


def device() -> str:
    return f"dev-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def app_db_url(postgres: PostgresServer) -> str:
    return postgres.sqlalchemy_url(postgres.create_database("ingress"))


@pytest_asyncio.fixture(scope="module")
async def idle_deployment(prefect_server: Any) -> str:
    from tests.support.ingress_probe import FLOW_NAME, ingress_probe

    deployment = await ingress_probe.ato_deployment(name="idle")
    await deployment.aapply()
    return f"{FLOW_NAME}/idle"


@pytest.fixture(scope="module")
def served_deployment(prefect_server: Any, app_db_url: str) -> Iterator[str]:
    """The probe flow served by a subprocess (each run a process, as with ``flow.serve``)."""
    env = {**os.environ, **prefect_server.env, "ORCH_DB_URL": app_db_url}
    log_path = Path(prefect_server.home) / "probe-serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.ingress_probe", "served"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        from prefect.client.orchestration import get_client

        async def registered() -> bool:
            async with get_client() as client:
                try:
                    await client.read_deployment_by_name("ingress-probe/served")
                except Exception:
                    return process.poll() is not None  # stop polling a dead server
                return True

        asyncio.run(wait_until(registered, "the served deployment"))
        assert process.poll() is None, log_path.read_text()
        yield "ingress-probe/served"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.asynccontextmanager
async def runtime(
    app_db_url: str,
    deployment: str,
    *,
    api_url: str | None = None,
    definitions: DefinitionPin | None = None,
) -> AsyncIterator[IngressRuntime]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings = IngressSettings(workflow="probe", deployment=deployment, prefect_timeout=5)
    if api_url is None:
        async with open_ingress(
            database_url=app_db_url, settings=settings, definitions=definitions
        ) as rt:
            yield rt
        return
    # The client reads the API URL when it is created: point it at the proxy.
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        control = PrefectRunControl(deployment, timeout=3)
        await control.__aenter__()
    try:
        async with open_ingress(
            database_url=app_db_url, settings=settings, control=control, definitions=definitions
        ) as rt:
            yield rt
    finally:
        await control.__aexit__(None, None, None)


async def device_runs(device_id: str) -> list[Any]:
    """The Prefect runs tagged with the device (the truth on Prefect's side)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"device:{device_id}"]))
        )


async def run_state(run_id: str) -> Any:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        run = await client.read_flow_run(uuid.UUID(run_id))
    return run.state


# -- start, duplicates, races ------------------------------------------------------------------


async def test_first_event_starts_one_run_with_the_event_as_input(
    app_db_url: str, idle_deployment: str
) -> None:
    dev = device()
    async with runtime(app_db_url, idle_deployment) as rt:
        outcome = await rt.local.send(dev, "hello", {"mode": "finish", "n": 1}, event_id="e1")

        assert outcome.disposition is Disposition.COMPLETE
        assert outcome.result is not None
        assert outcome.result.recorded is RecordStatus.RECORDED
        assert outcome.result.action is RouteAction.STARTED
        runs = await device_runs(dev)
        assert [str(r.id) for r in runs] == [outcome.result.run_id]
        run = runs[0]
        assert run.parameters["device_id"] == dev
        assert run.parameters["workflow"] == "probe"
        assert run.parameters["input"]["event"]["payload"] == {"mode": "finish", "n": 1}
        assert run.idempotency_key == f"ingress:{dev}:e1"
        assert {f"device:{dev}", "workflow:probe", "ingress"} <= set(run.tags)
        current = await rt.ledger.current(dev)
        assert current is not None and current.status == "running"
        assert current.run_id == outcome.result.run_id
        assert await rt.ledger.outstanding(dev) == []


async def test_the_same_message_twice_makes_one_run(app_db_url: str, idle_deployment: str) -> None:
    dev = device()
    async with runtime(app_db_url, idle_deployment) as rt:
        first = await rt.local.send(dev, "hello", event_id="same")
        second = await rt.local.send(dev, "hello", event_id="same")

    assert first.result is not None and second.result is not None
    assert second.result.recorded is RecordStatus.DUPLICATE
    assert second.result.action is RouteAction.STARTED
    assert second.result.run_id == first.result.run_id
    assert len(await device_runs(dev)) == 1


async def test_a_busy_devices_event_waits_in_the_store(
    app_db_url: str, idle_deployment: str
) -> None:
    dev = device()
    async with runtime(app_db_url, idle_deployment) as rt:
        first = await rt.local.send(dev, "hello", event_id="a")
        later = await rt.local.send(dev, "telemetry", {"t": 21}, event_id="b")

        assert first.result is not None and later.result is not None
        assert later.result.action is RouteAction.BUSY
        assert later.result.run_id == first.result.run_id
        assert await rt.events.is_unconsumed(dev, "b", "telemetry")
    assert len(await device_runs(dev)) == 1


async def test_two_routers_racing_on_one_device_start_one_run(
    app_db_url: str, idle_deployment: str
) -> None:
    devices = [device() for _ in range(10)]
    async with (
        runtime(app_db_url, idle_deployment) as one,
        runtime(app_db_url, idle_deployment) as two,
    ):
        results = await asyncio.gather(
            *(
                rt.local.send(dev, "hello", event_id=f"{tag}-{dev}")
                for dev in devices
                for rt, tag in ((one, "x"), (two, "y"))
            )
        )
    for dev in devices:
        mine = [o.result for o in results if o.result and o.result.device_id == dev]
        assert sorted(r.action.value for r in mine) == ["busy", "started"]
        runs = await device_runs(dev)
        assert len(runs) == 1, f"{dev}: {len(runs)} runs"


async def test_a_start_queued_for_a_call_slot_is_not_created_again_by_a_reconciler(
    app_db_url: str, idle_deployment: str
) -> None:
    """A burst of new devices queues their creates behind the router's concurrent call slots.
    That wait must not make the start look abandoned: in the 1,000-device load bench another
    process's reconciler created 200 of the runs a second time (idempotent on Prefect's side, a
    create per run more on the server while it was busiest)."""
    from datetime import timedelta

    from store.columns import utc_now
    from store.runs import START_GRACE

    dev = device()
    async with (
        runtime(app_db_url, idle_deployment) as rt,
        runtime(app_db_url, idle_deployment) as other_process,
    ):
        slots = rt.router._calls  # every slot busy, as with as many creates in flight
        held = 0
        while not slots.locked():
            await slots.acquire()
            held += 1
        sending = asyncio.create_task(rt.local.send(dev, "hello", event_id="e1"))
        try:

            async def queued() -> bool:
                return bool(slots._waiters)

            await wait_until(queued, "the start queued for a call slot")
            later = utc_now() + START_GRACE + timedelta(seconds=1)
            report = await other_process.reconciler.run_once(now=later)
            assert report.started == 0
            assert await device_runs(dev) == []
        finally:
            for _ in range(held):
                slots.release()
        outcome = await sending
        assert outcome.result is not None and outcome.result.action is RouteAction.STARTED
        assert [str(r.id) for r in await device_runs(dev)] == [outcome.result.run_id]
        assert await rt.ledger.outstanding(dev) == []


async def test_the_next_event_after_a_finished_run_starts_a_new_one(
    app_db_url: str, idle_deployment: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Completed

    dev = device()
    async with runtime(app_db_url, idle_deployment) as rt:
        first = await rt.local.send(dev, "hello", event_id="one")
        assert first.result is not None and first.result.run_id is not None
        async with get_client() as client:
            await client.set_flow_run_state(uuid.UUID(first.result.run_id), Completed(), force=True)
        # Nobody told the ledger: the reconciler's sweep finds the finished run.
        report = await rt.reconciler.run_once()
        assert report.finished_runs >= 1
        second = await rt.local.send(dev, "hello", event_id="two")

    assert second.result is not None
    assert second.result.action is RouteAction.STARTED
    assert second.result.run_id != first.result.run_id
    assert len(await device_runs(dev)) == 2


async def test_the_sweep_reaches_runs_beyond_its_first_batch(
    app_db_url: str, idle_deployment: str
) -> None:
    """Runs still active are not touched by a pass, so a sweep that always read the oldest batch
    would never see a crashed run behind them: the window must move on, pass after pass."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    from listeners.outbox import Reconciler
    from store.waits import Wait

    class NoWaits:
        async def waiting_for(self, device_id: str, event_name: str) -> list[Wait]:
            return []

    devices = [device() for _ in range(3)]
    async with runtime(app_db_url, idle_deployment) as rt:
        run_ids = []
        for dev in devices:  # one after another: the last is the most recently updated
            outcome = await rt.local.send(dev, "hello", event_id="start")
            assert outcome.result is not None and outcome.result.run_id is not None
            run_ids.append(outcome.result.run_id)
        async with get_client() as client:
            await client.set_flow_run_state(uuid.UUID(run_ids[-1]), Cancelled(), force=True)
        sweeper = Reconciler(
            router=rt.router,
            ledger=rt.ledger,
            events=rt.events,
            waits=NoWaits(),
            control=rt.control,
            batch=1,
        )
        # Every active run of the module's database gets a pass of its own, at most.
        passes = len(await rt.ledger.active(100_000)) + 1
        for _ in range(passes):
            await sweeper.run_once()
            current = await rt.ledger.current(devices[-1])
            if current is not None and current.finished:
                break
        current = await rt.ledger.current(devices[-1])
        assert current is not None and current.finished, f"not swept in {passes} passes"
        for dev in devices[:-1]:  # still running in Prefect: left running
            other = await rt.ledger.current(dev)
            assert other is not None and other.status == "running"


# -- pinned definitions ------------------------------------------------------------------------


def _probe_definition(edition: str) -> str:
    return json.dumps(
        {
            "name": "probe",
            "version": "1",
            "startAt": "Done",
            "states": {"Done": {"type": "succeed", "output": {"edition": edition}}},
        }
    )


async def test_a_run_started_by_an_event_keeps_its_definition_when_the_file_changes(
    app_db_url: str, idle_deployment: str, tmp_path: Path
) -> None:
    from flows.definitions import DefinitionPinner, read_pinned
    from tasks.builtin.definitions import DirectorySource

    (tmp_path / "defs").mkdir()
    source = tmp_path / "defs" / "probe.json"
    source.write_text(_probe_definition("one"))
    pinner = DefinitionPinner(DirectorySource(tmp_path / "defs"), tmp_path / "pinned")
    dev = device()
    async with runtime(app_db_url, idle_deployment, definitions=pinner) as rt:
        outcome = await rt.local.send(dev, "hello", event_id="e1")
        assert outcome.result is not None and outcome.result.action is RouteAction.STARTED
    # The file changes before anything executes the run (nothing does: an idle deployment).
    source.write_text(_probe_definition("two"))
    (run,) = await device_runs(dev)
    digest = run.parameters["definition_hash"]
    pinned = await read_pinned(digest, tmp_path / "pinned")
    assert pinned is not None
    assert pinned.model_dump(mode="json")["states"]["Done"]["output"] == {"edition": "one"}


async def test_a_run_started_by_an_event_has_its_final_name_and_tags_at_creation(
    app_db_url: str, idle_deployment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router names and tags the run as the workflow flow does (``<workflow>/<device>``,
    ``workflow:``, ``device:``, ``version:``): the flow sends no update when it starts."""
    import httpx

    from flows.definitions import DefinitionPinner
    from flows.workflow import _name_and_tag
    from interpreter.loader import load_definition
    from tasks.builtin.definitions import DirectorySource

    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "probe.json").write_text(_probe_definition("one"))
    pinner = DefinitionPinner(DirectorySource(tmp_path / "defs"), tmp_path / "pinned")
    dev = device()
    async with runtime(app_db_url, idle_deployment, definitions=pinner) as rt:
        outcome = await rt.local.send(dev, "hello", event_id="e1")
        assert outcome.result is not None and outcome.result.action is RouteAction.STARTED
    (run,) = await device_runs(dev)
    assert run.name == f"probe/{dev}"
    assert {"workflow:probe", f"device:{dev}", "version:1", "ingress"} <= set(run.tags)

    sent: list[str] = []
    send = httpx.AsyncClient.send

    async def counted(self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any) -> Any:
        sent.append(f"{request.method} {request.url.path}")
        return await send(self, request, **kwargs)

    monkeypatch.setattr(httpx.AsyncClient, "send", counted)
    await _name_and_tag(run, load_definition(_probe_definition("one")), dev)
    assert sent == []


async def test_runs_the_router_creates_skip_the_servers_parameter_check_others_keep_it(
    idle_deployment: str,
) -> None:
    """The router's runs are created without the server's check of their parameters against
    the deployment's schema (the run checks them itself; the server's check costs a JSON-schema
    meta-validation per run); a run created with Prefect's own client is still checked."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    from listeners.control import create_run

    parameters = {"workflow": "probe", "input": "not an object"}
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(idle_deployment)
        assert deployment.enforce_parameter_schema
        with pytest.raises(PrefectHTTPStatusError) as refused:
            await client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        # Prefect answers a parameter that breaks the schema with 409 and the reason.
        assert refused.value.response.status_code == 409
        assert "is not of type 'object'" in refused.value.response.text
        run = await create_run(
            client,
            deployment.id,
            parameters=parameters,
            idempotency_key=f"unchecked-{uuid.uuid4().hex}",
            name="probe/unchecked",
            tags=["unchecked"],
        )
        created = await client.read_flow_run(run.id)
    assert created.parameters == parameters
    assert created.name == "probe/unchecked"
    assert created.state is not None and created.state.is_scheduled()


async def test_a_start_request_in_the_outbox_carries_the_pinned_hash(
    app_db_url: str, idle_deployment: str, tmp_path: Path
) -> None:
    """A start deferred while Prefect is down is created later with the hash pinned when the
    event arrived, not with whatever the file holds by then."""
    from flows.definitions import DefinitionPinner, read_pinned
    from store.columns import utc_now
    from tasks.builtin.definitions import DirectorySource

    (tmp_path / "defs").mkdir()
    source = tmp_path / "defs" / "probe.json"
    source.write_text(_probe_definition("one"))
    pinner = DefinitionPinner(DirectorySource(tmp_path / "defs"), tmp_path / "pinned")
    dev = device()
    async with runtime(
        app_db_url,
        idle_deployment,
        api_url=f"http://127.0.0.1:{free_port()}/api",
        definitions=pinner,
    ) as rt:
        outcome = await rt.local.send(dev, "hello", event_id="e1")
        assert outcome.result is not None and outcome.result.action is RouteAction.DEFERRED
        (entry,) = await rt.ledger.outstanding(dev)
    assert isinstance(entry.payload, dict)
    parameters = entry.payload["parameters"]
    assert isinstance(parameters, dict) and isinstance(parameters["definition_hash"], str)
    # The file changes; then Prefect is back and the reconciler creates the run.
    source.write_text(_probe_definition("two"))
    async with runtime(app_db_url, idle_deployment) as rt:

        async def started() -> bool:
            await rt.reconciler.run_once(now=utc_now() + timedelta_minutes(1))
            return await rt.ledger.outstanding(dev) == []

        await wait_until(started, "the deferred start")
    (run,) = await device_runs(dev)
    assert run.parameters["definition_hash"] == parameters["definition_hash"]
    pinned = await read_pinned(run.parameters["definition_hash"], tmp_path / "pinned")
    assert pinned is not None
    assert pinned.model_dump(mode="json")["states"]["Done"]["output"] == {"edition": "one"}


async def test_a_missing_definition_starts_nothing_and_is_final(
    app_db_url: str, idle_deployment: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flows.definitions import DefinitionPinner
    from tasks.builtin.definitions import DirectorySource

    (tmp_path / "defs").mkdir()
    pinner = DefinitionPinner(DirectorySource(tmp_path / "defs"), tmp_path / "pinned")
    dev = device()
    async with runtime(app_db_url, idle_deployment, definitions=pinner) as rt:
        outcome = await rt.local.send(dev, "hello", event_id="e1")
        assert outcome.disposition is Disposition.DEAD_LETTER
        assert outcome.result is not None and outcome.result.action is RouteAction.REJECTED
        assert await rt.ledger.current(dev) is None
        assert await rt.ledger.outstanding(dev) == []
    assert await device_runs(dev) == []
    assert any(dev in r.getMessage() and "e1" in r.getMessage() for r in caplog.records)


async def test_a_definitions_source_that_is_down_defers_the_event(
    app_db_url: str, idle_deployment: str
) -> None:
    from flows.definitions import DefinitionPinner
    from interpreter.errors import ActivityError

    class Down:
        def describe(self) -> str:
            return "a source that is down"

        async def read(self, name: str, limit: int) -> bytes | None:
            raise ActivityError("Definitions.Unavailable", "connection refused")

        async def names(self, prefix: str) -> list[str]:
            raise ActivityError("Definitions.Unavailable", "connection refused")

    dev = device()
    async with runtime(app_db_url, idle_deployment, definitions=DefinitionPinner(Down())) as rt:
        outcome = await rt.local.send(dev, "hello", event_id="e1")
        # Redelivered later by the transport; recorded already, nothing claimed.
        assert outcome.disposition is Disposition.ABANDON
        assert await rt.ledger.current(dev) is None
    assert await device_runs(dev) == []


# -- resume ------------------------------------------------------------------------------------


async def test_an_event_resumes_the_run_waiting_for_it(
    app_db_url: str, served_deployment: str
) -> None:
    dev = device()
    async with runtime(app_db_url, served_deployment) as rt:
        start = await rt.local.send(dev, "onboard", {"mode": "wait", "for": "approve"})
        assert start.result is not None and start.result.run_id is not None
        run_id = start.result.run_id

        async def suspended() -> bool:
            state = await run_state(run_id)
            return state is not None and state.type.value == "PAUSED"

        await wait_until(suspended, "the run to suspend")
        noise = await rt.local.send(dev, "telemetry", event_id="noise")
        approve = await rt.local.send(dev, "approve", {"ok": True}, event_id="approve-1")

        assert noise.result is not None and noise.result.action is RouteAction.BUSY
        assert approve.result is not None and approve.result.action is RouteAction.RESUMED

        async def completed() -> Any:
            state = await run_state(run_id)
            return state if state is not None and state.is_final() else None

        final = await wait_until(completed, "the resumed run to finish")
        assert final.type.value == "COMPLETED"
        assert not await rt.events.is_unconsumed(dev, "approve-1", "approve")
        assert await rt.events.is_unconsumed(dev, "noise", "telemetry")
        current = await rt.ledger.current(dev)
        assert current is not None and current.finished


async def test_a_busy_run_takes_the_event_when_it_reaches_its_wait(
    app_db_url: str, served_deployment: str, tmp_path: Path
) -> None:
    dev = device()
    gate = tmp_path / "gate"
    async with runtime(app_db_url, served_deployment) as rt:
        start = await rt.local.send(
            dev, "onboard", {"mode": "wait", "for": "approve", "gate": str(gate)}
        )
        assert start.result is not None and start.result.run_id is not None
        run_id = start.result.run_id

        async def running() -> bool:
            state = await run_state(run_id)
            return state is not None and state.type.value == "RUNNING"

        await wait_until(running, "the run to be busy")
        approve = await rt.local.send(dev, "approve", event_id="early")
        assert approve.result is not None and approve.result.action is RouteAction.BUSY
        gate.touch()

        async def completed() -> Any:
            state = await run_state(run_id)
            return state if state is not None and state.is_final() else None

        final = await wait_until(completed, "the run to finish")
        assert final.type.value == "COMPLETED"
        assert not await rt.events.is_unconsumed(dev, "early", "approve")
    assert len(await device_runs(dev)) == 1


# -- Prefect unavailable -----------------------------------------------------------------------


class SwitchableProxy:
    """A TCP proxy to the Prefect server that can refuse and cut connections (a real outage)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        with contextlib.suppress(asyncio.CancelledError):  # the loop ends before the client
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def down(self) -> None:
        self.up = False
        for writer in self._writers:
            writer.close()
        self._writers.clear()

    async def close(self) -> None:
        self.down()
        if self._server is not None:
            self._server.close()


async def test_prefect_unavailable_for_a_while_loses_nothing(
    app_db_url: str, idle_deployment: str, prefect_server: Any
) -> None:
    from store.columns import utc_now

    upstream = int(prefect_server.api_url.rsplit(":", 1)[1].split("/")[0])
    proxy = SwitchableProxy(upstream)
    await proxy.start()
    devices = [device() for _ in range(5)]
    try:
        async with runtime(
            app_db_url, idle_deployment, api_url=f"http://127.0.0.1:{proxy.port}/api"
        ) as rt:
            proxy.down()
            outcomes = [await rt.local.send(dev, "hello", event_id=f"o-{dev}") for dev in devices]
            again = await rt.local.send(devices[0], "hello", event_id=f"o-{devices[0]}")

            # Recorded and acknowledged, but no run yet: the start is in the outbox.
            for outcome in [*outcomes, again]:
                assert outcome.disposition is Disposition.COMPLETE
                assert outcome.result is not None
                assert outcome.result.action is RouteAction.DEFERRED
            for dev in devices:
                assert await device_runs(dev) == []
                assert [i.action for i in await rt.ledger.outstanding(dev)] == ["start"]
            failing = await rt.reconciler.run_once(now=utc_now() + timedelta_minutes(1))
            assert failing.retrying == len(devices) and failing.started == 0

            proxy.up = True

            async def all_started() -> bool:
                await rt.reconciler.run_once(now=utc_now() + timedelta_minutes(10))
                return [await rt.ledger.outstanding(dev) for dev in devices] == [[]] * len(devices)

            await wait_until(all_started, "the outbox to drain once Prefect is back")
            for dev in devices:
                runs = await device_runs(dev)
                assert len(runs) == 1
                current = await rt.ledger.current(dev)
                assert current is not None and current.run_id == str(runs[0].id)
    finally:
        await proxy.close()


def timedelta_minutes(minutes: float) -> Any:
    from datetime import timedelta

    return timedelta(minutes=minutes)


async def test_an_event_that_breaks_the_input_schema_starts_nothing_and_is_dead_lettered(
    app_db_url: str, idle_deployment: str, tmp_path: Path
) -> None:
    """The run's input (``{"event": ...}``) is checked against the definition's input schema
    before the device is claimed: a start that breaks it is rejected with the pointer, final."""
    from flows.definitions import DefinitionPinner
    from tasks.builtin.definitions import DirectorySource

    payload_schema = {"type": "object", "required": ["firmware"]}
    definition = {
        "name": "probe",
        "version": "1",
        "input": {
            "type": "object",
            "properties": {"event": {"type": "object", "properties": {"payload": payload_schema}}},
        },
        "startAt": "Done",
        "states": {"Done": {"type": "succeed"}},
    }
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "probe.json").write_text(json.dumps(definition))
    pinner = DefinitionPinner(DirectorySource(tmp_path / "defs"), tmp_path / "pinned")
    dev = device()
    async with runtime(app_db_url, idle_deployment, definitions=pinner) as rt:
        outcome = await rt.local.send(dev, "hello", {"other": 1}, event_id="e1")
        assert outcome.disposition is Disposition.DEAD_LETTER
        assert outcome.result is not None and outcome.result.action is RouteAction.REJECTED
        assert "/event/payload" in outcome.description
        assert "'firmware' is a required property" in outcome.description
        assert await rt.ledger.current(dev) is None
        assert await rt.ledger.outstanding(dev) == []
        assert await device_runs(dev) == []
        # The same device's next event that satisfies the schema starts its run.
        good = await rt.local.send(dev, "hello", {"firmware": "2.1.0"}, event_id="e2")
        assert good.result is not None and good.result.action is RouteAction.STARTED
    assert len(await device_runs(dev)) == 1
