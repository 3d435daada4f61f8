"""Schema migrations (alembic), runnable from ``Database.connect`` and from the CLI (``migrate``).

The alembic configuration is built in code (``alembic_config``); ``store/alembic.ini`` exists for
running the ``alembic`` command by hand (``alembic -c store/alembic.ini upgrade head`` reads the URL
from ``ORCH_DB_URL``). Concurrent upgrades are safe: PostgreSQL serialises them with an advisory
lock taken inside the migration transaction, SQLite with its write lock (``BEGIN IMMEDIATE``).
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from store.db import create_engine, normalize_url
from store.settings import DatabaseSettings

# alembic keeps its running environment in module globals (``alembic.context``), so two upgrades
# interleaving on one event loop corrupt each other: within a process they take turns. Across
# processes the database-level locks described above apply.
_upgrade_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _upgrade_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _upgrade_locks.get(loop)
    if lock is None:
        lock = _upgrade_locks[loop] = asyncio.Lock()
    return lock


__all__ = ["alembic_config", "current_revision", "head_revision", "migrate", "upgrade_engine"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | URL | None = None) -> Config:
    """An alembic configuration pointing at ``store/migrations``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        rendered = normalize_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def head_revision() -> str:
    """The newest revision shipped with this code."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade_engine(engine: AsyncEngine) -> None:
    """Run the migrations to head on ``engine`` (a no-op when already at head)."""
    async with _upgrade_lock(), engine.connect() as connection:
        await connection.run_sync(_upgrade)
        await connection.commit()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, ``None`` for an empty database."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)


async def migrate(url: str | URL, settings: DatabaseSettings | None = None) -> str:
    """Upgrade the database at ``url`` to head (the CLI's ``db upgrade``); return the revision."""
    engine = create_engine(url, settings)
    try:
        await upgrade_engine(engine)
        revision = await current_revision(engine)
    finally:
        await engine.dispose()
    return revision or ""
