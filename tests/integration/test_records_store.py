"""Contract of ``store.records.RecordStore`` on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from store.db import Database
from store.errors import RecordNotFoundError, RecordStateError
from store.records import RecordStore

pytestmark = pytest.mark.integration


async def test_create_get_and_the_activity_document(database: Database) -> None:
    store = RecordStore(database)
    record = await store.create("onboarding", {"serial": "X1", "n": 1})

    assert await store.get(record.id) == record
    assert await store.require(record.id) == record
    doc = record.as_json()
    assert set(doc) == {"id", "kind", "key", "data", "status", "createdAt", "updatedAt"}
    assert (doc["kind"], doc["key"], doc["data"], doc["status"]) == (
        "onboarding",
        None,
        {"serial": "X1", "n": 1},
        "active",
    )
    assert record.created_at.tzinfo is not None
    assert await store.get("no-such-id") is None
    with pytest.raises(RecordNotFoundError):
        await store.require("no-such-id")


async def test_create_with_a_business_key_is_idempotent(database: Database) -> None:
    store = RecordStore(database)
    first = await store.create("onboarding", {"v": 1}, key="device-7")
    again = await store.create("onboarding", {"v": 2}, key="device-7")
    other_kind = await store.create("audit", {"v": 3}, key="device-7")

    assert again == first
    assert other_kind.id != first.id
    assert await store.get_by_key("onboarding", "device-7") == first


async def test_concurrent_creates_with_one_key_make_one_record(database: Database) -> None:
    store = RecordStore(database)
    made = await asyncio.gather(*(store.create("k", {"i": i}, key="same") for i in range(10)))
    assert len({r.id for r in made}) == 1


async def test_update_merges_data_and_sets_status(database: Database) -> None:
    store = RecordStore(database)
    record = await store.create("onboarding", {"a": 1, "b": 1})

    updated = await store.update(record.id, {"b": 2, "c": 3}, status="verified")
    assert updated.data == {"a": 1, "b": 2, "c": 3}
    assert updated.status == "verified"
    assert updated.updated_at >= record.updated_at
    assert updated.created_at == record.created_at
    status_only = await store.update(record.id, status="done")
    assert (status_only.data, status_only.status) == (updated.data, "done")

    with pytest.raises(RecordNotFoundError):
        await store.update("no-such-id", {"a": 1})


async def test_delete_rolls_the_create_back_and_releases_the_key(database: Database) -> None:
    store = RecordStore(database)
    record = await store.create("onboarding", {"a": 1}, key="device-7")

    assert await store.delete(record.id) is True
    assert await store.delete(record.id) is True  # compensation is idempotent
    assert await store.delete("no-such-id") is False

    kept = await store.get(record.id)
    assert kept is not None
    assert (kept.status, kept.key, kept.data) == ("rolled_back", None, {"a": 1})
    assert kept.rolled_back_at is not None
    with pytest.raises(RecordStateError):
        await store.update(record.id, {"a": 2})

    assert await store.get_by_key("onboarding", "device-7") is None
    recreated = await store.create("onboarding", {"a": 2}, key="device-7")
    assert recreated.id != record.id
    assert recreated.status == "active"
