"""``flows.steps.RetriedBookkeeping``: an activity's idempotency bookkeeping rides out a lost
database without running the activity again, on real PostgreSQL.

The database goes away inside the side effect itself (the role's connections are cut and new
ones refused with "too many connections", SQLSTATE 53300) and comes back 1.5 s later: recording
the outcome fails transiently, as it did when ``pg_terminate_backend`` or a PostgreSQL restart
hit between the side effect and its record (the pg-terminate drill's run that stayed Running: the
claim stayed ``pending`` and the task's retry waited on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import pytest

from flows.steps import RetriedBookkeeping
from store.db import Database
from store.idempotency import IdempotencyStore
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

OUTAGE_SECONDS = 1.5


@pytest.fixture
async def outage(postgres: PostgresServer) -> AsyncIterator[tuple[Database, Any]]:
    """A database owned by a role of its own, and ``cut()``: the role loses its connections and
    may open none for ``OUTAGE_SECONDS``."""
    role = f"orch_bk_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.admin_dsn, timeout=10)
    await admin.execute(f'CREATE ROLE "{role}" LOGIN')
    name = f"bookkeeping_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
    host = postgres.host_part.split("@", 1)[1]
    db = await Database.connect(f"postgresql+asyncpg://{role}@{host}/{name}")
    back: list[asyncio.Task[None]] = []

    async def come_back() -> None:
        await asyncio.sleep(OUTAGE_SECONDS)
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')

    async def cut() -> None:
        await admin.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        back.append(asyncio.create_task(come_back()))

    try:
        yield db, cut
    finally:
        await asyncio.gather(*back, return_exceptions=True)
        await db.close()
        with contextlib.suppress(asyncpg.PostgresError):
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        await admin.close()


def retried(db: Database) -> RetriedBookkeeping:
    after = IdempotencyStore(db, lease=timedelta(0), wait_timeout=timedelta(seconds=30))
    return RetriedBookkeeping(IdempotencyStore(db), after)


async def test_an_outcome_whose_record_failed_is_recorded_later_and_the_activity_ran_once(
    outage: tuple[Database, Any],
) -> None:
    db, cut = outage
    calls = 0

    async def side_effect() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await cut()  # the database goes away between the side effect and its record
        return {"sent": True}

    key = f"step-{uuid.uuid4().hex}"
    result = await retried(db).run_once(key, "http.request", side_effect, input_data={"n": 1})
    assert result == {"sent": True}
    assert calls == 1
    entry = await IdempotencyStore(db).get(key)
    assert entry is not None and entry.status == "done" and entry.result == {"sent": True}
    # A replay gets the record without calling the activity.
    again = await IdempotencyStore(db).run_once(
        key, "http.request", side_effect, input_data={"n": 1}
    )
    assert again == {"sent": True} and calls == 1


async def test_an_activity_that_failed_while_the_database_went_away_fails_once_and_frees_its_key(
    outage: tuple[Database, Any],
) -> None:
    db, cut = outage
    calls = 0

    async def side_effect() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await cut()
        raise RuntimeError("the activity's own failure")

    key = f"step-{uuid.uuid4().hex}"
    with pytest.raises(RuntimeError, match="the activity's own failure"):
        await retried(db).run_once(key, "http.request", side_effect, input_data={"n": 1})
    assert calls == 1
    assert await IdempotencyStore(db).get(key) is None  # released: the next attempt runs it
