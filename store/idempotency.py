"""Run an activity's side effect once per idempotency key and remember its result.

``run_once(key, activity, fn)`` claims the key with a ``pending`` row (a unique primary key,
inserted with insert-or-ignore), runs ``fn`` outside any transaction, and stores its JSON result as
``done``. Every later call with the key - a retry, a replay, a redelivery - returns that stored
result without calling ``fn``. A concurrent duplicate finds ``pending`` and polls (with backoff,
up to ``wait_timeout``) until the result is there.

- A failed ``fn`` (any exception, cancellation included) deletes the ``pending`` row: nothing is
  recorded, so a retry runs ``fn`` again.
- Leases: a ``pending`` claim older than ``lease`` (default 5 minutes, the longest Service Bus lock)
  is taken to be dead (its process crashed) and the next caller takes it over and runs ``fn``. The
  lease must therefore exceed the longest time ``fn`` can run, or ``fn`` may run twice. If the old
  owner does finish after all, whichever finisher writes first wins and both return that result.
- Dead holders: every claim names its process (``store.leases.process_holder``). When that
  process kept a process lease and the lease has expired (it was killed: ``flows.leases``), the
  claim is taken over at once, without waiting out ``lease``: a run taken back from a dead
  executor re-executes its step in flight with the same key instead of waiting on it.
- The row records the activity name and a sha256 of the canonical JSON of the input: the same key
  used for another activity or another input raises ``IdempotencyConflictError`` instead of
  returning a result that belongs to something else.
- Results are stored and returned as JSON (``to_jsonable_python``, then a JSON round trip), so the
  first call returns exactly what every replay returns: a pydantic model comes back as a dict.
- Clocks: leases compare the callers' clocks (UTC); hosts must keep them in sync (NTP).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue
from pydantic_core import to_jsonable_python
from sqlalchemy import RowMapping, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store.columns import utc_now
from store.db import Database
from store.errors import IdempotencyConflictError, IdempotencyPendingError
from store.leases import holder_expired, process_holder
from store.sql import insert_or_ignore
from store.tables import IDEMPOTENCY_KEYS

__all__ = ["DEFAULT_LEASE", "IdempotencyEntry", "IdempotencyStore", "input_hash", "to_json"]

DEFAULT_LEASE = timedelta(minutes=5)

_T = IDEMPOTENCY_KEYS


def to_json(value: Any) -> JsonValue:
    """``value`` as plain JSON data (models, datetimes, UUIDs converted; NaN refused)."""
    text = json.dumps(to_jsonable_python(value), allow_nan=False, separators=(",", ":"))
    result: JsonValue = json.loads(text)
    return result


def input_hash(value: Any) -> str:
    """sha256 hex of the canonical JSON of ``value`` (sorted keys, no spaces)."""
    canonical = json.dumps(
        to_jsonable_python(value), sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyEntry(BaseModel):
    """What the store holds for one key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    activity: str
    input_hash: str | None
    status: Literal["pending", "done"]
    result: JsonValue
    claimed_at: datetime
    completed_at: datetime | None


class IdempotencyStore:
    """First result wins, per idempotency key (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        *,
        lease: timedelta = DEFAULT_LEASE,
        wait_timeout: timedelta | None = None,
        poll_interval_seconds: float = 0.05,
        max_poll_interval_seconds: float = 1.0,
    ) -> None:
        self._db = db
        self.lease = lease
        #: How long a duplicate waits for the first caller; by default a little over the lease,
        #: after which the claim is stale and the duplicate takes it over itself.
        self.wait_timeout = wait_timeout if wait_timeout is not None else lease * 1.1
        self._poll = poll_interval_seconds
        self._max_poll = max_poll_interval_seconds

    async def run_once(
        self,
        key: str,
        activity: str,
        fn: Callable[[], Awaitable[Any]],
        *,
        input_data: Any = None,
    ) -> JsonValue:
        """``fn()``'s result as JSON, from the first successful call with ``key``.

        Raises ``IdempotencyConflictError`` when ``key`` belongs to another activity or input,
        ``IdempotencyPendingError`` (retryable) when another caller still runs it after
        ``wait_timeout``, and whatever ``fn`` raises (nothing is recorded then).
        """
        digest = input_hash(input_data) if input_data is not None else None
        started = time.monotonic()
        deadline = started + self.wait_timeout.total_seconds()
        delay = self._poll
        while True:
            token, entry = await self._acquire(key, activity, digest)
            if token is not None:
                return await self._execute(key, token, fn, activity, digest)
            if entry is not None and entry["status"] == "done":
                result: JsonValue = entry["result"]
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IdempotencyPendingError(key, time.monotonic() - started)
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self._max_poll)

    async def get(self, key: str) -> IdempotencyEntry | None:
        """The entry for ``key``, or None."""
        async with self._db.transaction(readonly=True) as connection:
            row = (await connection.execute(select(_T).where(_T.c.key == key))).mappings().first()
        if row is None:
            return None
        return IdempotencyEntry(
            key=row["key"],
            activity=row["activity"],
            input_hash=row["input_hash"],
            status=row["status"],
            result=row["result"],
            claimed_at=row["claimed_at"],
            completed_at=row["completed_at"],
        )

    async def _acquire(
        self, key: str, activity: str, digest: str | None
    ) -> tuple[str | None, RowMapping | None]:
        """(our owner token, None) when we hold the key now; else (None, the current row)."""
        token = str(uuid.uuid4())
        now = utc_now()
        async with self._db.transaction() as connection:
            claimed = await insert_or_ignore(
                connection,
                _T,
                {
                    "key": key,
                    "activity": activity,
                    "input_hash": digest,
                    "status": "pending",
                    "owner": token,
                    "holder": process_holder(),
                    "claimed_at": now,
                },
                ["key"],
            )
            if claimed:
                return token, None
            row = (await connection.execute(select(_T).where(_T.c.key == key))).mappings().first()
            if row is None:
                return None, None  # the holder failed and released it just now: try again
            if row["activity"] != activity:
                raise IdempotencyConflictError(
                    key, f"it belongs to activity {row['activity']!r}, not {activity!r}"
                )
            if row["input_hash"] != digest:
                raise IdempotencyConflictError(
                    key,
                    f"it was used with a different input (sha256 {row['input_hash']}, "
                    f"now {digest})",
                )
            if row["status"] == "pending" and await self._stale(connection, row, now):
                taken = await connection.execute(
                    update(_T)
                    .where(_T.c.key == key, _T.c.owner == row["owner"], _T.c.status == "pending")
                    .values(owner=token, holder=process_holder(), claimed_at=now)
                )
                if taken.rowcount == 1:
                    return token, None
            return None, row

    async def _stale(self, connection: AsyncConnection, row: RowMapping, now: datetime) -> bool:
        """Whether a ``pending`` claim is dead: older than the lease, or held by a process whose
        process lease has expired."""
        if row["claimed_at"] < now - self.lease:
            return True
        holder = row["holder"]
        if not holder or holder == process_holder():
            return False
        return await holder_expired(connection, holder, now)

    async def _execute(
        self,
        key: str,
        token: str,
        fn: Callable[[], Awaitable[Any]],
        activity: str,
        digest: str | None,
    ) -> JsonValue:
        try:
            result = to_json(await fn())
        except BaseException:
            async with self._db.transaction() as connection:
                await connection.execute(
                    delete(_T).where(_T.c.key == key, _T.c.owner == token, _T.c.status == "pending")
                )
            raise
        async with self._db.transaction() as connection:
            # Any owner: after a lease takeover, the first finisher's result is the one kept.
            finished = await connection.execute(
                update(_T)
                .where(_T.c.key == key, _T.c.status == "pending")
                .values(status="done", result=result, owner=token, completed_at=utc_now())
            )
            if finished.rowcount == 1:
                return result
            done = (
                (await connection.execute(select(_T.c.result).where(_T.c.key == key)))
                .mappings()
                .first()
            )
            if done is not None:
                first: JsonValue = done["result"]  # no pending row left, so this one is done
                return first
            # Our stale claim was taken over and the taker failed and released it: keep ours.
            now = utc_now()
            await insert_or_ignore(
                connection,
                _T,
                {
                    "key": key,
                    "activity": activity,
                    "input_hash": digest,
                    "status": "done",
                    "owner": token,
                    "result": result,
                    "claimed_at": now,
                    "completed_at": now,
                },
                ["key"],
            )
            return result
