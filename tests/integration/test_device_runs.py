"""Contract of ``store.runs.DeviceRunStore`` (current run per device, routing outbox)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from store.db import Database
from store.runs import DeviceRunStore

pytestmark = pytest.mark.integration


async def test_one_of_many_racing_routers_claims_the_start(database: Database) -> None:
    store = DeviceRunStore(database)
    wins = await asyncio.gather(
        *(store.claim_start("dev", f"key-{i}", workflow="onboard") for i in range(10))
    )
    assert wins.count(True) == 1
    current = await store.current("dev")
    assert current is not None
    assert current.status == "starting"
    assert current.run_key == f"key-{wins.index(True)}"
    # The winner asking again (a redelivered starting event) gets the same answer.
    assert await store.claim_start("dev", current.run_key, workflow="onboard") is True
    assert await store.current("nobody") is None


async def test_the_lifecycle_starting_running_finished_then_a_new_start(
    database: Database,
) -> None:
    store = DeviceRunStore(database)
    assert await store.claim_start("dev", "k1", workflow="onboard", started_by_event="e1")
    assert not await store.claim_start("dev", "k2", workflow="onboard")

    assert await store.set_run("dev", "k1", "flow-run-1") is True
    assert await store.set_run("dev", "k1", "flow-run-1") is True  # idempotent
    assert await store.set_run("dev", "k1", "flow-run-other") is False
    assert await store.set_run("dev", "k2", "flow-run-2") is False
    running = await store.current("dev")
    assert running is not None
    assert (running.status, running.run_id, running.started_by_event) == (
        "running",
        "flow-run-1",
        "e1",
    )
    assert not await store.claim_start("dev", "k2", workflow="onboard")

    assert await store.finish("dev", "some-other-run") is False
    assert await store.finish("dev", "flow-run-1") is True
    assert await store.finish("dev", "flow-run-1") is False
    assert not await store.claim_start("dev", "k1", workflow="onboard")  # that run is over

    racers = await asyncio.gather(
        *(store.claim_start("dev", f"next-{i}", workflow="onboard") for i in range(5))
    )
    assert racers.count(True) == 1


async def test_a_stale_starting_claim_can_be_taken_over(database: Database) -> None:
    store = DeviceRunStore(database)
    assert await store.claim_start("dev", "k1", workflow="onboard")
    assert not await store.claim_start("dev", "k2", workflow="onboard", stale_after=timedelta(1))
    assert await store.claim_start("dev", "k2", workflow="onboard", stale_after=timedelta(0))
    current = await store.current("dev")
    assert current is not None and current.run_key == "k2"
    assert await store.finish("dev", "k2") is True  # finish by run key when never bound


async def test_the_outbox_keeps_work_until_it_is_done(database: Database) -> None:
    store = DeviceRunStore(database)
    first = await store.enqueue("dev", "e1", "start", {"workflow": "onboard"})
    again = await store.enqueue("dev", "e1", "start", {"workflow": "changed"})
    resume = await store.enqueue("dev", "e2", "resume", {"run": "r"})
    later = await store.enqueue(
        "dev", "e3", "resume", None, not_before=datetime.now(UTC) + timedelta(hours=1)
    )
    assert again == first
    assert len({first, resume, later}) == 3

    pending = await store.pending()
    assert [(e.event_id, e.action, e.payload) for e in pending] == [
        ("e1", "start", {"workflow": "onboard"}),
        ("e2", "resume", {"run": "r"}),
    ]
    assert [e.id for e in await store.pending(limit=1)] == [first]

    await store.mark_failed(first, "Prefect unreachable", retry_at=datetime.now(UTC) + timedelta(1))
    await store.mark_done(resume)
    assert await store.pending() == []
    retried = await store.pending(now=datetime.now(UTC) + timedelta(days=2))
    assert [(e.id, e.attempts, e.last_error) for e in retried] == [
        (first, 1, "Prefect unreachable"),
        (later, 0, None),
    ]


async def test_a_claimed_start_is_in_the_outbox_until_the_run_is_bound(database: Database) -> None:
    store = DeviceRunStore(database)
    request = {"runKey": "k1", "parameters": {"workflow": "onboard"}}
    assert await store.claim_start(
        "dev", "k1", workflow="onboard", started_by_event="e1", request=request
    )
    # The loser of the race queues nothing.
    assert not await store.claim_start(
        "dev", "k2", workflow="onboard", started_by_event="e2", request={"runKey": "k2"}
    )
    (entry,) = await store.outstanding("dev")
    assert (entry.event_id, entry.action, entry.payload) == ("e1", "start", request)
    # Not due at once: the router creates the run itself first; the reconciler steps in later.
    assert await store.due(datetime.now(UTC), 10) == []

    assert await store.set_run("dev", "k1", "flow-run-1") is True
    assert await store.outstanding("dev") == []


async def test_due_leases_entries_to_one_reconciler_at_a_time(database: Database) -> None:
    store = DeviceRunStore(database)
    first = await store.enqueue("dev", "e1", "resume", {"runId": "r"}, error="not paused yet")
    later = datetime.now(UTC) + timedelta(seconds=1)

    (leased,) = await store.due(later, 10)
    assert (leased.id, leased.last_error) == (first, "not paused yet")
    assert await store.due(later, 10) == []  # leased to the first caller
    assert [e.id for e in await store.due(later + timedelta(minutes=1), 10)] == [first]

    await store.mark_failed(first, "Prefect down", retry_at=later)
    await store.mark_done(first)
    assert await store.outstanding() == []


async def test_active_lists_bound_runs_oldest_first(database: Database) -> None:
    store = DeviceRunStore(database)
    for device in ("a", "b", "c"):
        assert await store.claim_start(device, f"k-{device}", workflow="onboard")
    assert await store.set_run("b", "k-b", "run-b")
    assert await store.set_run("a", "k-a", "run-a")
    assert [run.run_id for run in await store.active(10)] == ["run-b", "run-a"]
    assert await store.finish("b", "run-b")
    assert [run.device_id for run in await store.active(10)] == ["a"]
    current = await store.current("b")
    assert current is not None and current.finished


async def test_active_pages_after_a_cursor(database: Database) -> None:
    store = DeviceRunStore(database)
    for device in ("a", "b", "c"):
        assert await store.claim_start(device, f"k-{device}", workflow="onboard")
        assert await store.set_run(device, f"k-{device}", f"run-{device}")
    (first,) = await store.active(1)
    (second,) = await store.active(1, (first.updated_at, first.device_id))
    (third,) = await store.active(1, (second.updated_at, second.device_id))
    assert [first.device_id, second.device_id, third.device_id] == ["a", "b", "c"]
    assert await store.active(1, (third.updated_at, third.device_id)) == []


async def test_an_entry_that_ended_without_being_performed_keeps_why(database: Database) -> None:
    store = DeviceRunStore(database)
    entry_id = await store.enqueue("dev", "e1", "resume", {"runId": "r"}, error="not paused yet")
    await store.mark_done(entry_id, note="run CANCELLED (Cancelled): not_paused")
    entry = await store.entry(entry_id)
    assert entry is not None
    assert (entry.status, entry.last_error) == ("done", "run CANCELLED (Cancelled): not_paused")
    assert await store.entry(entry_id + 1000) is None
