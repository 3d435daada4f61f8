"""The database connection: one async engine for SQLite (aiosqlite) or PostgreSQL (asyncpg).

``await Database.connect(url)`` creates the engine, configures the dialect and runs the migrations
to head (unless told not to). Stores take a ``Database`` and open short transactions through
``transaction()`` (SQLAlchemy Core on an ``AsyncConnection``); other packages may use ``session()``
(a sqlmodel ``AsyncSession``, ``expire_on_commit=False``).

On PostgreSQL the hot path of ingress (``EventStore.record_many``) goes around SQLAlchemy:
``native()`` lends a connection of a plain asyncpg pool (created on first use, sized like the
engine's pool) for one statement in autocommit, which is one round trip where a SQLAlchemy
transaction costs four (pre-ping, BEGIN, the statement, COMMIT) plus its adaptation layers.

SQLite is the embedded default. It has one writer at a time: every transaction starts with
``BEGIN IMMEDIATE`` so that a writer takes the lock up front and waits (``busy_timeout``) instead of
failing when a read transaction later tries to write. Writers of different devices therefore queue
for a few milliseconds on SQLite; on PostgreSQL they take row locks of their own device only.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel.ext.asyncio.session import AsyncSession

from store.errors import UnsupportedDatabaseError
from store.settings import DatabaseSettings

if TYPE_CHECKING:
    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

__all__ = ["Database", "normalize_url"]

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}

_READONLY = "orch_readonly"

#: How long a statement may go without an answer before asyncpg abandons it (``TimeoutError``,
#: a transient failure): a connection cut at the wrong moment can leave a statement waiting for
#: an answer that never comes, which would hold a run forever.
STATEMENT_TIMEOUT_SECONDS = 60.0


def normalize_url(url: str | URL) -> URL:
    """The URL with the async driver this store uses; refuse any other database."""
    parsed = make_url(url)
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise UnsupportedDatabaseError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use sqlite+aiosqlite:///path.db or postgresql+asyncpg://user@host/db"
        )
    return parsed.set(drivername=driver)


def _sqlite_file(url: URL) -> Path | None:
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _configure_sqlite(engine: AsyncEngine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL: readers never block the writer and the writer never blocks readers.
            cursor.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives power loss; the listener settles messages after the commit,
            # so NORMAL's "the last transactions may roll back" would lose acknowledged events.
            cursor.execute("PRAGMA synchronous=FULL")
            # Wait for the write lock instead of failing at once with "database is locked".
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            # SQLite ignores foreign keys unless asked, per connection.
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock at BEGIN: a deferred transaction that reads and then
        # writes fails with SQLITE_BUSY (no waiting) when another writer committed in between.
        readonly = connection.get_execution_options().get(_READONLY, False)
        connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def create_engine(url: str | URL, settings: DatabaseSettings | None = None) -> AsyncEngine:
    """An async engine for the URL, configured for its dialect (no migrations)."""
    settings = settings or DatabaseSettings()
    parsed = normalize_url(url)
    pool: dict[str, Any] = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_timeout": settings.pool_timeout_seconds,
        "pool_recycle": settings.pool_recycle_seconds,
    }
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_file(parsed)
        if path is None:
            pool = {}  # an in-memory database lives in one shared connection (StaticPool)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed, **pool)
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
        return engine
    engine = create_async_engine(
        parsed,
        pool_pre_ping=True,
        connect_args={
            "server_settings": {"application_name": "orchestration"},
            "command_timeout": STATEMENT_TIMEOUT_SECONDS,
        },
        **pool,
    )
    _discard_broken_connections(engine)
    return engine


def _discard_broken_connections(engine: AsyncEngine) -> None:
    """Count asyncpg's ``InternalClientError`` as a lost connection, so the pool discards it.

    When ``pg_terminate_backend`` (or a server restart) lands between two protocol messages,
    asyncpg raises "cannot switch to state N; another operation is in progress" instead of a
    connection error. SQLAlchemy would return that connection to the pool as if healthy, and the
    next statement on it fails or waits for an answer that never comes.
    """

    @event.listens_for(engine.sync_engine, "handle_error")
    def on_error(context: Any) -> None:
        original = context.original_exception
        if any(k.__name__ == "InternalClientError" for k in type(original).__mro__):
            context.is_disconnect = True


class Database:
    """An async engine plus the ways to use it; create with ``await Database.connect(url)``."""

    def __init__(self, engine: AsyncEngine, settings: DatabaseSettings | None = None) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        self._settings = settings or DatabaseSettings()
        self._native: asyncpg.Pool | None = None
        self._native_lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls,
        url: str | URL | None = None,
        *,
        settings: DatabaseSettings | None = None,
        migrate: bool | None = None,
    ) -> Database:
        """Connect to ``url`` (default: ``settings.url``) and run the migrations to head.

        ``migrate=False`` (or ``settings.migrate_on_connect=False``) skips the migrations, for
        deployments that run ``migrate(url)`` as a separate step.
        """
        settings = settings or DatabaseSettings()
        engine = create_engine(url if url is not None else settings.url, settings)
        database = cls(engine, settings)
        try:
            if settings.migrate_on_connect if migrate is None else migrate:
                from store.migrate import upgrade_engine

                await upgrade_engine(engine)
        except BaseException:
            await engine.dispose()
            raise
        return database

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    @property
    def url(self) -> str:
        """The URL with any password hidden (safe to log)."""
        return self._engine.url.render_as_string(hide_password=True)

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction: committed on exit, rolled back on an exception.

        ``readonly=True`` lets SQLite readers start without the write lock; writing inside such a
        transaction may fail with "database is locked" under contention.
        """
        async with self._engine.connect() as connection:
            if readonly:
                connection = await connection.execution_options(**{_READONLY: True})
            async with connection.begin():
                yield connection

    @asynccontextmanager
    async def native(self) -> AsyncIterator[asyncpg.Connection]:
        """A plain asyncpg connection from this database's own pool (PostgreSQL only), outside any
        transaction: each statement commits on its own. Returned to the pool on exit."""
        if self.dialect != "postgresql":
            raise UnsupportedDatabaseError("native() is for PostgreSQL only")
        pool = self._native or await self._open_native()
        async with pool.acquire() as connection:
            yield connection

    async def _open_native(self) -> asyncpg.Pool:
        import asyncpg

        async with self._native_lock:
            if self._native is None:
                url = self._engine.url.set(drivername="postgresql")
                self._native = await asyncpg.create_pool(
                    url.render_as_string(hide_password=False),
                    min_size=1,
                    max_size=self._settings.pool_size + self._settings.max_overflow,
                    max_inactive_connection_lifetime=float(
                        max(self._settings.pool_recycle_seconds, 60)
                    ),
                    server_settings={"application_name": "orchestration"},
                )
            return self._native

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A sqlmodel session; the caller commits (``await session.commit()``)."""
        async with self._sessions() as session:
            yield session

    async def close(self) -> None:
        """Close every pooled connection."""
        if self._native is not None:
            native, self._native = self._native, None
            await native.close()
        await self._engine.dispose()
