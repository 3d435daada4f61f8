"""Ingress throughput: record + start-or-route in one process, on PostgreSQL and a real Prefect.

``main(args)`` (wired into ``python -m bench``) starts PostgreSQL (or uses the machine's), a Prefect
server on it and an app database, registers an idle deployment (its runs are created but nobody
executes them: after its first event every device is busy, the common case) and drives
``devices x events`` events through

- ``local``: ``LocalIngress.send_many``, the same pipeline as the listener after the transport,
  with ``--concurrency`` workers each owning a set of devices (per-device order kept, as sessions
  do), each sending its events in batches of ``--batch`` (``--batch 1`` is ``send``, one by one);
- ``servicebus``: the fake broker from ``../shared`` and the real SDK: everything is sent first,
  then the listener with ``--sessions`` session loops drains it, ``--sb-batch`` messages at a time.
  Before that, the same messages go through a bare SDK loop on a fresh broker (same sessions,
  batch, waits and settlement, no parsing, recording or routing): the broker's own ceiling, printed
  beside the listener's rate so that the number can be read (the fake broker is single-threaded
  Python, and every session costs a connection, a link and an idle wait).

It prints events/s, p50/p99 latency of one event (parse + record + route of the batch it was in;
for Service Bus without settlement), and checks the counts: every event stored once, one run per
device, nothing deferred. The Prefect server and the app database both live on PostgreSQL (started
here, or the machine's); the app database is a fresh one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from listeners.events import IncomingMessage
from listeners.local import IngressRuntime, event_message, open_ingress
from listeners.pipeline import Disposition, Ingress, Outcome
from listeners.settings import IngressSettings, ServiceBusSettings

ROOT = Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--events", type=int, default=200, help="events per device")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=125, help="messages per local send_many")
    parser.add_argument("--transport", choices=["local", "servicebus", "both"], default="both")
    parser.add_argument("--sb-devices", type=int, default=200)
    parser.add_argument("--sb-events", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--sb-batch", type=int, default=32, help="messages per session receive")
    parser.add_argument(
        "--sb-idle",
        type=float,
        default=None,
        help="session_idle_wait of the listener and the ceiling loop (default: the setting's)",
    )


class Timed:
    """``Ingress`` with a stopwatch around each message."""

    def __init__(self, ingress: Ingress) -> None:
        self.ingress = ingress
        self.latencies: list[float] = []
        self.outcomes: Counter[str] = Counter()

    async def process(self, message: IncomingMessage) -> Outcome:
        return (await self.process_many([message]))[0]

    async def process_many(self, messages: Sequence[IncomingMessage]) -> list[Outcome]:
        started = time.perf_counter()
        outcomes = await self.ingress.process_many(messages)
        elapsed = time.perf_counter() - started
        self.latencies.extend([elapsed] * len(messages))
        for outcome in outcomes:
            if outcome.result is not None:
                result = outcome.result
                self.outcomes[f"{result.recorded.value}/{result.action.value}"] += 1
            else:
                self.outcomes[outcome.disposition.value] += 1
        return outcomes


def summary(label: str, total: int, seconds: float, latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0
    data = {
        "transport": label,
        "events": total,
        "seconds": round(seconds, 2),
        "eventsPerSecond": round(total / seconds, 1) if seconds else 0.0,
        "p50ms": round(statistics.median(ordered) * 1000, 2) if ordered else 0.0,
        "p99ms": round(p99 * 1000, 2),
    }
    print(
        f"{label:>10}: {total} events in {data['seconds']} s = {data['eventsPerSecond']} events/s;"
        f" p50 {data['p50ms']} ms, p99 {data['p99ms']} ms"
    )
    return data


async def check_counts(
    rt: IngressRuntime, db_url: str, prefix: str, devices: int, events: int, deployment: str
) -> None:
    """Nothing lost, nothing duplicated: stored events, device runs, Prefect runs, outbox."""
    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    dsn = db_url.replace("postgresql+asyncpg://", "postgresql://")
    connection = await asyncpg.connect(dsn)
    try:
        stored = await connection.fetchval(
            "SELECT count(*) FROM device_events WHERE device_id LIKE $1", f"{prefix}%"
        )
        distinct = await connection.fetchval(
            "SELECT count(DISTINCT (device_id, event_id)) FROM device_events "
            "WHERE device_id LIKE $1",
            f"{prefix}%",
        )
        runs = await connection.fetchval(
            "SELECT count(*) FROM device_runs WHERE device_id LIKE $1 AND run_id IS NOT NULL",
            f"{prefix}%",
        )
        pending = await connection.fetchval(
            "SELECT count(*) FROM route_outbox WHERE device_id LIKE $1 AND status = 'pending'",
            f"{prefix}%",
        )
    finally:
        await connection.close()
    async with get_client() as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

        prefect_runs = 0
        for index in range(devices):
            prefect_runs += await client.count_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=[f"device:{prefix}{index}"])
                ),
                deployment_filter=DeploymentFilter(
                    name=DeploymentFilterName(any_=[deployment.split("/")[1]])
                ),
            )
    expected = devices * events
    ok = stored == distinct == expected and runs == devices == prefect_runs and pending == 0
    held = await rt.events.store.count_held(f"{prefix}0")
    ok = ok and held == events
    print(
        f"{'':>10}  counts: stored {stored}/{expected} (distinct {distinct}), device runs {runs},"
        f" Prefect runs {prefect_runs} for {devices} devices, outbox pending {pending}"
        f" -> {'OK' if ok else 'MISMATCH'}"
    )
    if not ok:
        raise SystemExit("ingress bench: counts do not match")


async def run_local(rt: IngressRuntime, args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    timed = Timed(rt.ingress)

    async def worker(index: int) -> None:
        owned = range(index, args.devices, args.concurrency)
        batch: list[IncomingMessage] = []

        async def flush() -> None:
            for outcome in await timed.process_many(batch):
                if outcome.disposition is not Disposition.COMPLETE:
                    raise SystemExit(f"unexpected outcome {outcome}")
            batch.clear()

        for n in range(args.events):
            for d in owned:
                batch.append(
                    event_message(
                        f"{prefix}{d}", "telemetry", {"n": n}, event_id=f"{prefix}{d}-{n}"
                    )
                )
                if len(batch) >= args.batch:
                    await flush()
        if batch:
            await flush()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(min(args.concurrency, args.devices))))
    elapsed = time.perf_counter() - started
    print(f"{'':>10}  outcomes: {dict(timed.outcomes)}")
    data = summary("local", args.devices * args.events, elapsed, timed.latencies)
    await drain_outbox(rt)
    return data


async def drain_outbox(rt: IngressRuntime, deadline: float = 300.0) -> None:
    """Starts deferred to the outbox (Prefect slow or down) are the reconciler's to finish: run
    it until nothing is outstanding, as ``orchestration listen`` does beside the listener."""
    end = time.monotonic() + deadline
    while await rt.ledger.outstanding():
        if time.monotonic() > end:
            return  # the count check reports what is left
        report = await rt.reconciler.run_once(now=datetime.now(UTC) + timedelta(minutes=1))
        if report.started or report.resumed:
            print(f"{'':>10}  reconciler: {report}")
        await asyncio.sleep(0.5)


async def fill_queue(
    connection_string: str, queue: str, prefix: str, devices: int, events: int
) -> None:
    """Send ``events`` messages for each of ``devices`` devices (session = device)."""
    from azure.servicebus import ServiceBusMessage
    from azure.servicebus.aio import ServiceBusClient

    async with (
        ServiceBusClient.from_connection_string(connection_string) as client,
        client.get_queue_sender(queue) as sender,
    ):
        for d in range(devices):
            device = f"{prefix}{d}"
            batch = []
            for n in range(events):
                message = event_message(device, "telemetry", {"n": n}, event_id=f"{device}-{n}")
                batch.append(
                    ServiceBusMessage(
                        message.body, session_id=device, message_id=message.message_id
                    )
                )
            await sender.send_messages(batch)


async def broker_ceiling(connection_string: str, settings: ServiceBusSettings, total: int) -> float:
    """Messages per second the broker and the SDK settle with nothing of ours in the way.

    The listener's loop shape without the listener: ``max_concurrent_sessions`` loops accept the
    next session, receive ``receive_batch`` at a time (a short batch is followed by one
    ``session_idle_wait`` receive), complete the batch concurrently and close the receiver in the
    background. No parsing, no database, no Prefect.
    """
    from azure.servicebus import NEXT_AVAILABLE_SESSION
    from azure.servicebus.aio import ServiceBusClient
    from azure.servicebus.exceptions import OperationTimeoutError, SessionCannotBeLockedError

    done = 0
    finished = 0.0  # when the last message was settled (loops then still wait out an accept)
    closing: set[asyncio.Task[None]] = set()
    idle = min(settings.session_idle_wait, settings.max_wait_time)
    async with ServiceBusClient.from_connection_string(connection_string) as client:

        async def loop() -> None:
            nonlocal done, finished
            while done < total:
                receiver = client.get_queue_receiver(
                    settings.queue_name,
                    session_id=NEXT_AVAILABLE_SESSION,
                    max_wait_time=settings.max_wait_time,
                    prefetch_count=settings.receive_batch,
                )
                try:
                    await receiver.__aenter__()
                    if receiver.session.locked_until_utc is None:
                        raise OperationTimeoutError(message="no session available")
                except (OperationTimeoutError, SessionCannotBeLockedError):
                    await receiver.close()
                    continue
                wait = settings.max_wait_time
                try:
                    while messages := await receiver.receive_messages(
                        max_message_count=settings.receive_batch, max_wait_time=wait
                    ):
                        await asyncio.gather(*(receiver.complete_message(m) for m in messages))
                        done += len(messages)
                        if done >= total and not finished:
                            finished = time.perf_counter()
                        full = len(messages) == settings.receive_batch
                        wait = settings.max_wait_time if full else idle
                finally:
                    task = asyncio.create_task(receiver.close())
                    closing.add(task)
                    task.add_done_callback(closing.discard)

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(settings.max_concurrent_sessions)))
        await asyncio.gather(*closing, return_exceptions=True)
    return total / ((finished or time.perf_counter()) - started)


async def run_servicebus(
    rt: IngressRuntime, args: argparse.Namespace, prefix: str, shared: Path
) -> dict[str, Any]:
    from pydantic import SecretStr

    from listeners.servicebus import ServiceBusListener
    from tests.support.fake_servicebus import start_broker

    total = args.sb_devices * args.sb_events
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))

    def settings_for(connection_string: str, queue: str) -> ServiceBusSettings:
        idle = {} if args.sb_idle is None else {"session_idle_wait": args.sb_idle}
        return ServiceBusSettings(
            connection_string=SecretStr(connection_string),
            queue_name=queue,
            max_concurrent_sessions=args.sessions,
            max_wait_time=1.0,
            receive_batch=args.sb_batch,
            **idle,
        )

    # The broker alone, on a broker of its own (fresh queues, same messages).
    broker = start_broker(shared, tmp, lock_duration=30)
    try:
        await fill_queue(broker.connection_string, broker.queue, "ceiling-", *_shape(args))
        ceiling = await broker_ceiling(
            broker.connection_string, settings_for(broker.connection_string, broker.queue), total
        )
    finally:
        broker.stop()

    broker = start_broker(shared, tmp, lock_duration=30)
    try:
        await fill_queue(broker.connection_string, broker.queue, prefix, *_shape(args))
        timed = Timed(rt.ingress)
        listener = ServiceBusListener(settings_for(broker.connection_string, broker.queue), timed)
        started = time.perf_counter()
        task = asyncio.create_task(listener.run())
        while listener.stats["complete"] < total:
            if task.done():
                raise SystemExit("the listener stopped early")
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        listener.stop()
        await task
        print(f"{'':>10}  outcomes: {dict(timed.outcomes)}; listener: {dict(listener.stats)}")
        data = summary("servicebus", total, elapsed, timed.latencies)
        data["brokerCeiling"] = round(ceiling, 1)
        data["ofCeiling"] = round(100 * data["eventsPerSecond"] / ceiling, 1) if ceiling else 0.0
        print(
            f"{'':>10}  the fake broker alone settles {data['brokerCeiling']} msg/s (bare SDK loop,"
            f" {args.sessions} sessions, batches of {args.sb_batch}); the listener reaches"
            f" {data['eventsPerSecond']} events/s = {data['ofCeiling']}% of it"
        )
        await drain_outbox(rt)
        return data
    finally:
        broker.stop()


def _shape(args: argparse.Namespace) -> tuple[int, int]:
    return args.sb_devices, args.sb_events


async def main(args: argparse.Namespace) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from store.settings import DatabaseSettings
    from tests.support.ingress_probe import FLOW_NAME, ingress_probe
    from tests.support.postgres import start_postgres
    from tests.support.prefect_server import start_prefect_server

    # The test-support helpers run their own event loops: keep them off this one.
    postgres = await asyncio.to_thread(start_postgres)
    if isinstance(postgres, str):
        raise SystemExit(postgres)
    server = await asyncio.to_thread(start_prefect_server, postgres)
    try:
        os.environ.update(server.env)
        database = await asyncio.to_thread(postgres.create_database, "benchingress")
        db_url = postgres.sqlalchemy_url(database)
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            deployment = await ingress_probe.ato_deployment(name="bench-idle")
            await deployment.aapply()
            name = f"{FLOW_NAME}/bench-idle"
            settings = IngressSettings(workflow="bench", deployment=name, prefect_timeout=30)
            # One connection per worker or session loop, plus a few for the reconciler and starts.
            connections = max(args.concurrency, args.sessions)
            pool = DatabaseSettings(url=db_url, pool_size=connections, max_overflow=4)
            async with open_ingress(
                database_url=db_url, settings=settings, database_settings=pool
            ) as rt:
                if args.transport in ("local", "both"):
                    await run_local(rt, args, "bl-")
                    await check_counts(rt, db_url, "bl-", args.devices, args.events, name)
                if args.transport in ("servicebus", "both"):
                    shared = Path(os.environ.get("ORCH_SHARED_DIR", ROOT.parent / "shared"))
                    await run_servicebus(rt, args, "bs-", shared)
                    await check_counts(rt, db_url, "bs-", args.sb_devices, args.sb_events, name)
    finally:
        server.stop()
        await asyncio.to_thread(postgres.close)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_arguments(parser)
    asyncio.run(main(parser.parse_args()))
