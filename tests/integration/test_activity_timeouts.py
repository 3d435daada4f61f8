"""An activity's timeout bounds the activity, not the wait for another caller of its key.

Issue 8, item 2: a run taken back from a dead executor re-executed its step in flight, found the
key ``pending`` (its dead attempt's claim), waited on it, and its own timeout turned the wait into
a final ``States.Timeout`` that was journalled: the run could never recover. Now a dead holder's
claim is taken over at once (``store.idempotency``) and the timeout covers only the activity.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from interpreter.errors import ActivityError
from store.db import Database
from store.idempotency import input_hash
from store.tables import IDEMPOTENCY_KEYS, PROCESS_LEASES
from tasks.context import ActivityContext
from tasks.registry import ActivityRegistry

pytestmark = pytest.mark.integration


class Nothing(BaseModel):
    pass


class Done(BaseModel):
    by: str


def registry(
    calls: list[str], seconds: float, started: asyncio.Event | None = None
) -> ActivityRegistry:
    found = ActivityRegistry()

    async def slow(_ctx: ActivityContext, _input: Nothing) -> Done:
        calls.append("slow")
        if started is not None:
            started.set()
        await asyncio.sleep(seconds)
        return Done(by=f"call {len(calls)}")

    found.activity(
        name="test.slow",
        description="sleeps, then answers",
        retry_safe=True,
        changes_state=True,
        input_model=Nothing,
        output_model=Done,
    )(slow)
    return found


def context(db: Database, key: str) -> ActivityContext:
    base = ActivityContext.for_database(db)
    return base.for_call(idempotency_key=key, run_id="run-1", device_id="dev-1", state="S")


async def test_the_timeout_ends_a_slow_activity_as_a_retryable_timeout(database: Database) -> None:
    calls: list[str] = []

    with pytest.raises(ActivityError) as caught:
        await registry(calls, 5.0).call(
            "test.slow", context(database, "k-slow"), {}, timeout_seconds=0.2
        )

    assert (caught.value.error, caught.value.retryable) == ("States.Timeout", True)
    assert calls == ["slow"]
    # Nothing recorded: the next attempt runs the activity again.
    assert await ActivityContext.for_database(database).idempotency.get("k-slow") is None  # type: ignore[union-attr]


async def test_waiting_on_a_live_callers_key_is_not_this_calls_timeout(database: Database) -> None:
    calls: list[str] = []
    started = asyncio.Event()
    slow = registry(calls, 0.8, started)
    first = asyncio.create_task(slow.call("test.slow", context(database, "k-live"), {}))
    await asyncio.wait_for(started.wait(), timeout=10)

    second = await slow.call("test.slow", context(database, "k-live"), {}, timeout_seconds=0.3)

    assert second == await first == {"by": "call 1"}
    assert calls == ["slow"]


async def test_a_dead_processes_pending_claim_is_run_again_at_once(database: Database) -> None:
    """The step in flight at a kill: its key is ``pending`` under the dead process's name."""
    now = datetime.now(UTC)
    async with database.transaction() as connection:
        await connection.execute(
            PROCESS_LEASES.insert().values(
                holder="dead-host:1:abc",
                host="dead-host",
                pid=1,
                started_at=now - timedelta(minutes=2),
                renewed_at=now - timedelta(minutes=1),
                expires_at=now - timedelta(seconds=40),
            )
        )
        await connection.execute(
            IDEMPOTENCY_KEYS.insert().values(
                key="k-dead",
                activity="test.slow",
                input_hash=input_hash({}),
                status="pending",
                owner="00000000-0000-0000-0000-000000000001",
                holder="dead-host:1:abc",
                claimed_at=now - timedelta(seconds=30),
            )
        )
    calls: list[str] = []

    result = await asyncio.wait_for(
        registry(calls, 0.0).call("test.slow", context(database, "k-dead"), {}), timeout=10
    )

    assert result == {"by": "call 1"}
    assert calls == ["slow"]
