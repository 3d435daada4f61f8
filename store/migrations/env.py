"""Alembic environment: runs the store's migrations on a given connection or on ``sqlalchemy.url``.

``store.migrate`` passes a live (sync-facing) connection in ``config.attributes["connection"]``.
Run by hand (``alembic -c store/alembic.ini upgrade head``) it connects with the async driver to
``sqlalchemy.url`` or, when that is empty, ``ORCH_DB_URL``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text

import store.tables
from store.settings import DatabaseSettings

# Any constant shared by every process that migrates this schema: "orch" in ASCII.
MIGRATION_LOCK_ID = 0x6F726368

config = context.config
target_metadata = store.tables.metadata


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Two processes starting together must not both create the tables.
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        context.run_migrations()


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_online_from_url() -> None:
    from store.db import create_engine

    url = config.get_main_option("sqlalchemy.url") or DatabaseSettings().url
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_offline()
elif (given := config.attributes.get("connection")) is not None:
    run_migrations(given)
else:
    asyncio.run(run_online_from_url())
