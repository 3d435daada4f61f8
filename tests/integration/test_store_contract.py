"""The store as a whole, on SQLite and PostgreSQL: migrations, dialect setup and the public surface.

The per-store contracts live beside this file (``test_event_store.py``,
``test_idempotency_store.py``, ``test_records_store.py``, ``test_waits_store.py``,
``test_device_runs.py``); all of them run on the ``database`` fixture, once per dialect.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

import store
from store.db import Database
from store.errors import UnsupportedDatabaseError
from store.migrate import current_revision, head_revision, migrate
from store.tables import metadata

pytestmark = pytest.mark.integration

TABLES = {
    "alembic_version",
    "device_events",
    "device_runs",
    "devices",
    "idempotency_keys",
    "process_leases",
    "records",
    "route_outbox",
    "run_leases",
    "waits",
}


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_connect_migrates_a_fresh_database_to_head_matching_the_models(
    database_url: str,
) -> None:
    database = await Database.connect(database_url)
    try:
        assert await current_revision(database.engine) == head_revision()
        async with database.engine.connect() as connection:
            assert await connection.run_sync(_table_names) == TABLES
            assert await connection.run_sync(_differences) == []
    finally:
        await database.close()


async def test_migrations_are_idempotent_and_safe_to_run_concurrently(database_url: str) -> None:
    databases = await asyncio.gather(*(Database.connect(database_url) for _ in range(3)))
    try:
        again = await Database.connect(database_url)
        await again.close()
        assert await migrate(database_url) == head_revision()
        assert await current_revision(databases[0].engine) == head_revision()
    finally:
        for database in databases:
            await database.close()


async def test_migration_0003_downgrades_and_upgrades_again_keeping_events(
    database_url: str,
) -> None:
    """0003 adds the out-of-order columns and replaces ``orch_record_events`` on PostgreSQL:
    down to 0002 (recording works as before) and up again, with the rows kept."""
    from alembic import command

    from store.events import DeviceEvent, EventStore
    from store.migrate import alembic_config

    def step(connection: Connection, target: str, down: bool) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, target)

    database = await Database.connect(database_url)
    try:
        store_ = EventStore(database)
        await store_.record(DeviceEvent(device_id="d", event_id="a", name="n"))
        async with database.engine.connect() as connection:
            await connection.run_sync(step, "0002", True)
            await connection.commit()
        assert await current_revision(database.engine) == "0002"
        async with database.engine.connect() as connection:
            columns = await connection.run_sync(
                lambda sync: {c["name"] for c in inspect(sync).get_columns("device_events")}
            )
            assert "out_of_order" not in columns and "occurred_at" not in columns
            if database.dialect == "postgresql":
                # 0002's function is back: it records with its own arguments.
                recorded = await connection.exec_driver_sql(
                    "SELECT status FROM orch_record_events(ARRAY['d'], ARRAY['b'], ARRAY['n'],"
                    " ARRAY['{}'], ARRAY[NULL]::timestamptz[], ARRAY[NULL]::timestamptz[],"
                    " now(), 10)"
                )
                assert [row[0] for row in recorded] == ["inserted"]
                await connection.commit()
        async with database.engine.connect() as connection:
            await connection.run_sync(step, "head", False)
            await connection.commit()
        assert await current_revision(database.engine) == head_revision()
        async with database.engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
        await database.close()
        database = await Database.connect(database_url)
        store_ = EventStore(database)
        held = await store_.list("d")
        assert [e.event_id for e in held][:1] == ["a"]
        assert not any(e.out_of_order for e in held)
        assert (await store_.record(DeviceEvent(device_id="d", event_id="c", name="n"))).stored
    finally:
        await database.close()


def test_separate_processes_migrating_at_once_all_succeed(database_url: str) -> None:
    script = (
        "import asyncio, sys\n"
        "from store.migrate import migrate\n"
        "print(asyncio.run(migrate(sys.argv[1])))"
    )
    root = Path(__file__).resolve().parents[2]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, database_url],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [head_revision()] * 3


async def test_connect_without_migrating_leaves_the_database_alone(database_url: str) -> None:
    database = await Database.connect(database_url, migrate=False)
    try:
        assert await current_revision(database.engine) is None
        async with database.engine.connect() as connection:
            assert await connection.run_sync(_table_names) == set()
    finally:
        await database.close()


async def test_sqlite_creates_its_directory_and_runs_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "orchestration.db"
    database = await Database.connect(f"sqlite:///{path}")  # the async driver is implied
    try:
        assert path.exists()
        assert database.dialect == "sqlite"
        async with database.transaction(readonly=True) as connection:
            assert (await connection.scalar(text("PRAGMA journal_mode"))) == "wal"
            assert (await connection.scalar(text("PRAGMA foreign_keys"))) == 1
            assert (await connection.scalar(text("PRAGMA busy_timeout"))) == 30000
    finally:
        await database.close()


async def test_postgres_urls_use_asyncpg(pg_url: str) -> None:
    plain = pg_url.replace("postgresql+asyncpg://", "postgresql://")
    database = await Database.connect(plain)
    try:
        assert database.dialect == "postgresql"
        assert database.engine.url.drivername == "postgresql+asyncpg"
        async with database.session() as session:
            result = await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            assert result.scalar() == 1
    finally:
        await database.close()


async def test_other_databases_are_refused_with_the_supported_forms() -> None:
    with pytest.raises(UnsupportedDatabaseError) as refused:
        await Database.connect("mysql://localhost/db")
    assert "sqlite+aiosqlite" in str(refused.value)
    assert "postgresql+asyncpg" in str(refused.value)


def test_the_public_surface_is_pinned() -> None:
    assert store.__all__ == sorted(store.__all__)
    assert store.__all__ == [
        "Database",
        "DatabaseSettings",
        "DeviceEvent",
        "DeviceRun",
        "DeviceRunStore",
        "DeviceState",
        "EventStore",
        "IdempotencyConflictError",
        "IdempotencyEntry",
        "IdempotencyPendingError",
        "IdempotencyStore",
        "OutboxEntry",
        "Record",
        "RecordNotFoundError",
        "RecordResult",
        "RecordStateError",
        "RecordStore",
        "StoreError",
        "StoredEvent",
        "UnsupportedDatabaseError",
        "Wait",
        "WaitStore",
        "migrate",
    ]
    assert all(hasattr(store, name) for name in store.__all__)


def test_settings_read_the_orch_db_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert store.DatabaseSettings().url == "sqlite+aiosqlite:///.orchestration/orchestration.db"
    monkeypatch.setenv("ORCH_DB_URL", "postgresql+asyncpg://u@h/db")
    monkeypatch.setenv("ORCH_DB_POOL_SIZE", "7")
    settings = store.DatabaseSettings()
    assert (settings.url, settings.pool_size) == ("postgresql+asyncpg://u@h/db", 7)
