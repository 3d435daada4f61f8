"""Contract of ``store.idempotency.IdempotencyStore`` on SQLite and PostgreSQL.

First result wins; a failure records nothing; concurrent duplicates run the function once; a key
reused for another activity or input is refused; a stale claim is taken over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel
from sqlalchemy import select

from store.db import Database
from store.errors import IdempotencyConflictError, IdempotencyPendingError
from store.idempotency import IdempotencyStore
from store.leases import process_holder
from store.tables import IDEMPOTENCY_KEYS, PROCESS_LEASES

pytestmark = pytest.mark.integration


class Created(BaseModel):
    id: str
    at: datetime


async def wait_until(condition: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Poll an async predicate until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            pytest.fail("condition not met before the deadline")
        await asyncio.sleep(0.01)


async def test_a_success_is_returned_again_without_calling_the_function(
    database: Database,
) -> None:
    store = IdempotencyStore(database)
    calls: list[int] = []

    async def create() -> Created:
        calls.append(1)
        return Created(id=f"rec-{len(calls)}", at=datetime(2026, 1, 1, tzinfo=UTC))

    first = await store.run_once("run-1:create:1", "records.create", create, input_data={"a": 1})
    second = await store.run_once("run-1:create:1", "records.create", create, input_data={"a": 1})

    assert first == {"id": "rec-1", "at": "2026-01-01T00:00:00Z"}
    assert second == first
    assert len(calls) == 1
    entry = await store.get("run-1:create:1")
    assert entry is not None
    assert (entry.status, entry.activity, entry.result) == ("done", "records.create", first)
    assert entry.completed_at is not None and entry.completed_at.tzinfo == UTC


async def test_a_failure_records_nothing_so_a_retry_runs_again(database: Database) -> None:
    store = IdempotencyStore(database)
    attempts: list[int] = []

    async def flaky() -> dict[str, int]:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("the API was down")
        return {"attempt": len(attempts)}

    with pytest.raises(ConnectionError):
        await store.run_once("k", "http.request", flaky)
    assert await store.get("k") is None

    assert await store.run_once("k", "http.request", flaky) == {"attempt": 2}
    assert await store.run_once("k", "http.request", flaky) == {"attempt": 2}
    assert len(attempts) == 2


async def test_none_is_a_result_like_any_other(database: Database) -> None:
    store = IdempotencyStore(database)
    calls: list[int] = []

    async def nothing() -> None:
        calls.append(1)

    assert await store.run_once("k", "notify.send", nothing) is None
    assert await store.run_once("k", "notify.send", nothing) is None
    assert len(calls) == 1


async def test_concurrent_duplicates_run_the_function_once(database: Database) -> None:
    store = IdempotencyStore(database, poll_interval_seconds=0.01)
    release = asyncio.Event()
    calls: list[int] = []

    async def slow_side_effect() -> dict[str, str]:
        calls.append(1)
        await release.wait()
        return {"sent": "once"}

    callers = [
        asyncio.ensure_future(store.run_once("dup", "notify.send", slow_side_effect))
        for _ in range(10)
    ]

    async def claimed() -> bool:
        entry = await store.get("dup")
        return entry is not None and entry.status == "pending"

    await wait_until(claimed)
    release.set()
    results = await asyncio.gather(*callers)

    assert results == [{"sent": "once"}] * 10
    assert len(calls) == 1


async def test_a_key_reused_for_another_activity_or_input_is_refused(database: Database) -> None:
    store = IdempotencyStore(database)

    async def one() -> int:
        return 1

    await store.run_once("k", "records.create", one, input_data={"kind": "a"})

    with pytest.raises(IdempotencyConflictError) as other_input:
        await store.run_once("k", "records.create", one, input_data={"kind": "b"})
    with pytest.raises(IdempotencyConflictError) as other_activity:
        await store.run_once("k", "records.update", one, input_data={"kind": "a"})

    assert "different input" in str(other_input.value)
    assert other_input.value.key == "k"
    assert "records.create" in str(other_activity.value)
    assert "records.update" in str(other_activity.value)
    # Key order does not change the input's identity.
    same = await store.run_once("k", "records.create", one, input_data={"kind": "a"})
    assert same == 1


async def test_a_live_claim_makes_a_duplicate_wait_then_give_up_retryably(
    database: Database,
) -> None:
    store = IdempotencyStore(database, wait_timeout=timedelta(milliseconds=200))
    await insert_pending(database, "busy", claimed_at=datetime.now(UTC))
    calls: list[int] = []

    async def fn() -> int:
        calls.append(1)
        return 1

    with pytest.raises(IdempotencyPendingError) as pending:
        await store.run_once("busy", "records.create", fn)

    assert pending.value.retryable
    assert calls == []


async def test_a_stale_claim_is_taken_over(database: Database) -> None:
    store = IdempotencyStore(database, lease=timedelta(minutes=5))
    await insert_pending(database, "crashed", claimed_at=datetime.now(UTC) - timedelta(minutes=6))

    async def fn() -> str:
        return "ran"

    assert await store.run_once("crashed", "records.create", fn) == "ran"
    entry = await store.get("crashed")
    assert entry is not None and entry.status == "done"


async def insert_pending(database: Database, key: str, claimed_at: datetime) -> None:
    async with database.transaction() as connection:
        await connection.execute(
            IDEMPOTENCY_KEYS.insert().values(
                key=key,
                activity="records.create",
                input_hash=None,
                status="pending",
                owner="another-process",
                claimed_at=claimed_at,
            )
        )


async def insert_held(
    database: Database, key: str, holder: str, expires_in: timedelta | None
) -> None:
    """A fresh ``pending`` claim by ``holder``; its process lease ends ``expires_in`` from now
    (negative: already expired; None: the holder kept no process lease)."""
    now = datetime.now(UTC)
    async with database.transaction() as connection:
        await connection.execute(
            IDEMPOTENCY_KEYS.insert().values(
                key=key,
                activity="records.create",
                input_hash=None,
                status="pending",
                owner="token-of-" + holder,
                holder=holder,
                claimed_at=now,
            )
        )
        if expires_in is not None:
            await connection.execute(
                PROCESS_LEASES.insert().values(
                    holder=holder,
                    host="elsewhere",
                    pid=4242,
                    started_at=now - timedelta(minutes=1),
                    renewed_at=now - timedelta(seconds=30),
                    expires_at=now + expires_in,
                )
            )


async def holder_of(database: Database, key: str) -> str | None:
    async with database.transaction(readonly=True) as connection:
        holder: str | None = (
            await connection.execute(
                select(IDEMPOTENCY_KEYS.c.holder).where(IDEMPOTENCY_KEYS.c.key == key)
            )
        ).scalar_one()
    return holder


async def test_a_claim_of_a_dead_process_is_taken_over_at_once(database: Database) -> None:
    # The default five-minute lease and a far shorter wait: only the dead holder explains it.
    store = IdempotencyStore(database, wait_timeout=timedelta(milliseconds=300))
    await insert_held(database, "killed", "host:1:dead", expires_in=-timedelta(seconds=1))
    calls: list[int] = []

    async def fn() -> str:
        calls.append(1)
        return "ran again"

    assert await store.run_once("killed", "records.create", fn) == "ran again"
    assert calls == [1]
    entry = await store.get("killed")
    assert entry is not None and entry.status == "done"
    assert await holder_of(database, "killed") == process_holder()


async def test_a_claim_of_a_live_process_is_waited_on(database: Database) -> None:
    store = IdempotencyStore(database, wait_timeout=timedelta(milliseconds=300))
    await insert_held(database, "busy", "host:2:alive", expires_in=timedelta(minutes=1))
    calls: list[int] = []

    async def fn() -> int:
        calls.append(1)
        return 1

    with pytest.raises(IdempotencyPendingError) as pending:
        await store.run_once("busy", "records.create", fn)

    assert pending.value.retryable
    assert calls == []
    assert await holder_of(database, "busy") == "host:2:alive"


async def test_a_holder_without_a_process_lease_keeps_the_time_lease(database: Database) -> None:
    store = IdempotencyStore(database, wait_timeout=timedelta(milliseconds=300))
    await insert_held(database, "unknown", "host:3:never-renewed", expires_in=None)

    async def fn() -> str:
        return "ran"

    # Not known to be dead: waited on while its claim is younger than the lease ...
    with pytest.raises(IdempotencyPendingError):
        await store.run_once("unknown", "records.create", fn)
    async with database.transaction() as connection:
        await connection.execute(
            IDEMPOTENCY_KEYS.update()
            .where(IDEMPOTENCY_KEYS.c.key == "unknown")
            .values(claimed_at=datetime.now(UTC) - timedelta(minutes=6))
        )
    # ... and taken over once the claim is older than the lease.
    assert await store.run_once("unknown", "records.create", fn) == "ran"


async def test_a_process_never_takes_its_own_claim_for_dead(database: Database) -> None:
    # Its own lease may lapse (a stall) while its call still runs: it waits on it like any other.
    store = IdempotencyStore(database, wait_timeout=timedelta(milliseconds=300))
    await insert_held(database, "mine", process_holder(), expires_in=-timedelta(seconds=1))

    async def fn() -> int:
        return 1

    with pytest.raises(IdempotencyPendingError):
        await store.run_once("mine", "records.create", fn)
