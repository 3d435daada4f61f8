"""The plain-text output of ``deadletters process``, ``send-event`` and ``listen``, as a user runs
them (subprocesses): a newline in a device id, session id or event name forges no line, and a
listener whose database went away logs one line per retry instead of a traceback.

Real parts: the fake Service Bus (real SDK), the Prefect server and PostgreSQL of the session.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient

from tests.integration.test_deadletters import dead_letter
from tests.support.fake_servicebus import Broker, start_broker
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
FORGED = "2026-01-01 00:00:00,000 ERROR listeners.servicebus forged"
DEADLINE = 90.0


@pytest.fixture
def broker(shared_dir: Path, tmp_path: Path) -> Iterator[Broker]:
    started = start_broker(shared_dir, tmp_path)
    yield started
    started.stop()


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "ORCH_OTEL_EXPORTER": "none", "PYTHONPATH": str(REPO)}
    env.update(extra)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _no_forged_line(*outputs: str) -> None:
    for output in outputs:
        for line in output.splitlines():
            assert not line.startswith(FORGED[:10]), f"a forged line: {line!r}\n{output}"


@pytest.mark.servicebus
def test_deadletters_process_escapes_a_newline_in_the_session_id(broker: Broker) -> None:
    device = f"dev-nl\n{FORGED}"
    asyncio.run(dead_letter(broker, device, "poison-nl", f"SchemaViolation\n{FORGED}"))

    done = _cli(
        "deadletters",
        "process",
        env=_env(
            ORCH_SB_CONNECTION_STRING=broker.connection_string, ORCH_SB_QUEUE_NAME=broker.queue
        ),
    )

    assert done.returncode == 0, done.stderr
    _no_forged_line(done.stdout, done.stderr)
    assert f"device=dev-nl\\n{FORGED}" in done.stdout
    assert f"device=dev-nl\\n{FORGED}" in done.stderr  # the log line, escaped as well
    assert "1 dead letters handled" in done.stdout


@pytest.mark.postgres
def test_send_event_escapes_a_newline_in_the_device_and_event_name(
    prefect_server: Any, tmp_path: Path
) -> None:
    env = _env(**prefect_server.env, ORCH_DB_URL=f"sqlite+aiosqlite:///{tmp_path / 'app.db'}")

    done = _cli("send-event", f"dev-nl\n{FORGED}", f"boot\n{FORGED}", env=env)

    # Recorded, or refused by the event schema (ids are patterned): either way said escaped.
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr
    _no_forged_line(done.stdout, done.stderr)
    assert f"device=dev-nl\\n{FORGED}" in done.stdout + done.stderr


async def _send(broker: Broker, device: str) -> None:
    async with (
        ServiceBusClient.from_connection_string(broker.connection_string) as client,
        client.get_queue_sender(broker.queue) as sender,
    ):
        body = json.dumps({"deviceId": device, "name": "boot", "payload": {}})
        await sender.send_messages(ServiceBusMessage(body, session_id=device, message_id="nl-1"))


async def _drop(postgres: PostgresServer, database: str) -> None:
    conn = await asyncpg.connect(postgres.admin_dsn, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await conn.close()


def _wait_for(what: str, probe: Any, process: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if probe():
            return
        if process.poll() is not None:
            raise AssertionError(f"exited ({process.returncode}):\n{log.read_text()}")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {DEADLINE}s\n{log.read_text()[-4000:]}")


@pytest.mark.servicebus
@pytest.mark.postgres
def test_listen_logs_one_line_per_retry_when_its_database_goes_away(
    broker: Broker, postgres: PostgresServer, prefect_server: Any, tmp_path: Path
) -> None:
    database = postgres.create_database("h9listen")
    log_path = tmp_path / "listen.log"
    env = _env(
        **prefect_server.env,
        ORCH_DB_URL=postgres.sqlalchemy_url(database),
        ORCH_SB_CONNECTION_STRING=broker.connection_string,
        ORCH_SB_QUEUE_NAME=broker.queue,
        ORCH_SB_MAX_WAIT_TIME="1",
        ORCH_SB_SHUTDOWN_GRACE="5",
        ORCH_INGRESS_RECONCILE_INTERVAL="0.2",
    )
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "listen"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(
            "listening", lambda: "listening on queue" in log_path.read_text(), process, log_path
        )
        # A session id with a newline first: the listener's line about it is one line.
        asyncio.run(_send(broker, f"dev-nl\n{FORGED}"))
        _wait_for(
            "the message handled",
            lambda: f"device=dev-nl\\n{FORGED}" in log_path.read_text(),
            process,
            log_path,
        )
        asyncio.run(_drop(postgres, database))
        _wait_for(
            "three failed reconciler passes",
            lambda: log_path.read_text().count("reconciler pass failed") >= 3,
            process,
            log_path,
        )
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    text = log_path.read_text()
    _no_forged_line(text)
    failures = [line for line in text.splitlines() if "reconciler pass failed" in line]
    at = text.find("Traceback")
    assert at < 0, text[max(0, at - 400) : at + 6000]
    assert all(f'"{database}" does not exist' in line or "Error" in line for line in failures)
