"""Runs waiting for an event or a timer: the index the timer loop and the router read.

A run that reaches a wait registers ``(run_id, wait_key)`` with the device and event name it waits
for and/or the instant it is due, then suspends. ``register`` is idempotent (a replayed step
registers again without changing the first registration). On PostgreSQL an event wait holds the
device's ``devices`` row (``FOR SHARE``) while it registers, the lock ``EventStore.record_many``
takes before it reads the device's waits: a registration and a recording of that device's event
are ordered, so either the run's claim (made after registering) sees the event, or the recorder's
read sees the wait and routes the event to the run. ``resolve`` is a compare-and-set from
``waiting`` to ``resolved``: when the timer and an event race to wake one wait, exactly one call
returns True, and only that caller resumes the run.

    due(now)                      waiting rows with ``due_at <= now``, earliest first
    waiting_for(device, event)    waiting rows for that device and event name, oldest first
    event_ready()                 waiting rows whose event is already held, unconsumed, in the
                                  event store (it arrived while the run was busy)
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import RowMapping, Select, and_, exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store.columns import utc_now
from store.db import Database
from store.sql import insert_device_if_missing, insert_or_ignore
from store.tables import DEVICE_EVENTS, DEVICES, WAITS

__all__ = ["Wait", "WaitStore"]

_W = WAITS
_E = DEVICE_EVENTS
_D = DEVICES


class Wait(BaseModel):
    """One registered wait."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    wait_key: str
    device_id: str | None
    event_name: str | None
    due_at: datetime | None
    status: Literal["waiting", "resolved"]
    created_at: datetime
    resolved_at: datetime | None
    #: How it ended: ``event``, ``timer``, ``gone`` (the run no longer exists), ... (free text).
    resolved_how: str | None


def _wait(row: RowMapping) -> Wait:
    return Wait(**{name: row[name] for name in Wait.model_fields})


class WaitStore:
    """Register, find and resolve waits (see the module docstring)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def register(
        self,
        run_id: str,
        wait_key: str,
        device_id: str | None,
        event_name: str | None,
        due_at: datetime | None,
    ) -> Wait:
        """Record the wait (idempotent on ``(run_id, wait_key)``); the stored registration."""
        async with self._db.transaction() as connection:
            if device_id is not None and event_name is not None and self._db.dialect != "sqlite":
                await self._hold_device(connection, device_id)
            await insert_or_ignore(
                connection,
                _W,
                {
                    "run_id": run_id,
                    "wait_key": wait_key,
                    "device_id": device_id,
                    "event_name": event_name,
                    "due_at": due_at,
                    "status": "waiting",
                    "created_at": utc_now(),
                },
                ["run_id", "wait_key"],
            )
            query = select(_W).where(_W.c.run_id == run_id, _W.c.wait_key == wait_key)
            row = (await connection.execute(query)).mappings().one()
        return _wait(row)

    @staticmethod
    async def _hold_device(connection: AsyncConnection, device_id: str) -> None:
        """Share-lock the device's row until commit (created empty if the device has none)."""
        held = select(_D.c.device_id).where(_D.c.device_id == device_id).with_for_update(read=True)
        if await connection.scalar(held) is None:
            now = utc_now()
            await insert_device_if_missing(connection, device_id, now)
            await connection.scalar(held)

    async def get(self, run_id: str, wait_key: str) -> Wait | None:
        """The wait, or None."""
        async with self._db.transaction(readonly=True) as connection:
            query = select(_W).where(_W.c.run_id == run_id, _W.c.wait_key == wait_key)
            row = (await connection.execute(query)).mappings().first()
        return None if row is None else _wait(row)

    async def due(self, now: datetime, limit: int = 1000) -> list[Wait]:
        """Waiting rows whose ``due_at`` is at or before ``now``, earliest first."""
        query = (
            select(_W)
            .where(_W.c.status == "waiting", _W.c.due_at.is_not(None), _W.c.due_at <= now)
            .order_by(_W.c.due_at, _W.c.created_at)
            .limit(limit)
        )
        return await self._select(query)

    async def waiting_for(self, device_id: str, event_name: str) -> list[Wait]:
        """Waiting rows for this device and event name, oldest first."""
        query = (
            select(_W)
            .where(
                _W.c.status == "waiting",
                _W.c.device_id == device_id,
                _W.c.event_name == event_name,
            )
            .order_by(_W.c.created_at, _W.c.run_id)
        )
        return await self._select(query)

    async def event_ready(self, limit: int = 1000) -> list[Wait]:
        """Waiting rows whose device holds an unconsumed event of the awaited name."""
        held = exists().where(
            and_(
                _E.c.device_id == _W.c.device_id,
                _E.c.name == _W.c.event_name,
                _E.c.consumed_by.is_(None),
                _E.c.cleared_at.is_(None),
            )
        )
        query = (
            select(_W)
            .where(_W.c.status == "waiting", _W.c.event_name.is_not(None), held)
            .order_by(_W.c.created_at, _W.c.run_id)
            .limit(limit)
        )
        return await self._select(query)

    async def resolve(self, run_id: str, wait_key: str, how: str) -> bool:
        """Mark the wait resolved; True only for the call that resolved it."""
        async with self._db.transaction() as connection:
            result = await connection.execute(
                update(_W)
                .where(_W.c.run_id == run_id, _W.c.wait_key == wait_key, _W.c.status == "waiting")
                .values(status="resolved", resolved_at=utc_now(), resolved_how=how[:50])
            )
        return result.rowcount == 1

    async def _select(self, query: Select[*tuple[Any, ...]]) -> list[Wait]:
        async with self._db.transaction(readonly=True) as connection:
            rows = (await connection.execute(query)).mappings().all()
        return [_wait(row) for row in rows]
