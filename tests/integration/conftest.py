"""Database fixtures for the store's contract suite and for anyone who needs a real database.

- ``sqlite_url``: a SQLite file in the test's tmp directory (aiosqlite URL).
- ``pg_url``: a fresh, empty PostgreSQL database (asyncpg URL) from the session ``postgres`` server.
- ``database_url``: one of the two, parametrized ``["sqlite", "postgres"]``.
- ``database``: a connected, migrated ``store.db.Database`` on ``database_url``; closed afterwards.

URLs are built in sync fixtures because ``postgres.create_database`` runs its own event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from store.db import Database
from tests.support.postgres import PostgresServer

DIALECTS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'orchestration.db'}"


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    return postgres.sqlalchemy_url(postgres.create_database("store"))


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    db = await Database.connect(database_url)
    try:
        yield db
    finally:
        await db.close()
