"""The resumer (``flows.timers``), the one that wakes suspended runs: the worker's built-in loop.

On a real Prefect server and PostgreSQL. The runs belong to a deployment nothing executes; the
tests suspend them the way a run does (``Suspended`` with its wait's key) and register their waits
in the app database, which is all the resumer reads. What is checked: it is the only resumer (no
scheduled, concurrency-limited deployment, whose slot a server restart once left taken for good);
a run another resumer resumed first (409) is a debug line, not an ERROR traceback, and the rest of
the batch goes on; one INFO line per run it resumes and nothing when idle; and a Prefect server
restart while runs are due costs one warning, after which the loop resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows import runtime
from flows.timers import Resumer
from tests.integration.test_router import wait_until
from tests.support.postgres import PostgresServer, free_port
from tests.support.prefect_server import client_env

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]
LOGGER = "flows.timers"


@pytest.fixture
def app_db(postgres: PostgresServer) -> str:
    """An app database of this test's own: the resumer reads every wait in it."""
    return postgres.sqlalchemy_url(postgres.create_database("resumer"))


@pytest.fixture
async def resources(app_db: str) -> AsyncIterator[runtime.Resources]:
    # The flow tests' session resumer shares this event loop and reads whatever database the
    # runtime is configured with: it would resolve these tests' waits as "gone" (their runs live
    # on other Prefect servers). These tests are about one resumer: stop it meanwhile.
    from tests.integration.test_flow_harness import SESSION_RESUMERS

    for other in SESSION_RESUMERS:
        await other.stop()
    runtime.configure(database_url=app_db)
    try:
        yield await runtime.get_resources()
    finally:
        await runtime.reset()
        for other in SESSION_RESUMERS:
            other.start()


async def _idle_runs(count: int, name: str) -> list[uuid.UUID]:
    """Runs of a deployment nothing executes (they stay where the test puts them)."""
    from prefect.client.orchestration import get_client

    from tests.support.ingress_probe import ingress_probe

    deployment_id = await (await ingress_probe.ato_deployment(name=name)).aapply()
    async with get_client() as client:
        return [
            (
                await client.create_flow_run_from_deployment(
                    deployment_id, parameters={"workflow": "probe", "input": {}}
                )
            ).id
            for _ in range(count)
        ]


async def _suspend(run_id: uuid.UUID, key: str, *, with_input: bool = False) -> dict[str, str]:
    """Put the run where ``suspend_flow_run(key=...)`` leaves it; the keyset of its input."""
    from prefect.client.orchestration import get_client
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.states import Suspended

    from flows.wake import WakeInput

    state: Any = Suspended(timeout_seconds=3600, pause_key=key)
    keyset: Any = {}
    if with_input:
        keyset = keyset_from_paused_state(state)
        state.state_details.run_input_keyset = keyset
    async with get_client() as client:
        await client.set_flow_run_state(run_id, state, force=True)
    if with_input:
        await WakeInput.asave(keyset, flow_run_id=run_id)
    return dict(keyset)


async def _state_name(run_id: uuid.UUID) -> str:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        run = await client.read_flow_run(run_id)
    return (run.state.name or "") if run.state else ""


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def log() -> Iterator[list[logging.LogRecord]]:
    """What the resumer logs, at every level (on its own logger: Prefect reconfigures the root
    logger's handlers when it first sets up logging, which drops pytest's capture)."""
    logger = logging.getLogger(LOGGER)
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _records(log: list[logging.LogRecord], level: int) -> list[logging.LogRecord]:
    return [r for r in log if r.levelno >= level]


def test_the_resumer_is_not_a_scheduled_deployment() -> None:
    """A deployment's concurrency slot is a lease the server keeps in memory: a restart lost it
    and the scheduled resumer queued behind it for good. The worker's loop is the one resumer."""
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    resumers = [d["name"] for d in declared if d["entrypoint"].startswith("flows/timers.py")]
    assert resumers == []


async def test_a_run_another_resumer_resumed_first_is_a_debug_line_and_the_batch_goes_on(
    prefect_server: Any, resources: runtime.Resources, log: list[logging.LogRecord]
) -> None:
    from prefect.client.orchestration import get_client

    raced, free = await _idle_runs(2, "resumer-race")
    keyset = await _suspend(raced, "wait-a", with_input=True)
    await _suspend(free, "wait-b", with_input=True)
    # Another resumer's input landed between our read and our resume: the server's insert of
    # ours conflicts, and it answers 409.
    async with get_client() as client:
        await client.create_flow_run_input(raced, keyset["response"], '{"kind": "timer"}')
    await resources.waits.register(str(raced), "wait-a", None, None, due_at=_past())
    await resources.waits.register(str(free), "wait-b", None, None, due_at=_past())

    resumed = await Resumer().tick()

    assert resumed == 1
    assert await _state_name(free) == "Resuming"
    assert _records(log, logging.ERROR) == []
    assert not [r for r in log if r.exc_info]
    assert [r for r in _records(log, logging.DEBUG) if str(raced) in r.getMessage()]


async def test_the_resumer_says_one_line_per_run_it_resumes_and_nothing_when_idle(
    prefect_server: Any, resources: runtime.Resources, log: list[logging.LogRecord]
) -> None:
    (run_id,) = await _idle_runs(1, "resumer-quiet")
    await _suspend(run_id, "wait-quiet")

    assert await Resumer().tick() == 0
    assert _records(log, logging.INFO) == []

    await resources.waits.register(str(run_id), "wait-quiet", None, None, due_at=_past())
    assert await Resumer().tick() == 1
    (line,) = _records(log, logging.INFO)
    assert line.levelno == logging.INFO and str(run_id) in line.getMessage()


# -- a Prefect server restart --------------------------------------------------------------------


@dataclass
class RestartableServer:
    """A Prefect server of this test's own, on PostgreSQL, that can be stopped and started again
    on the same port and database."""

    env: dict[str, str]
    port: int
    home: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        prefect = str(Path(sys.executable).with_name("prefect"))
        with (self.home / "server.log").open("ab") as log:
            self.process = subprocess.Popen(
                [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.home / "server.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise AssertionError("the Prefect server was not healthy within 120s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture
def own_server(postgres: PostgresServer, tmp_path: Path) -> Iterator[RestartableServer]:
    port = free_port()
    home = tmp_path / "prefect"
    home.mkdir()
    env = dict(os.environ)
    env.update(client_env(f"http://127.0.0.1:{port}/api", home))
    env.pop("PREFECT_API_URL")  # the server is nobody's client
    env.update(
        {
            "PREFECT_SERVER_UI_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            # A small pool: PostgreSQL's 100 connections are shared with every other test run.
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "3",
            "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "2",
            "PREFECT_API_DATABASE_CONNECTION_URL": postgres.sqlalchemy_url(
                postgres.create_database("prefect_restart")
            ),
        }
    )
    server = RestartableServer(env, port, home)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_the_resumer_picks_up_again_after_the_prefect_server_restarts(
    own_server: RestartableServer,
    resources: runtime.Resources,
    log: list[logging.LogRecord],
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: own_server.api_url}):
        runs = await _idle_runs(4, "resumer-restart")
        for index, run_id in enumerate(runs):
            await _suspend(run_id, f"wait-{index}")
        before, after = runs[:2], runs[2:]
        stop = asyncio.Event()
        loop = asyncio.create_task(Resumer(tick_seconds=0.2, call_timeout=3).run(stop))
        try:
            for index, run_id in enumerate(before):
                await resources.waits.register(str(run_id), f"wait-{index}", None, None, _past())

            async def resumed(run_ids: list[uuid.UUID]) -> bool:
                return all([await _state_name(r) == "Resuming" for r in run_ids])

            await wait_until(lambda: resumed(before), "the first runs to be resumed")

            await asyncio.to_thread(own_server.stop)
            # Due while the server is down.
            for index, run_id in enumerate(after, start=2):
                await resources.waits.register(str(run_id), f"wait-{index}", None, None, _past())

            async def noticed() -> bool:
                return bool(_records(log, logging.WARNING))

            await wait_until(noticed, "the resumer to notice the server is gone")
            await asyncio.to_thread(own_server.start)

            try:
                await wait_until(lambda: resumed(after), "the resumer to pick up after the restart")
            except AssertionError as exc:
                states = [await _state_name(r) for r in after]
                said = [r.getMessage() for r in log]
                raise AssertionError(f"{exc}: states {states}; the resumer said {said}") from None
            # (A wait can stay open here though its run was resumed: a resume the server made
            # while our call timed out. A real run resolves its own wait when it replays.)
        finally:
            stop.set()
            await asyncio.wait_for(loop, timeout=30)

    assert _records(log, logging.ERROR) == []
    assert not [r for r in log if r.exc_info]
    # One warning for the outage, not one per tick.
    assert len(_records(log, logging.WARNING)) == 1, [
        r.getMessage() for r in _records(log, logging.WARNING)
    ]


def _past() -> Any:
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(seconds=1)


async def test_a_run_waiting_again_at_the_same_wait_is_resumed(
    prefect_server: Any, resources: runtime.Resources, log: list[logging.LogRecord]
) -> None:
    """A run that could not use a resume suspends again at the same wait under ``<key>-r<n>``
    (Prefect refuses a pause key twice): its timer still wakes it. A run paused at another wait
    (another branch) is left alone."""
    again, elsewhere = await _idle_runs(2, "resumer-again")
    await _suspend(again, "wait-x-r1")
    await _suspend(elsewhere, "wait-other-branch")
    await resources.waits.register(str(again), "wait-x", None, None, due_at=_past())
    await resources.waits.register(str(elsewhere), "wait-y", None, None, due_at=_past())

    assert await Resumer().tick() == 1
    assert await _state_name(again) == "Resuming"
    assert await _state_name(elsewhere) == "Suspended"
