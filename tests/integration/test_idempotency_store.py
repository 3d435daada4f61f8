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

from store.db import Database
from store.errors import IdempotencyConflictError, IdempotencyPendingError
from store.idempotency import IdempotencyStore
from store.tables import IDEMPOTENCY_KEYS

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
