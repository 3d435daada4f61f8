"""The orchestration database: events per device, idempotency keys, records, waits and runs.

SQLModel tables on SQLAlchemy's async engine: SQLite (aiosqlite) by default, PostgreSQL (asyncpg)
in production, through the same code; alembic migrations run on connect or through ``migrate``.

    settings     DatabaseSettings (ORCH_DB_*)
    db           Database.connect(url) -> engine, transaction(), session(), close()
    migrate      migrate(url), head_revision(), current_revision(engine)
    tables       the sqlmodel table models
    events       EventStore: record (idempotent, bounded), list, claim, clear, state
    idempotency  IdempotencyStore.run_once: the first result per key
    records      RecordStore: create (idempotent per key), update, get, delete (rollback)
    waits        WaitStore: runs waiting for events and timers
    runs         DeviceRunStore: each device's current run, and the routing outbox
"""

from store.db import Database
from store.errors import (
    IdempotencyConflictError,
    IdempotencyPendingError,
    RecordNotFoundError,
    RecordStateError,
    StoreError,
    UnsupportedDatabaseError,
)
from store.events import (
    DeviceEvent,
    DeviceState,
    EventStore,
    RecordResult,
    StoredEvent,
)
from store.idempotency import IdempotencyEntry, IdempotencyStore
from store.migrate import migrate
from store.records import Record, RecordStore
from store.runs import DeviceRun, DeviceRunStore, OutboxEntry
from store.settings import DatabaseSettings
from store.waits import Wait, WaitStore

__all__ = [
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
