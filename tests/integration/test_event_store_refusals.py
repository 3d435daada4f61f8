"""What ``EventStore.record_many`` refuses or notes, on SQLite and PostgreSQL (``database``).

- Values PostgreSQL can never store (NUL, lone surrogates, NaN, infinity) are refused on both
  dialects as ``EventRefusedError`` naming the event and the value; nothing of the batch is written.
- An event id reused with other content is a ``conflict`` (not stored, not a duplicate).
- A producer time that goes backwards is stored and flagged ``out_of_order``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from store.db import Database
from store.errors import EventRefusedError
from store.events import DeviceEvent, EventStore

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def event(device: str, event_id: str, name: str = "ping", payload: Any = None) -> DeviceEvent:
    return DeviceEvent(device_id=device, event_id=event_id, name=name, payload=payload or {})


REFUSED = [
    pytest.param(event("dev", "e", payload={"v": float("nan")}), "payload at /v", id="nan"),
    pytest.param(event("dev", "e", payload={"v": float("inf")}), "payload at /v", id="1e400"),
    pytest.param(event("dev", "e", payload={"s": "a\x00b"}), "U+0000", id="nul-in-string"),
    pytest.param(event("dev", "e", payload={"k\x00": 1}), "key contains U+0000", id="nul-in-key"),
    pytest.param(event("dev", "e", payload={"s": ["\ud800"]}), "payload at /s/0", id="surrogate"),
    pytest.param(event("dev\x00x", "e"), "deviceId contains U+0000", id="nul-in-device"),
    pytest.param(event("dev", "e\x00"), "eventId contains U+0000", id="nul-in-event-id"),
    pytest.param(event("dev", "e", payload={"\udc00": 1}), "key contains the lone", id="key"),
]


@pytest.mark.parametrize(("bad", "says"), REFUSED)
async def test_values_postgres_cannot_store_are_refused_on_every_dialect_and_nothing_stays(
    database: Database, bad: DeviceEvent, says: str
) -> None:
    store = EventStore(database)
    good = event("good-device", "g1", payload={"ok": True})

    with pytest.raises(EventRefusedError) as refused:
        await store.record_many([good, bad])

    assert not refused.value.retryable
    assert list(refused.value.refused) == [1]  # the position of the bad event in the batch
    assert says in refused.value.refused[1]
    # Nothing of the batch was written, not even the good event or the devices' rows.
    assert await store.state("good-device") is None
    if "\x00" not in bad.device_id:  # PostgreSQL cannot even be asked about such an id
        assert await store.state(bad.device_id) is None
    assert await store.list("good-device") == []
    # The good event alone is stored as usual.
    assert (await store.record(good)).status == "inserted"


async def test_an_event_id_reused_with_other_content_is_a_conflict_and_not_stored(
    database: Database,
) -> None:
    store = EventStore(database)
    first = await store.record(event("dev", "msg-1", payload={"v": 1}))
    same = await store.record(event("dev", "msg-1", payload={"v": 1}))
    other_payload = await store.record(event("dev", "msg-1", payload={"v": 2}))
    other_name = await store.record(event("dev", "msg-1", name="pong", payload={"v": 1}))

    assert (first.status, same.status) == ("inserted", "duplicate")
    assert (other_payload.status, other_payload.sequence) == ("conflict", 1)
    assert other_name.status == "conflict"
    assert not other_payload.stored
    assert [(e.event_id, e.payload) for e in await store.list("dev")] == [("msg-1", {"v": 1})]
    state = await store.state("dev")
    assert state is not None
    assert (state.count, state.last_sequence, state.overflowed) == (1, 1, 0)
    # Key order does not make content different.
    await store.record(event("dev", "msg-2", payload={"a": 1, "b": [1, 2]}))
    assert (await store.record(event("dev", "msg-2", payload={"b": [1, 2], "a": 1}))).status == (
        "duplicate"
    )
    # In one batch as well: the second copy conflicts with the first.
    batch = await store.record_many(
        [event("dev", "msg-3", payload={"v": 1}), event("dev", "msg-3", payload={"v": 9})]
    )
    assert [r.status for r in batch.results] == ["inserted", "conflict"]


async def test_a_producer_time_going_backwards_is_stored_and_flagged_out_of_order(
    database: Database,
) -> None:
    store = EventStore(database)

    def timed(event_id: str, at: datetime | None) -> DeviceEvent:
        return DeviceEvent(device_id="dev", event_id=event_id, name="ping", occurred_at=at)

    results = [
        await store.record(timed("a", T0)),
        await store.record(timed("b", T0 + timedelta(seconds=5))),
        await store.record(timed("late", T0 + timedelta(seconds=1))),  # behind "b"
        await store.record(timed("untimed", None)),  # nothing to compare
        await store.record(timed("c", T0 + timedelta(seconds=6))),
    ]
    batch = await store.record_many(
        [timed("d", T0 + timedelta(seconds=8)), timed("d-late", T0 + timedelta(seconds=7))]
    )

    assert [r.out_of_order for r in results] == [False, False, True, False, False]
    assert [r.out_of_order for r in batch.results] == [False, True]
    assert [r.status for r in [*results, *batch.results]] == ["inserted"] * 7
    stored = {e.event_id: e for e in await store.list("dev")}
    assert [e for e, s in stored.items() if s.out_of_order] == ["late", "d-late"]
    assert stored["late"].occurred_at == T0 + timedelta(seconds=1)
    assert stored["untimed"].occurred_at is None
    assert [e.event_id for e in await store.list("dev")] == [
        "a",
        "b",
        "late",
        "untimed",
        "c",
        "d",
        "d-late",
    ]  # arrival order is kept: the flag notes, it does not reorder
