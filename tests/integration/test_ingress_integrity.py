"""The ingress pipeline past parsing, on a real Prefect server and SQLite and PostgreSQL.

What the store refuses or notes must reach the transport as the right settlement:

- values the database can never store are a permanent refusal: dead-lettered at once with a
  reason, never abandoned for retries, and nothing of them stays (no event row, no claimed run,
  no outbox entry), while the rest of the batch goes on;
- an event id reused with other content is dead-lettered as a conflict and logged;
- a producer time that goes backwards is logged and flagged on the stored event;
- a redelivered duplicate starts and resumes nothing, unless its first delivery was cut off
  before it was routed (then the run waiting for it, or the device's first start, still happens).

To reach the store with values that ``listeners.events.parse_event`` refuses, the pipeline here
parses leniently (``json.loads`` takes ``NaN`` and ``1e400``; no schema): the database's refusal is
the defence in depth behind the parse-time check.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from sqlalchemy import func, select

from listeners.events import IncomingEvent, IncomingMessage
from listeners.local import IngressRuntime, event_message, open_ingress
from listeners.pipeline import CONFLICT_REASON, NOT_STORABLE_REASON, Disposition, Ingress
from listeners.router import RecordStatus, RouteAction
from listeners.settings import IngressSettings
from store.db import Database
from store.events import DeviceEvent
from store.tables import DEVICE_EVENTS, DEVICE_RUNS, DEVICES, ROUTE_OUTBOX
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
DEADLINE = 90.0


async def wait_until(probe: Callable[[], Awaitable[T]], what: str) -> T:
    end = time.monotonic() + DEADLINE
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {DEADLINE}s waiting for {what}")
        await asyncio.sleep(0.2)


def device() -> str:
    return f"dev-{uuid.uuid4().hex[:10]}"


def lenient(message: IncomingMessage) -> IncomingEvent:
    """Trust the body as it is (what a parser without the parse-time checks would let through)."""
    body = json.loads(message.body)  # takes NaN, Infinity, 1e400 (inf), \u0000, lone surrogates
    now = datetime.now(UTC)
    occurred = body.get("occurredAt")
    return IncomingEvent(
        device_id=body["deviceId"],
        event_id=body.get("eventId") or message.message_id or "",
        name=body["name"],
        payload=body.get("payload", {}),
        occurred_at=datetime.fromisoformat(occurred) if occurred else now,
        received_at=now,
    )


def raw(device_id: str, event_id: str, body_text: str) -> IncomingMessage:
    """A message whose body is given as JSON text (so that it can hold NaN, 1e400, ...)."""
    return IncomingMessage(body=body_text.encode(), message_id=event_id, session_id=device_id)


@pytest_asyncio.fixture(scope="module")
async def idle_deployment(prefect_server: Any) -> str:
    """The probe flow without an executor: its runs stay scheduled (a busy device)."""
    from tests.support.ingress_probe import FLOW_NAME, ingress_probe

    deployment = await ingress_probe.ato_deployment(name="idle")
    await deployment.aapply()
    return f"{FLOW_NAME}/idle"


@contextlib.asynccontextmanager
async def runtime(database_url: str, deployment: str) -> AsyncIterator[IngressRuntime]:
    settings = IngressSettings(workflow="probe", deployment=deployment, prefect_timeout=5)
    async with open_ingress(database_url=database_url, settings=settings) as rt:
        yield rt


def lenient_ingress(rt: IngressRuntime) -> Ingress:
    return Ingress(rt.router, max_message_bytes=256 * 1024, parse=lenient)


async def rows_of(database_url: str, device_id: str) -> dict[str, int]:
    """How many rows the device has, table by table (outbox: entries not done)."""
    db = await Database.connect(database_url)
    try:
        async with db.transaction(readonly=True) as connection:
            counts = {}
            for table in (DEVICES, DEVICE_EVENTS, DEVICE_RUNS, ROUTE_OUTBOX):
                query = select(func.count()).select_from(table)
                query = query.where(table.c.device_id == device_id)
                if table is ROUTE_OUTBOX:
                    query = query.where(table.c.status == "pending")  # done entries stay, done
                counts[table.name] = int(await connection.scalar(query) or 0)
        return counts
    finally:
        await db.close()


# Bodies PostgreSQL refuses (json.dumps writes NaN/Infinity, which are not JSON; jsonb refuses
# \u0000 and lone surrogates; text columns refuse NUL).
REFUSED_BODIES = [
    pytest.param('{"v": NaN}', "/v", id="nan"),
    pytest.param('{"v": 1e400}', "/v", id="1e400"),
    pytest.param('{"s": "a\\u0000b"}', "U+0000", id="nul"),
    pytest.param('{"k\\u0000": 1}', "key contains U+0000", id="nul-key"),
    pytest.param('{"s": "\\ud800"}', "lone surrogate", id="surrogate"),
]


@pytest.mark.parametrize(("payload", "says"), REFUSED_BODIES)
async def test_a_value_the_database_refuses_is_dead_lettered_at_once_and_nothing_of_it_stays(
    database_url: str, idle_deployment: str, payload: str, says: str
) -> None:
    good, bad = device(), device()
    async with runtime(database_url, idle_deployment) as rt:
        messages = [
            event_message(good, "hello", {"n": 1}, event_id="g1"),
            raw(bad, "b1", f'{{"deviceId": "{bad}", "name": "hello", "payload": {payload}}}'),
        ]
        outcomes = await lenient_ingress(rt).process_many(messages)
        # The device of the refused event gets a valid event later: it starts normally.
        later = await rt.local.send(bad, "hello", {"n": 2}, event_id="b2")

    assert outcomes[0].disposition is Disposition.COMPLETE
    assert outcomes[0].result is not None and outcomes[0].result.action is RouteAction.STARTED
    refused = outcomes[1]
    assert refused.disposition is Disposition.DEAD_LETTER  # never ABANDON (TransientFailure)
    assert refused.reason == NOT_STORABLE_REASON
    assert says in refused.description and "b1" in refused.description
    assert later.result is not None and later.result.action is RouteAction.STARTED
    counts = await rows_of(database_url, bad)
    # Only the later, valid event: the refused one left no event, no run claim, no outbox entry.
    assert counts == {"devices": 1, "device_events": 1, "device_runs": 1, "route_outbox": 0}


@pytest.mark.parametrize(
    ("device_id", "name"),
    [
        pytest.param("dev-\x00-nul", "hello", id="nul-in-device-id"),
        pytest.param("dev-surrogate", "hel\udc00lo", id="surrogate-in-name"),
    ],
)
async def test_an_id_or_name_the_database_refuses_is_dead_lettered_not_retried(
    database_url: str, idle_deployment: str, device_id: str, name: str
) -> None:
    async with runtime(database_url, idle_deployment) as rt:
        message = IncomingMessage(
            body=json.dumps({"deviceId": device_id, "name": name}).encode(), message_id="x1"
        )
        (outcome,) = await lenient_ingress(rt).process_many([message])

    assert outcome.disposition is Disposition.DEAD_LETTER
    assert outcome.reason == NOT_STORABLE_REASON


async def test_an_event_id_reused_with_other_content_is_dead_lettered_as_a_conflict(
    database_url: str, idle_deployment: str, caplog: pytest.LogCaptureFixture
) -> None:
    dev = device()
    async with runtime(database_url, idle_deployment) as rt:
        first = await rt.local.send(dev, "reading", {"t": 20}, event_id="r1")
        same = await rt.local.send(dev, "reading", {"t": 20}, event_id="r1")
        with caplog.at_level(logging.WARNING, logger="listeners.ingress"):
            other = await rt.local.send(dev, "reading", {"t": 99}, event_id="r1")
        held = await rt.events.store.list(dev)

    assert first.disposition is Disposition.COMPLETE
    assert same.disposition is Disposition.COMPLETE
    assert same.result is not None and same.result.recorded is RecordStatus.DUPLICATE
    assert other.disposition is Disposition.DEAD_LETTER
    assert other.reason == CONFLICT_REASON
    assert "r1" in other.description and "other content" in other.description
    assert other.result is not None and other.result.action is RouteAction.REFUSED
    assert [(e.event_id, e.payload) for e in held] == [("r1", {"t": 20})]  # the first copy
    assert any(CONFLICT_REASON in r.getMessage() and dev in r.getMessage() for r in caplog.records)


async def test_a_producer_time_going_backwards_is_logged_and_flagged(
    database_url: str, idle_deployment: str, caplog: pytest.LogCaptureFixture
) -> None:
    dev = device()

    def at(event_id: str, occurred: str) -> IncomingMessage:
        body = {"deviceId": dev, "eventId": event_id, "name": "tick", "occurredAt": occurred}
        return IncomingMessage(body=json.dumps(body).encode(), message_id=event_id, session_id=dev)

    async with runtime(database_url, idle_deployment) as rt:
        with caplog.at_level(logging.WARNING):
            outcomes = await rt.local.send_many(
                [
                    at("t1", "2026-05-01T12:00:00+00:00"),
                    at("t3", "2026-05-01T12:00:03+00:00"),
                    at("t2", "2026-05-01T12:00:02+00:00"),  # behind t3
                ]
            )
            untimed = await rt.local.send(dev, "tick", event_id="t4")  # no producer time
        held = {e.event_id: e for e in await rt.events.store.list(dev)}

    assert [o.disposition for o in [*outcomes, untimed]] == [Disposition.COMPLETE] * 4
    assert [e for e, stored in held.items() if stored.out_of_order] == ["t2"]
    assert held["t4"].occurred_at is None  # the broker's or our clock is not a producer time
    warnings = [r.getMessage() for r in caplog.records if "out of order" in r.getMessage()]
    assert len(warnings) == 1 and "t2" in warnings[0] and dev in warnings[0]


async def test_a_redelivered_duplicate_after_the_run_finished_starts_nothing(
    database_url: str, idle_deployment: str
) -> None:
    """Issue 8.1: the listener was killed after routing and before completing; the redelivered
    events are duplicates, and the device's run has finished meanwhile."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
    from prefect.states import Completed

    async def prefect_runs(device_id: str) -> list[Any]:
        async with get_client() as client:
            return await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"device:{device_id}"]))
            )

    dev = device()
    async with runtime(database_url, idle_deployment) as rt:
        start = await rt.local.send(dev, "hello", event_id="one")
        busy = await rt.local.send(dev, "approve", {"ok": True}, event_id="two")
        assert start.result is not None and start.result.run_id is not None
        assert busy.result is not None and busy.result.action is RouteAction.BUSY
        async with get_client() as client:
            await client.set_flow_run_state(uuid.UUID(start.result.run_id), Completed(), force=True)

        async def swept() -> bool:
            await rt.reconciler.run_once()  # the sweep finds the finished run
            current = await rt.ledger.current(dev)
            return current is not None and current.finished

        await wait_until(swept, "the sweep to mark the run finished")

        again = await rt.local.send(dev, "approve", {"ok": True}, event_id="two")
        again_start = await rt.local.send(dev, "hello", event_id="one")
        current = await rt.ledger.current(dev)
        outbox = await rt.ledger.outstanding(dev)

    assert again.disposition is Disposition.COMPLETE  # acknowledged
    assert again.result is not None and again.result.recorded is RecordStatus.DUPLICATE
    assert again.result.action is RouteAction.IGNORED
    assert again_start.result is not None and again_start.result.run_id == start.result.run_id
    assert current is not None and current.run_id == start.result.run_id and current.finished
    assert outbox == []
    assert [str(r.id) for r in await prefect_runs(dev)] == [start.result.run_id]


# -- a duplicate whose first delivery was cut off between recording and routing -----------------


@pytest.fixture(scope="module")
def served_db_url(postgres: PostgresServer) -> str:
    return postgres.sqlalchemy_url(postgres.create_database("integrity"))


@pytest.fixture(scope="module")
def served_deployment(prefect_server: Any, served_db_url: str) -> Iterator[str]:
    """The probe flow served by a subprocess on ``served_db_url`` (its runs really wait)."""
    env = {**os.environ, **prefect_server.env, "ORCH_DB_URL": served_db_url}
    log_path = Path(prefect_server.home) / "probe-serve-integrity.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.ingress_probe", "served-integrity"],
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
                    await client.read_deployment_by_name("ingress-probe/served-integrity")
                except Exception:
                    return process.poll() is not None  # stop polling a dead server
                return True

        asyncio.run(wait_until(registered, "the served deployment"))
        assert process.poll() is None, log_path.read_text()
        yield "ingress-probe/served-integrity"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.mark.postgres
async def test_a_duplicate_whose_first_delivery_was_never_routed_still_resumes_the_waiting_run(
    served_db_url: str, served_deployment: str
) -> None:
    """Killed after recording and before routing: the redelivery is a duplicate, and the run that
    waits for it would wait until its timeout if duplicates were routed nowhere. An unconsumed
    duplicate the device's waiting run asks for resumes it; once consumed, it resumes nothing."""
    from prefect.client.orchestration import get_client

    async def state_of(run_id: str) -> Any:
        async with get_client() as client:
            return (await client.read_flow_run(uuid.UUID(run_id))).state

    dev = device()
    async with runtime(served_db_url, served_deployment) as rt:
        start = await rt.local.send(dev, "onboard", {"mode": "wait", "for": "approve"})
        assert start.result is not None and start.result.run_id is not None
        run_id = start.result.run_id

        async def paused() -> bool:
            state = await state_of(run_id)
            return state is not None and state.type.value == "PAUSED"

        await wait_until(paused, "the run to suspend")
        # The first delivery: recorded, then the listener died before routing it.
        await rt.events.store.record(
            DeviceEvent(device_id=dev, event_id="approve-1", name="approve", payload={"ok": True})
        )
        redelivered = await rt.local.send(dev, "approve", {"ok": True}, event_id="approve-1")

        async def completed() -> Any:
            state = await state_of(run_id)
            return state if state is not None and state.is_final() else None

        final = await wait_until(completed, "the resumed run to finish")
        late = await rt.local.send(dev, "approve", {"ok": True}, event_id="approve-1")
        consumed = not await rt.events.is_unconsumed(dev, "approve-1", "approve")

    assert redelivered.result is not None
    assert redelivered.result.recorded is RecordStatus.DUPLICATE
    assert redelivered.result.action is RouteAction.RESUMED
    assert final.type.value == "COMPLETED" and consumed
    assert late.result is not None and late.result.action is RouteAction.IGNORED
