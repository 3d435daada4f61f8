"""The outbox reconciler runs wherever events enter and in the worker, not only in the listener.

A start deferred while Prefect was down (events through the API or ``send-event``, no Service Bus
listener anywhere) must still happen once Prefect is back, or the device stays stranded: its later
events are answered "busy (a start is pending)" for good. Real processes on a real Prefect server
and PostgreSQL: ``orchestration serve-api`` reaching Prefect through a TCP proxy the test cuts,
and ``orchestration worker`` picking up a start that an in-process ingress deferred.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from listeners.router import RouteAction
from store.db import Database
from store.runs import DeviceRunStore
from tests.integration.test_router import (  # noqa: F401 - module fixtures used by name
    SwitchableProxy,
    app_db_url,
    device,
    device_runs,
    idle_deployment,
    runtime,
    wait_until,
)
from tests.support.postgres import free_port

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROBE = {
    "name": "probe",
    "version": "1",
    "startAt": "Done",
    "states": {"Done": {"type": "succeed", "output": {}}},
}


@pytest.fixture
async def ledger(app_db_url: str) -> AsyncIterator[DeviceRunStore]:  # noqa: F811 - the fixture
    db = await Database.connect(app_db_url)
    try:
        yield DeviceRunStore(db)
    finally:
        await db.close()


def _env(prefect_server: Any, app_db: str, deployment: str, tmp_path: Path) -> dict[str, str]:
    """What an `orchestration` process of these tests shares: Prefect, the app database, the
    ingress settings (workflow `probe` on the idle deployment) and a fast reconciler."""
    (tmp_path / "defs").mkdir(exist_ok=True)
    (tmp_path / "defs" / "probe.json").write_text(json.dumps(PROBE))
    env = {**os.environ, **prefect_server.env}
    env.update(
        {
            "ORCH_DB_URL": app_db,
            "ORCH_INGRESS_WORKFLOW": "probe",
            "ORCH_INGRESS_DEPLOYMENT": deployment,
            "ORCH_INGRESS_RECONCILE_INTERVAL": "0.5",
            "ORCH_INGRESS_PREFECT_TIMEOUT": "3",
            "ORCH_DEFINITIONS_DIRECTORY": str(tmp_path / "defs"),
            "ORCH_FLOW_DEFINITIONS_DIR": str(tmp_path / "pinned"),
            "PYTHONPATH": str(REPO),
            "ORCH_OTEL_EXPORTER": "none",
        }
    )
    return env


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


async def _drained(ledger: DeviceRunStore, dev: str) -> bool:
    current = await ledger.current(dev)
    bound = current is not None and current.run_id is not None
    return bound and await ledger.outstanding(dev) == []


async def test_the_api_finishes_a_start_it_deferred_while_prefect_was_down(
    prefect_server: Any,
    app_db_url: str,  # noqa: F811 - the fixture
    idle_deployment: str,  # noqa: F811 - the fixture
    ledger: DeviceRunStore,
    tmp_path: Path,
) -> None:
    upstream = int(prefect_server.api_url.rsplit(":", 1)[1].split("/")[0])
    proxy = SwitchableProxy(upstream)
    await proxy.start()
    env = _env(prefect_server, app_db_url, idle_deployment, tmp_path)
    port = free_port()
    env.update(
        {
            "PREFECT_API_URL": f"http://127.0.0.1:{proxy.port}/api",
            "ORCH_API_ALLOW_ANONYMOUS": "true",
            "ORCH_API_DEPLOYMENT": idle_deployment,
            "ORCH_API_PREFECT_TIMEOUT": "3",
        }
    )
    log = tmp_path / "api.log"
    api = _spawn(["serve-api", "--host", "127.0.0.1", "--port", str(port)], env, log)
    base = f"http://127.0.0.1:{port}"
    dev = device()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:

            async def healthy() -> bool:
                assert api.poll() is None, log.read_text()[-3000:]
                try:
                    return (await http.get("/health")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(healthy, "the API to answer")
            proxy.down()
            sent = await http.post(f"/devices/{dev}/events", json={"name": "hello", "payload": {}})
            assert sent.status_code == 202, sent.text
            assert sent.json()["action"] == RouteAction.DEFERRED.value, sent.json()
            assert [e.action for e in await ledger.outstanding(dev)] == ["start"]

            proxy.up = True  # nothing but the API's own reconciler runs here
            try:
                await wait_until(lambda: _drained(ledger, dev), "the API to make the start")
            except AssertionError:
                raise AssertionError(log.read_text()[-3000:]) from None
            (run,) = await device_runs(dev)
            current = await ledger.current(dev)
            assert current is not None and current.run_id == str(run.id)

            later = await http.post(f"/devices/{dev}/events", json={"name": "tick", "payload": {}})
            assert later.json()["action"] == RouteAction.BUSY.value
            assert later.json()["runId"] == str(run.id), later.json()
    finally:
        await asyncio.to_thread(_stop, api)
        await proxy.close()


async def test_the_worker_finishes_a_start_deferred_by_send_event(
    prefect_server: Any,
    app_db_url: str,  # noqa: F811 - the fixture
    idle_deployment: str,  # noqa: F811 - the fixture
    ledger: DeviceRunStore,
    tmp_path: Path,
) -> None:
    dev = device()
    # The ingress of a short-lived process (send-event's path) finds Prefect down and exits.
    async with runtime(
        app_db_url, idle_deployment, api_url=f"http://127.0.0.1:{free_port()}/api"
    ) as rt:
        outcome = await rt.local.send(dev, "hello", event_id="e1")
        assert outcome.result is not None and outcome.result.action is RouteAction.DEFERRED
    assert [e.action for e in await ledger.outstanding(dev)] == ["start"]

    env = _env(prefect_server, app_db_url, idle_deployment, tmp_path)
    log = tmp_path / "worker.log"
    name = f"reconcile-{uuid.uuid4().hex[:8]}"
    worker = _spawn(["worker", "--deployment", name, "--concurrency", "2"], env, log)
    try:

        async def drained() -> bool:
            assert worker.poll() is None, log.read_text()[-3000:]
            return await _drained(ledger, dev)

        try:
            await wait_until(drained, "the worker to make the start", deadline=120)
        except AssertionError:
            raise AssertionError(log.read_text()[-3000:]) from None
        (run,) = await device_runs(dev)
        assert run.idempotency_key == f"ingress:{dev}:e1"
    finally:
        await asyncio.to_thread(_stop, worker)


async def test_send_event_says_who_finishes_what_it_deferred(
    prefect_server: Any,
    app_db_url: str,  # noqa: F811 - the fixture
    idle_deployment: str,  # noqa: F811 - the fixture
    ledger: DeviceRunStore,
    tmp_path: Path,
) -> None:
    """send-event is short-lived: with Prefect down it records the event, keeps the start in the
    outbox and says that a long-lived process will make it."""
    env = _env(prefect_server, app_db_url, idle_deployment, tmp_path)
    env["PREFECT_API_URL"] = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    dev = device()
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cli.main", "send-event", dev, "hello"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "action=deferred" in done.stdout, done.stdout
    assert "orchestration worker" in done.stderr, done.stderr
    assert [e.action for e in await ledger.outstanding(dev)] == ["start"]
