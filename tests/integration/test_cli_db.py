"""``orchestration db migrate`` and ``db purge-events`` as a user runs them: a subprocess, on a
fresh PostgreSQL database and on a fresh SQLite file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from store.db import Database
from store.events import DeviceEvent, EventStore
from store.migrate import current_revision, head_revision

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_migrate_brings_a_fresh_database_to_head(database_url: str) -> None:
    done = cli("db", "migrate", "--url", database_url, "--output", "json")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["revision"] == head_revision()

    async def check() -> None:
        db = await Database.connect(database_url, migrate=False)
        try:
            assert await current_revision(db.engine) == head_revision()
            # The schema works: record through the store without migrating on connect.
            result = await EventStore(db).record(DeviceEvent(device_id="d", event_id="e", name="n"))
            assert result.status == "inserted"
        finally:
            await db.close()

    asyncio.run(check())
    again = cli("db", "migrate", env={"ORCH_DB_URL": database_url})
    assert again.returncode == 0, again.stderr
    assert f"is at revision {head_revision()}" in again.stdout


def test_migrate_refuses_an_unsupported_url() -> None:
    done = cli("db", "migrate", "--url", "mysql://localhost/db")
    assert done.returncode == 2
    assert "unsupported database URL" in done.stderr


def test_purge_events_deletes_only_events_cleared_long_enough_ago(database_url: str) -> None:
    async def prepare() -> None:
        db = await Database.connect(database_url)
        try:
            store = EventStore(db)
            for i in range(3):
                await store.record(DeviceEvent(device_id="old", event_id=f"o{i}", name="n"))
            await store.record(DeviceEvent(device_id="held", event_id="h0", name="n"))
            assert await store.clear("old") == 3
        finally:
            await db.close()

    asyncio.run(prepare())
    kept = cli("db", "purge-events", "--older-than", "1", "--url", database_url, "-o", "json")
    assert kept.returncode == 0, kept.stderr
    assert json.loads(kept.stdout)["purged"] == 0  # cleared moments ago, not a day

    purged = cli("db", "purge-events", "--older-than", "0", "--url", database_url)
    assert purged.returncode == 0, purged.stderr
    assert "purged 3 events" in purged.stdout

    async def after() -> None:
        db = await Database.connect(database_url)
        try:
            store = EventStore(db)
            # Purged: a redelivery is a new event now; the held event was not touched.
            again = await store.record(DeviceEvent(device_id="old", event_id="o0", name="n"))
            assert again.status == "inserted"
            assert [e.event_id for e in await store.list("held")] == ["h0"]
        finally:
            await db.close()

    asyncio.run(after())


def test_purge_events_requires_older_than() -> None:
    done = cli("db", "purge-events")
    assert done.returncode == 2
    assert "--older-than" in done.stderr
