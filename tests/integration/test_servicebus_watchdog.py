"""The Service Bus listener under a stalled connection and under work longer than the lock.

The real azure-servicebus SDK against the fake broker, the real ingress (router, PostgreSQL,
Prefect). A stalled connection is real: the listener talks to the broker through a TCP proxy that
the test stops forwarding (connections stay open, bytes go nowhere). Slow work is real too: the
test holds the device's row in PostgreSQL (inserted, not committed), which recording waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import asyncpg
import pytest

from listeners.events import IncomingMessage
from listeners.pipeline import Ingress, Outcome
from listeners.servicebus import ServiceBusListener
from tests.integration import test_servicebus_listener as sbl
from tests.integration.test_router import device, device_runs, wait_until
from tests.integration.test_servicebus_listener import (
    _true,
    body,
    ingress_runtime,
    message,
    queue_is_empty,
    recorded,
    running,
    sb_settings,
    send,
)
from tests.support.fake_servicebus import Broker
from tests.support.postgres import free_port

pytestmark = [pytest.mark.integration, pytest.mark.servicebus, pytest.mark.postgres]

# The listener suite's fixtures: the fake broker (per test), the app database, the idle deployment.
broker = sbl.broker
app_db_url = sbl.app_db_url
deployment = sbl.deployment


class StallingProxy:
    """A TCP proxy to the broker that can stall: while stalled it forwards no byte on the
    connections it has and holds new ones open without connecting them upstream (a half-open
    network path). ``resume`` cuts what was held and forwards new connections again.

    Held upstream connections stay open until ``resume``: the fake broker (../shared, read-only
    here) dies on a KeyError when a connection with a pending session attach drops, and a pending
    attach is answered by the broker itself within ``max_wait_time``.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.connections = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._held: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        for writer in self._held:
            writer.close()
        self._held.clear()
        self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        if not self._flowing.is_set():
            self._held.add(writer)  # accepted, never connected upstream
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while True:
                    if not self._flowing.is_set():
                        self._held.update((writer, up_writer))
                        return  # stalled: stop reading; resume() cuts both sides
                    data = await src.read(65536)
                    if not data:
                        break
                    if not self._flowing.is_set():
                        self._held.update((writer, up_writer))
                        return  # the bytes read as the stall began go nowhere
                    dst.write(data)
                    await dst.drain()
            dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        self.resume()
        if self._server is not None:
            self._server.close()


def port_of(target: Broker) -> int:
    endpoint = target.connection_string.split(";", 1)[0]
    return int(endpoint.rsplit(":", 1)[1])


def through(target: Broker, proxy: StallingProxy) -> Broker:
    connection_string = target.connection_string.replace(
        f"localhost:{port_of(target)}", f"localhost:{proxy.port}"
    )
    return Broker(connection_string, target.queue, target.fake)


async def test_a_stalled_connection_is_noticed_logged_and_recovered(
    broker: Broker, app_db_url: str, deployment: str, caplog: pytest.LogCaptureFixture
) -> None:
    if not broker.fake:
        pytest.skip("needs a broker behind a local proxy")
    caplog.set_level(logging.WARNING, logger="listeners.servicebus")
    proxy = StallingProxy(port_of(broker))
    await proxy.start()
    dev = device()
    # Small deadlines: a receive is given 1 + 2 s, an open 1 + 2 s, the watchdog 7 s of silence.
    settings = sb_settings(
        through(broker, proxy),
        max_concurrent_sessions=1,
        max_wait_time=1.0,
        operation_timeout=2.0,
        shutdown_grace=5.0,
    )
    try:
        async with ingress_runtime(app_db_url, deployment) as rt:
            listener = ServiceBusListener(settings, rt.ingress)
            async with running(listener):
                await send(broker, message(body(dev, "boot", event_id="before"), dev))
                await wait_until(lambda: _true(listener.stats["complete"] == 1), "the first", 30)
                assert proxy.connections >= 1  # it really goes through the proxy

                proxy.stall()
                stalled_at = time.monotonic()

                def noticed() -> int:
                    s = listener.stats
                    return s["receive_failed"] + s["open_stalled"] + s["open_failed"]

                # Every broker call is bounded by max_wait_time + operation_timeout (3 s here);
                # the watchdog's limit is 7 s. Noticing must take no longer than that.
                await wait_until(lambda: _true(noticed() >= 1), "the stall noticed", 15)
                noticed_after = time.monotonic() - stalled_at
                assert noticed_after < listener.stall_limit + 2, noticed_after
                # Opening a new receiver over the stalled path is bounded too: the loop keeps
                # trying (and failing by its deadline) instead of hanging.
                await wait_until(
                    lambda: _true(
                        listener.stats["open_stalled"] + listener.stats["open_failed"] >= 1
                    ),
                    "a reopen over the stalled path to fail by its deadline",
                    20,
                )
                assert any(
                    r.levelno >= logging.WARNING
                    and ("stalled" in r.getMessage() or "failed" in r.getMessage())
                    for r in caplog.records
                ), [r.getMessage() for r in caplog.records]

                proxy.resume()
                await send(broker, message(body(dev, "telemetry", event_id="after"), dev))
                await wait_until(lambda: _true(listener.stats["complete"] == 2), "the second", 30)
            assert [e.event_id for e in await recorded(rt, dev)] == ["before", "after"]
        assert len(await device_runs(dev)) == 1
        assert await queue_is_empty(broker)
    finally:
        await proxy.close()


class Observed:
    """The real ingress; it notes what each delivery looked like (message id, delivery count)."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress
        self.deliveries: list[tuple[str | None, int]] = []

    async def process(self, message: IncomingMessage) -> Outcome:
        return (await self.process_many([message]))[0]

    async def process_many(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        self.deliveries.extend((m.message_id, m.delivery_count) for m in messages)
        return await self.ingress.process_many(messages)


def native_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def waiting_on_a_lock(conn: asyncpg.Connection) -> bool:
    count = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND query LIKE '%orch_record_events%'"
        " AND pid <> pg_backend_pid()"
    )
    return bool(count)


#: The broker's lock. Service Bus allows no less than 5 s, and the SDK's renewer cannot keep a
#: shorter one: it renews when less than ``int(seconds left at registration) * 0.75`` s remain and
#: looks once a second, so a 2 s lock (checked at 1.9, 0.9, then -0.1 s left) is never renewed.
LOCK_SECONDS = 5.0


@pytest.mark.parametrize("broker", [{"lock_duration": LOCK_SECONDS}], indirect=True, ids=[""])
async def test_work_longer_than_the_lock_is_renewed_and_completed_once(
    broker: Broker, app_db_url: str, deployment: str
) -> None:
    if not broker.fake:
        pytest.skip("needs the fake broker's short lock duration")
    dev = device()
    async with ingress_runtime(app_db_url, deployment) as rt:
        observed = Observed(Ingress(rt.router, max_message_bytes=256 * 1024))
        listener = ServiceBusListener(
            sb_settings(broker, max_concurrent_sessions=1, max_wait_time=1.0), observed
        )
        async with running(listener):
            holder = await asyncpg.connect(native_dsn(app_db_url), timeout=10)
            watcher = await asyncpg.connect(native_dsn(app_db_url), timeout=10)
            try:
                # The device's row, inserted and not committed: recording the device's event
                # (insert-or-ignore of this row, then lock it) waits until the test lets go.
                transaction = holder.transaction()
                await transaction.start()
                await holder.execute(
                    "INSERT INTO devices (device_id, count, last_sequence, overflowed,"
                    " first_seen_at, last_activity_at) VALUES ($1, 0, 0, 0, now(), now())",
                    dev,
                )
                await send(broker, message(body(dev, "telemetry", event_id="slow"), dev, "m-slow"))
                await wait_until(lambda: waiting_on_a_lock(watcher), "recording to wait", 20)
                # The batch is now blocked in the database: keep it there for well over a lock
                # duration (the broker expires an unrenewed session lock after one).
                held_until = time.monotonic() + 2.5 * LOCK_SECONDS
                while time.monotonic() < held_until:
                    assert await waiting_on_a_lock(watcher), "recording stopped waiting early"
                    assert listener.stats["complete"] == 0
                    await asyncio.sleep(0.2)
                await transaction.rollback()
            finally:
                await holder.close()
                await watcher.close()

            await wait_until(lambda: _true(listener.stats["complete"] == 1), "the slow one", 30)
            # Taken before the session goes idle and is closed (a renewal racing that close may
            # report a failure for a session that is already let go).
            at_completion = Counter(listener.stats)
            # A lost lock is counted when the batch returns; a redelivery would be recorded as a
            # duplicate and completed again: give it a moment to show.
            await asyncio.sleep(1.0)
            stats = Counter(listener.stats)
        assert at_completion["lock_renew_failed"] == 0, at_completion
        assert stats["complete"] == 1, stats
        assert stats["lock_lost"] == 0, stats
        assert stats["settle_failed"] == 0 and stats["abandon"] == 0, stats
        # Delivered once, its delivery count unchanged (the fake counts earlier failed attempts).
        assert observed.deliveries == [("m-slow", 0)], observed.deliveries
        assert [e.event_id for e in await recorded(rt, dev)] == ["slow"]
    assert len(await device_runs(dev)) == 1
    assert await queue_is_empty(broker)
