"""Contract of ``store.events.EventStore``, run on SQLite and on PostgreSQL (``database`` fixture).

Ordering and per-device sequences, duplicates stored once, the limit and its overflow (nothing lost
silently), clear/purge, UTC timestamps, concurrent writers for many devices, and claim semantics.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from store.db import Database
from store.events import DeviceEvent, EventStore

pytestmark = pytest.mark.integration


def event(device: str, event_id: str, name: str = "ping", **payload: object) -> DeviceEvent:
    return DeviceEvent(device_id=device, event_id=event_id, name=name, payload=dict(payload))


async def test_each_device_gets_its_own_gap_free_sequence_in_arrival_order(
    database: Database,
) -> None:
    store = EventStore(database)
    for i in range(5):
        assert (await store.record(event("a", f"a{i}", n=i))).sequence == i + 1
        if i < 3:
            assert (await store.record(event("b", f"b{i}", n=i))).sequence == i + 1

    listed = await store.list("a")
    assert [e.sequence for e in listed] == [1, 2, 3, 4, 5]
    assert [e.event_id for e in listed] == ["a0", "a1", "a2", "a3", "a4"]
    assert [e.payload for e in listed] == [{"n": i} for i in range(5)]
    assert [e.sequence for e in await store.list("b")] == [1, 2, 3]
    assert await store.list("nobody") == []

    state = await store.state("a")
    assert state is not None
    assert (state.count, state.last_sequence, state.overflowed) == (5, 5, 0)
    assert await store.state("nobody") is None


async def test_list_since_a_cursor_and_by_name(database: Database) -> None:
    store = EventStore(database)
    names = ["boot", "ping", "ping", "alarm", "ping"]
    for i, name in enumerate(names):
        await store.record(event("dev", f"e{i}", name))

    assert [e.sequence for e in await store.list("dev", since_sequence=2)] == [3, 4, 5]
    assert [e.sequence for e in await store.list("dev", name="ping")] == [2, 3, 5]
    pings_after_3 = await store.list("dev", name="ping", since_sequence=3)
    assert [e.sequence for e in pings_after_3] == [5]
    assert [e.sequence for e in await store.list("dev", limit=2)] == [1, 2]
    assert await store.list("dev", since_sequence=5) == []


async def test_a_duplicate_is_acknowledged_stored_once_and_uses_no_sequence(
    database: Database,
) -> None:
    store = EventStore(database)
    first = await store.record(event("dev", "msg-1", v=1))
    again = await store.record(event("dev", "msg-1", v=1))  # a redelivery

    assert (first.status, first.sequence) == ("inserted", 1)
    assert (again.status, again.sequence) == ("duplicate", 1)
    assert again.stored
    listed = await store.list("dev")
    assert [(e.event_id, e.payload) for e in listed] == [("msg-1", {"v": 1})]
    # Other content under the same id is a conflict, not a duplicate (test_event_store_refusals).

    nxt = await store.record(event("dev", "msg-2"))
    assert (nxt.status, nxt.sequence) == ("inserted", 2)
    state = await store.state("dev")
    assert state is not None
    assert (state.count, state.last_sequence) == (2, 2)
    # The same event id on another device is another event.
    assert (await store.record(event("other", "msg-1"))).status == "inserted"


async def test_over_the_limit_an_event_is_refused_as_overflow_and_counted(
    database: Database,
) -> None:
    store = EventStore(database, max_events_per_device=3)
    results = [await store.record(event("dev", f"e{i}")) for i in range(3)]
    assert [r.status for r in results] == ["inserted"] * 3

    overflow = await store.record(event("dev", "e3"))
    assert (overflow.status, overflow.sequence, overflow.stored) == ("overflow", None, False)
    # The caller dead-letters it; the store kept the three and counted the refusal.
    assert [e.event_id for e in await store.list("dev")] == ["e0", "e1", "e2"]
    state = await store.state("dev")
    assert state is not None
    assert (state.count, state.last_sequence, state.overflowed) == (3, 3, 1)

    # A redelivery of a stored event is still a duplicate (acknowledge it), not an overflow.
    assert (await store.record(event("dev", "e1"))).status == "duplicate"
    # Another device is not affected by this one's limit.
    assert (await store.record(event("other", "e3"))).status == "inserted"

    # Once cleared there is room again, and sequences keep counting up.
    assert await store.clear("dev") == 3
    retried = await store.record(event("dev", "e3"))
    assert (retried.status, retried.sequence) == ("inserted", 4)


async def test_clear_keeps_duplicate_detection_until_purge(database: Database) -> None:
    store = EventStore(database)
    for i in range(3):
        await store.record(event("dev", f"e{i}"))
    await store.record(event("keep", "k0"))

    assert await store.clear("dev") == 3
    assert await store.clear("dev") == 0
    assert await store.clear("never-seen") == 0
    assert await store.list("dev") == []
    state = await store.state("dev")
    assert state is not None
    assert (state.count, state.last_sequence) == (0, 3)

    late = await store.record(event("dev", "e1"))  # redelivered after the clear
    assert (late.status, late.sequence) == ("duplicate", 2)
    assert await store.list("dev") == []

    assert await store.purge(datetime.now(UTC) + timedelta(seconds=1)) == 3
    assert [e.event_id for e in await store.list("keep")] == ["k0"]  # not cleared, not purged
    after_purge = await store.record(event("dev", "e1"))
    assert (after_purge.status, after_purge.sequence) == ("inserted", 4)


async def test_timestamps_are_timezone_aware_utc_instants(database: Database) -> None:
    store = EventStore(database)
    plus_two = timezone(timedelta(hours=2))
    enqueued = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=plus_two)
    received = datetime(2026, 3, 1, 12, 0, 1, tzinfo=plus_two)
    await store.record(
        DeviceEvent(
            device_id="dev", event_id="t", name="n", enqueued_at=enqueued, received_at=received
        )
    )
    before = datetime.now(UTC)
    await store.record(DeviceEvent(device_id="dev", event_id="u", name="n"))

    stored, defaulted = await store.list("dev")
    assert stored.enqueued_at == enqueued and stored.enqueued_at.tzinfo == UTC
    assert stored.received_at == received and stored.received_at.tzinfo == UTC
    assert stored.as_json()["enqueuedAt"] == "2026-03-01T10:00:00.123456+00:00"
    assert defaulted.enqueued_at is None
    assert defaulted.received_at >= before - timedelta(seconds=1)
    assert defaulted.received_at.tzinfo == UTC

    with pytest.raises(ValidationError):
        DeviceEvent(device_id="dev", event_id="v", name="n", received_at=datetime(2026, 1, 1))


async def test_concurrent_writers_on_many_devices_lose_and_repeat_nothing(
    database: Database,
) -> None:
    devices, per_device = (50, 20) if database.dialect == "postgresql" else (10, 10)
    store = EventStore(database)
    # Every event is sent twice (a redelivery racing its original), all at once, shuffled.
    sends = [
        event(f"dev-{d}", f"dev-{d}-e{i}") for d in range(devices) for i in range(per_device)
    ] * 2
    random.Random(7).shuffle(sends)

    results = await asyncio.gather(*(store.record(e) for e in sends))

    statuses = [r.status for r in results]
    assert statuses.count("inserted") == devices * per_device
    assert statuses.count("duplicate") == devices * per_device
    for d in range(devices):
        listed = await store.list(f"dev-{d}")
        assert [e.sequence for e in listed] == list(range(1, per_device + 1))
        assert {e.event_id for e in listed} == {f"dev-{d}-e{i}" for i in range(per_device)}
        state = await store.state(f"dev-{d}")
        assert state is not None
        assert (state.count, state.last_sequence) == (per_device, per_device)
    # Each pair of copies reports the same sequence.
    by_id: dict[str, set[int | None]] = {}
    for sent, result in zip(sends, results, strict=True):
        by_id.setdefault(f"{sent.device_id}/{sent.event_id}", set()).add(result.sequence)
    assert all(len(seqs) == 1 for seqs in by_id.values())


async def test_concurrent_writers_of_one_device_respect_the_limit(database: Database) -> None:
    store = EventStore(database, max_events_per_device=10)
    results = await asyncio.gather(*(store.record(event("dev", f"e{i}")) for i in range(25)))
    statuses = [r.status for r in results]
    assert (statuses.count("inserted"), statuses.count("overflow")) == (10, 15)
    state = await store.state("dev")
    assert state is not None
    assert (state.count, state.last_sequence, state.overflowed) == (10, 10, 15)
    assert await store.count_held("dev") == 10


async def test_claim_takes_the_first_unconsumed_match_once_per_wait_key(
    database: Database,
) -> None:
    store = EventStore(database)
    for i, name in enumerate(["approved", "ping", "approved", "approved"]):
        await store.record(event("dev", f"e{i}", name))

    first = await store.claim("dev", "approved", "run-1:wait-a")
    assert first is not None
    assert (first.sequence, first.consumed_by) == (1, "run-1:wait-a")
    assert first.consumed_at is not None
    again = await store.claim("dev", "approved", "run-1:wait-a")
    assert again is not None and again.sequence == 1  # idempotent for the same wait key

    second = await store.claim("dev", "approved", "run-2:wait-a")
    assert second is not None and second.sequence == 3
    after = await store.claim("dev", "approved", "run-3:wait-a", since_sequence=3)
    assert after is not None and after.sequence == 4
    assert await store.claim("dev", "approved", "run-4:wait-a") is None
    assert await store.claim("dev", "missing", "run-1:wait-b") is None
    assert await store.claim("other-device", "approved", "run-1:wait-a") is None

    # Consumed events are still listed (with who consumed them) until cleared.
    listed = await store.list("dev", name="approved")
    assert [e.consumed_by for e in listed] == ["run-1:wait-a", "run-2:wait-a", "run-3:wait-a"]
    await store.clear("dev")
    await store.record(event("dev", "e9", "approved"))
    assert await store.claim("dev", "approved", "run-1:wait-a") is not None


async def test_concurrent_claimers_never_share_an_event(database: Database) -> None:
    store = EventStore(database)
    for i in range(10):
        await store.record(event("dev", f"e{i}", "go"))

    claims = await asyncio.gather(*(store.claim("dev", "go", f"wait-{k}") for k in range(20)))

    got = [c for c in claims if c is not None]
    assert len(got) == 10
    assert sorted(c.sequence for c in got) == list(range(1, 11))
    for key, claim in zip((f"wait-{k}" for k in range(20)), claims, strict=True):
        if claim is not None:
            assert claim.consumed_by == key


async def test_concurrent_claims_with_one_wait_key_get_the_same_event(database: Database) -> None:
    store = EventStore(database)
    for i in range(5):
        await store.record(event("dev", f"e{i}", "go"))

    claims = await asyncio.gather(*(store.claim("dev", "go", "run:wait") for _ in range(8)))

    assert {c.sequence if c else None for c in claims} == {claims[0].sequence if claims[0] else 0}
    assert claims[0] is not None
    consumed = [e for e in await store.list("dev") if e.consumed_by is not None]
    assert [e.consumed_by for e in consumed] == ["run:wait"]


async def test_record_many_keeps_each_devices_order_and_reports_in_input_order(
    database: Database,
) -> None:
    store = EventStore(database, max_events_per_device=3)
    await store.record(event("b", "b0"))
    batch = await store.record_many(
        [
            event("b", "b1"),
            event("a", "a0"),
            event("b", "b0"),  # stored before: a duplicate
            event("a", "a1"),
            event("a", "a0"),  # the same event twice in one batch: stored once
            event("b", "b2"),
            event("b", "b3"),  # b holds three: refused
        ]
    )
    assert [(r.status, r.sequence) for r in batch.results] == [
        ("inserted", 2),
        ("inserted", 1),
        ("duplicate", 1),
        ("inserted", 2),
        ("duplicate", 1),
        ("inserted", 3),
        ("overflow", None),
    ]
    assert [e.event_id for e in await store.list("a")] == ["a0", "a1"]
    assert [e.event_id for e in await store.list("b")] == ["b0", "b1", "b2"]
    state = await store.state("b")
    assert state is not None and (state.count, state.last_sequence, state.overflowed) == (3, 3, 1)
    # No run yet for either device.
    assert {d: s.run for d, s in batch.runs.items()} == {"a": None, "b": None}
    assert (await store.record_many([])).results == []


async def test_record_many_reads_the_devices_run_and_its_open_waits(database: Database) -> None:
    from store.runs import DeviceRunStore
    from store.waits import WaitStore

    runs, waits, store = DeviceRunStore(database), WaitStore(database), EventStore(database)
    assert await runs.claim_start("dev", "k1", workflow="onboard")
    assert await runs.set_run("dev", "k1", "run-1")
    await waits.register("run-1", "w1", "dev", "approve", None)
    await waits.register("run-1", "w2", "dev", None, datetime.now(UTC))  # a timer: no name
    await waits.register("other-run", "w1", "dev", "reject", None)  # not the device's run
    await waits.register("run-1", "w3", "dev", "done", None)
    await waits.resolve("run-1", "w3", "event")

    batch = await store.record_many([event("dev", "e1", "approve")])

    snapshot = batch.runs["dev"]
    assert snapshot.run is not None
    assert (snapshot.run.run_id, snapshot.run.status) == ("run-1", "running")
    assert snapshot.waiting == frozenset({"approve"})


async def test_concurrent_batches_over_overlapping_devices_lose_nothing(
    database: Database,
) -> None:
    store = EventStore(database)
    devices = [f"d{i}" for i in range(8)]

    async def writer(w: int) -> None:
        for n in range(5):
            order = devices if w % 2 else list(reversed(devices))
            await store.record_many([event(d, f"{d}-{w}-{n}") for d in order])

    await asyncio.gather(*(writer(w) for w in range(4)))
    for d in devices:
        listed = await store.list(d)
        assert [e.sequence for e in listed] == list(range(1, 21))
        assert len({e.event_id for e in listed}) == 20
