"""The Service Bus listener end to end: the real azure-servicebus SDK against the fake broker
(or a real namespace when ``ORCH_TEST_SB_CONNECTION_STRING`` is set), the real router, PostgreSQL
and the Prefect server. Runs are created on a deployment nobody executes (busy devices).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from azure.servicebus import NEXT_AVAILABLE_SESSION, ServiceBusMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient
from azure.servicebus.exceptions import OperationTimeoutError
from pydantic import SecretStr

from listeners.events import IncomingEvent, PoisonReason
from listeners.local import IngressRuntime, open_ingress
from listeners.pipeline import Ingress
from listeners.router import Router, RouteResult
from listeners.servicebus import ServiceBusListener
from listeners.settings import IngressSettings, ServiceBusSettings
from tests.integration.test_router import device, device_runs, wait_until
from tests.support.fake_servicebus import Broker, start_broker
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.servicebus, pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def app_db_url(postgres: PostgresServer) -> str:
    return postgres.sqlalchemy_url(postgres.create_database("sbingress"))


@pytest_asyncio.fixture(scope="module")
async def deployment(prefect_server: Any) -> str:
    from tests.support.ingress_probe import FLOW_NAME, ingress_probe

    applied = await ingress_probe.ato_deployment(name="idle")
    await applied.aapply()
    return f"{FLOW_NAME}/idle"


@pytest.fixture
def broker(shared_dir: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Broker]:
    options: dict[str, Any] = dict(getattr(request, "param", {}))
    started = start_broker(shared_dir, tmp_path, **options)
    yield started
    started.stop()


def sb_settings(broker: Broker, **overrides: Any) -> ServiceBusSettings:
    values: dict[str, Any] = {
        "connection_string": SecretStr(broker.connection_string),
        "queue_name": broker.queue,
        "max_concurrent_sessions": 4,
        "max_wait_time": 1.0,
        "operation_timeout": 10.0,
        "shutdown_grace": 20.0,
    }
    values.update(overrides)
    return ServiceBusSettings(**values)


@contextlib.asynccontextmanager
async def ingress_runtime(app_db_url: str, deployment: str) -> AsyncIterator[IngressRuntime]:
    settings = IngressSettings(workflow="probe", deployment=deployment, prefect_timeout=5)
    async with open_ingress(database_url=app_db_url, settings=settings) as rt:
        yield rt


@contextlib.asynccontextmanager
async def running(listener: ServiceBusListener) -> AsyncIterator[ServiceBusListener]:
    task = asyncio.create_task(listener.run())
    try:
        yield listener
    finally:
        listener.stop()
        await asyncio.wait_for(task, timeout=60)


def body(dev: str, name: str, event_id: str | None = None, **payload: Any) -> str:
    document: dict[str, Any] = {"deviceId": dev, "name": name, "payload": payload}
    if event_id:
        document["eventId"] = event_id
    return json.dumps(document)


async def send(broker: Broker, *messages: ServiceBusMessage) -> None:
    async with (
        ServiceBusClient.from_connection_string(broker.connection_string) as client,
        client.get_queue_sender(broker.queue) as sender,
    ):
        await sender.send_messages(list(messages))


def message(text: str, session: str, message_id: str | None = None) -> ServiceBusMessage:
    return ServiceBusMessage(text, session_id=session, message_id=message_id or uuid.uuid4().hex)


async def dead_letters(broker: Broker, expected: int) -> list[Any]:
    """Receive (and complete) ``expected`` dead letters, waiting up to the deadline."""
    found: list[Any] = []
    async with (
        ServiceBusClient.from_connection_string(broker.connection_string) as client,
        client.get_queue_receiver(
            broker.queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=2
        ) as receiver,
    ):

        async def more() -> bool:
            for msg in await receiver.receive_messages(max_message_count=10, max_wait_time=1):
                found.append(msg)
                await receiver.complete_message(msg)
            return len(found) >= expected

        await wait_until(more, f"{expected} dead letters")
    return found


async def queue_is_empty(broker: Broker) -> bool:
    async with ServiceBusClient.from_connection_string(broker.connection_string) as client:
        try:
            async with client.get_queue_receiver(
                broker.queue, session_id=NEXT_AVAILABLE_SESSION, max_wait_time=1
            ) as receiver:
                # A session is accepted only when one holds messages.
                return not isinstance(receiver.session.session_id, str)
        except OperationTimeoutError:
            return True


async def recorded(rt: IngressRuntime, dev: str) -> list[Any]:
    return await rt.events._events.list(dev)  # the store's own view of the device


# -- the happy path, duplicates, poison ---------------------------------------------------------


async def test_messages_are_recorded_routed_and_completed(
    broker: Broker, app_db_url: str, deployment: str
) -> None:
    devices = [device() for _ in range(3)]
    await send(
        broker,
        *(message(body(d, "telemetry", t=i), d) for d in devices for i in range(3)),
    )
    async with ingress_runtime(app_db_url, deployment) as rt:
        listener = ServiceBusListener(sb_settings(broker), rt.ingress)
        async with running(listener):

            async def all_recorded() -> bool:
                return all([len(await recorded(rt, d)) == 3 for d in devices])

            await wait_until(all_recorded, "9 events recorded")
            await wait_until(lambda: _true(listener.stats["complete"] == 9), "9 completions")
        for d in devices:
            assert len(await device_runs(d)) == 1
    assert await queue_is_empty(broker)


async def _true(value: bool) -> bool:
    return value


async def test_duplicates_are_recorded_once_and_start_one_run(
    broker: Broker, app_db_url: str, deployment: str
) -> None:
    dev = device()
    # The producer retried with new message ids; the event id is what identifies the event.
    await send(broker, *(message(body(dev, "boot", event_id="boot-1"), dev) for _ in range(3)))
    async with ingress_runtime(app_db_url, deployment) as rt:
        listener = ServiceBusListener(sb_settings(broker), rt.ingress)
        async with running(listener):
            await wait_until(lambda: _true(listener.stats["complete"] == 3), "3 completions")
        assert [e.event_id for e in await recorded(rt, dev)] == ["boot-1"]
    assert len(await device_runs(dev)) == 1


@pytest.mark.parametrize("broker", [{"max_size": 64 * 1024}], indirect=True, ids=[""])
async def test_poison_messages_are_dead_lettered_at_once_with_a_reason(
    broker: Broker, app_db_url: str, deployment: str
) -> None:
    dev = device()
    # One send per message: what a batch can carry is not what this test is about.
    for poison in (
        message("{not json", dev, "unparseable"),
        message(json.dumps({"deviceId": dev, "payload": {}}), dev, "no-name"),
        message(body("someone-else", "boot"), dev, "mismatch"),
        message(body(dev, "big", blob="x" * 4096), dev, "too-large"),
        message("[" * 100 + "]" * 100, dev, "deep"),
        message(body(dev, "boot", event_id="good"), dev, "good"),
    ):
        await send(broker, poison)
    async with ingress_runtime(app_db_url, deployment) as rt:
        settings = sb_settings(broker, max_message_bytes=2048)
        ingress = Ingress(rt.router, max_message_bytes=settings.max_message_bytes)
        listener = ServiceBusListener(settings, ingress)
        async with running(listener):
            letters = await dead_letters(broker, 5)
        reasons = {str(m.message_id): m.dead_letter_reason for m in letters}
        assert reasons == {
            "unparseable": PoisonReason.UNPARSEABLE,
            "no-name": PoisonReason.SCHEMA,
            "mismatch": PoisonReason.SESSION_MISMATCH,
            "too-large": PoisonReason.TOO_LARGE,
            "deep": PoisonReason.UNPARSEABLE,
        }
        assert all(m.dead_letter_error_description for m in letters)
        assert all((m.delivery_count or 0) <= 1 for m in letters)  # at once, not after retries
        assert [e.event_id for e in await recorded(rt, dev)] == ["good"]


class Exploding:
    """The real router, except that events named "explode" fail as a transient error would."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.attempts = 0

    async def handle_many(self, events: Sequence[IncomingEvent], /) -> list[RouteResult]:
        return [await self.handle(event) for event in events]

    async def handle(self, event: IncomingEvent, /) -> RouteResult:
        if event.name == "explode":
            self.attempts += 1
            raise ConnectionError("database went away")
        return await self.router.handle(event)


@pytest.mark.parametrize("broker", [{"max_delivery": 3}], indirect=True, ids=[""])
async def test_a_message_failing_every_time_reaches_the_dead_letter_queue(
    broker: Broker, app_db_url: str, deployment: str
) -> None:
    dev = device()
    await send(broker, message(body(dev, "explode"), dev, "boom"))
    async with ingress_runtime(app_db_url, deployment) as rt:
        exploding = Exploding(rt.router)
        # No retry inside the lock: each failure is an abandon (a delivery).
        ingress = Ingress(exploding, max_message_bytes=256 * 1024, transient_budget_seconds=0)
        listener = ServiceBusListener(sb_settings(broker), ingress)
        async with running(listener):
            (letter,) = await dead_letters(broker, 1)
        assert letter.dead_letter_reason == "MaxDeliveryCountExceeded"
        if broker.fake:
            assert exploding.attempts == 3
            assert listener.stats["abandon"] == 3


class FailsOnce:
    """The real router, except that the first batch holding an event named "flaky" fails whole
    (before anything is recorded), as a database outage would."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.failed = False

    async def handle_many(self, events: Sequence[IncomingEvent], /) -> list[RouteResult]:
        if not self.failed and any(event.name == "flaky" for event in events):
            self.failed = True
            raise ConnectionError("database went away")
        return await self.router.handle_many(events)


async def test_a_transient_failure_is_tried_again_with_the_message_locked_not_abandoned(
    broker: Broker, app_db_url: str, deployment: str
) -> None:
    # A database restart must not spend the message's deliveries (ten are gone in seconds).
    dev = device()
    await send(broker, message(body(dev, "flaky", event_id="flaky-1"), dev, "flaky-1"))
    async with ingress_runtime(app_db_url, deployment) as rt:
        fails_once = FailsOnce(rt.router)
        ingress = Ingress(fails_once, max_message_bytes=256 * 1024)
        listener = ServiceBusListener(sb_settings(broker), ingress)
        async with running(listener):
            await wait_until(lambda: _true(listener.stats["complete"] == 1), "completion")
        assert fails_once.failed and listener.stats["abandon"] == 0
        assert [e.event_id for e in await recorded(rt, dev)] == ["flaky-1"]


async def test_an_abandoned_batch_comes_back_in_order_and_poison_beside_it_is_dead_lettered(
    broker: Broker, app_db_url: str, deployment: str
) -> None:
    dev = device()
    names = ["boot", "telemetry", "flaky", "telemetry", "telemetry", "telemetry"]
    ids = [f"ordered-{n}" for n in range(len(names))]
    messages = [
        message(body(dev, name, event_id=i), dev, i) for name, i in zip(names, ids, strict=True)
    ]
    messages.insert(3, message("{not json", dev, "poison"))
    await send(broker, *messages)
    async with ingress_runtime(app_db_url, deployment) as rt:
        fails_once = FailsOnce(rt.router)
        ingress = Ingress(fails_once, max_message_bytes=256 * 1024, transient_budget_seconds=0)
        listener = ServiceBusListener(sb_settings(broker), ingress)
        async with running(listener):
            await wait_until(lambda: _true(listener.stats["complete"] == len(ids)), "completions")
            (letter,) = await dead_letters(broker, 1)
        assert fails_once.failed and listener.stats["abandon"] >= 1
        assert str(letter.message_id) == "poison"
        assert (letter.delivery_count or 0) <= 1  # at once, not after the batch's retries
        stored = await recorded(rt, dev)
        # Recorded in the order sent although their batch was abandoned and redelivered.
        assert [e.event_id for e in stored] == ids
        assert [e.sequence for e in stored] == list(range(1, len(ids) + 1))
    assert len(await device_runs(dev)) == 1
    assert await queue_is_empty(broker)


# -- crashes, lock loss, shutdown ----------------------------------------------------------------


def listener_process(
    broker: Broker,
    app_db_url: str,
    deployment: str,
    hold_dir: Path,
    prefect_env: dict[str, str],
    sessions: int = 2,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **prefect_env,
        "ORCH_SB_CONNECTION_STRING": broker.connection_string,
        "ORCH_SB_QUEUE_NAME": broker.queue,
        "ORCH_SB_MAX_WAIT_TIME": "1",
        "ORCH_SB_MAX_CONCURRENT_SESSIONS": str(sessions),
        "ORCH_INGRESS_WORKFLOW": "probe",
        "ORCH_INGRESS_DEPLOYMENT": deployment,
        "ORCH_DB_URL": app_db_url,
        "ORCH_TEST_HOLD_DIR": str(hold_dir),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.listener_proc"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def file_exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


@pytest.mark.parametrize("broker", [{"lock_duration": 3}], indirect=True, ids=[""])
async def test_a_listener_killed_mid_message_loses_nothing_and_starts_one_run(
    broker: Broker, app_db_url: str, deployment: str, tmp_path: Path, prefect_server: Any
) -> None:
    dev = device()
    await send(broker, message(body(dev, "boot", event_id="kill-1", hold=True), dev))
    # One session loop: a second one would have a session attach pending at the kill, and the
    # fake broker (../shared, read-only here) dies on a KeyError when a connection with a pending
    # attach drops (try_pending looks up a link release_link already removed).
    process = listener_process(
        broker, app_db_url, deployment, tmp_path, prefect_server.env, sessions=1
    )
    try:
        # Recorded and routed, not yet completed: kill it there.
        await wait_until(lambda: file_exists(tmp_path / "kill-1.routed"), "the message in flight")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    (tmp_path / "kill-1.release").touch()  # the next delivery passes straight through
    async with ingress_runtime(app_db_url, deployment) as rt:
        listener = ServiceBusListener(sb_settings(broker), rt.ingress)
        async with running(listener):
            await wait_until(lambda: _true(listener.stats["complete"] == 1), "the redelivery")
        assert [e.event_id for e in await recorded(rt, dev)] == ["kill-1"]
    assert (tmp_path / "kill-1.routed").read_text() == "recorded"
    assert len(await device_runs(dev)) == 1
    assert await queue_is_empty(broker)


async def test_sigterm_finishes_the_message_in_flight_then_exits(
    broker: Broker, app_db_url: str, deployment: str, tmp_path: Path, prefect_server: Any
) -> None:
    dev = device()
    await send(broker, message(body(dev, "boot", event_id="term-1", hold=True), dev))
    process = listener_process(broker, app_db_url, deployment, tmp_path, prefect_server.env)
    try:
        await wait_until(lambda: file_exists(tmp_path / "term-1.routed"), "the message in flight")
        process.send_signal(signal.SIGTERM)
        (tmp_path / "term-1.release").touch()
        output, _ = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    assert "listener stopped cleanly" in text and "'complete': 1" in text
    assert f"device={dev}" in text and "action=started" in text
    assert await queue_is_empty(broker)


class Stalling:
    """The real router, but the first delivery of a "stall" event hangs until it was redelivered
    elsewhere (its session lock expired meanwhile)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.deliveries = 0
        self.redelivered = asyncio.Event()

    async def handle_many(self, events: Sequence[IncomingEvent], /) -> list[RouteResult]:
        return [await self.handle(event) for event in events]

    async def handle(self, event: IncomingEvent, /) -> RouteResult:
        result = await self.router.handle(event)
        if event.name == "stall":
            self.deliveries += 1
            if self.deliveries == 1:
                await self.redelivered.wait()
            else:
                self.redelivered.set()
        return result


@pytest.mark.parametrize("broker", [{"lock_duration": 2}], indirect=True, ids=[""])
async def test_session_lock_loss_drops_the_work_and_the_message_comes_back(
    broker: Broker, app_db_url: str, deployment: str
) -> None:
    if not broker.fake:
        pytest.skip("needs the fake broker's short lock duration")
    dev = device()
    await send(broker, message(body(dev, "stall", event_id="stall-1"), dev))
    async with ingress_runtime(app_db_url, deployment) as rt:
        stalling = Stalling(rt.router)
        ingress = Ingress(stalling, max_message_bytes=256 * 1024)
        # Renew for no longer than a moment: the session lock then expires under the handler.
        listener = ServiceBusListener(sb_settings(broker), ingress, lock_renewal_seconds=0.5)
        async with running(listener):
            await wait_until(lambda: _true(listener.stats["complete"] == 1), "the redelivery")
            await wait_until(lambda: _true(listener.stats["lock_lost"] >= 1), "the lost lock")
        assert stalling.deliveries == 2
        assert [e.event_id for e in await recorded(rt, dev)] == ["stall-1"]
    assert len(await device_runs(dev)) == 1
    assert await queue_is_empty(broker)
