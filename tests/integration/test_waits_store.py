"""Contract of ``store.waits.WaitStore`` on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from store.db import Database
from store.events import DeviceEvent, EventStore
from store.waits import WaitStore

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


async def test_register_is_idempotent_and_keeps_the_first_registration(
    database: Database,
) -> None:
    store = WaitStore(database)
    first = await store.register("run-1", "wait-a", "dev", "approved", T0)
    again = await store.register("run-1", "wait-a", "dev", "other", T0 + timedelta(hours=1))

    assert again == first
    assert (first.status, first.event_name, first.due_at) == ("waiting", "approved", T0)
    assert first.resolved_at is None
    assert await store.get("run-1", "wait-a") == first
    assert await store.get("run-1", "nope") is None


async def test_due_returns_waiting_timers_at_or_before_now(database: Database) -> None:
    store = WaitStore(database)
    await store.register("r1", "w", "dev", None, T0 + timedelta(minutes=5))
    await store.register("r2", "w", "dev", None, T0)
    await store.register("r3", "w", "dev", None, T0 + timedelta(minutes=10))
    await store.register("r4", "w", "dev", "approved", None)  # no timer
    # The same instant written in another zone compares equal.
    at_now_in_tokyo = T0.astimezone(ZoneInfo("Asia/Tokyo"))
    await store.register("r5", "w", "dev", None, at_now_in_tokyo + timedelta(minutes=1))

    due = await store.due(T0 + timedelta(minutes=5))
    assert [w.run_id for w in due] == ["r2", "r5", "r1"]
    assert await store.due(T0 - timedelta(seconds=1)) == []

    assert await store.resolve("r2", "w", "timer") is True
    assert [w.run_id for w in await store.due(T0 + timedelta(minutes=5))] == ["r5", "r1"]


async def test_waiting_for_and_resolve_is_a_compare_and_set(database: Database) -> None:
    store = WaitStore(database)
    await store.register("r1", "w", "dev", "approved", T0)
    await store.register("r2", "w", "dev", "approved", None)
    await store.register("r3", "w", "dev", "rejected", None)
    await store.register("r4", "w", "other", "approved", None)

    assert [w.run_id for w in await store.waiting_for("dev", "approved")] == ["r1", "r2"]

    # The timer and an event race to wake r1: exactly one wins.
    outcomes = await asyncio.gather(
        store.resolve("r1", "w", "timer"), store.resolve("r1", "w", "event")
    )
    assert sorted(outcomes) == [False, True]
    resolved = await store.get("r1", "w")
    assert resolved is not None
    assert resolved.status == "resolved"
    assert resolved.resolved_how in {"timer", "event"}
    assert resolved.resolved_at is not None
    assert [w.run_id for w in await store.waiting_for("dev", "approved")] == ["r2"]
    assert await store.resolve("missing", "w", "event") is False


async def test_event_ready_finds_waits_whose_event_already_arrived(database: Database) -> None:
    waits = WaitStore(database)
    events = EventStore(database)
    await waits.register("r1", "w", "dev", "approved", None)
    await waits.register("r2", "w", "dev", "rejected", None)
    await waits.register("r3", "w", "other", "approved", None)
    assert await waits.event_ready() == []

    await events.record(DeviceEvent(device_id="dev", event_id="e1", name="approved"))
    assert [w.run_id for w in await waits.event_ready()] == ["r1"]

    await events.claim("dev", "approved", "r1:w")
    assert await waits.event_ready() == []
