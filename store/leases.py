"""Leases: which process executes each run, and whether that process is still alive.

A process that executes runs keeps a row in ``process_leases`` and renews it every few seconds
(``renew_process``); the row's ``expires_at`` is the moment the process is taken for dead if it
has not renewed by then. Each run it executes has a row in ``run_leases`` naming it as the holder
(``hold_run``, upserted at the start of every execution, so a run taken over by another process
names the new one). ``find_runs`` answers, for a set of runs, who holds each and whether that
holder is alive; ``take_back`` moves a run away from a dead holder with a compare-and-set on the
holder, so of two processes healing at once only one wins, and counts the heal.

Clocks: expiry compares the renewing host's clock with the reading host's (UTC); hosts keep them
in sync (NTP), as for the idempotency leases.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store.columns import utc_now
from store.db import Database
from store.sql import insert_or_ignore
from store.tables import PROCESS_LEASES, RUN_LEASES

__all__ = ["LeaseStore", "RunLease", "holder_expired", "process_holder"]

_P = PROCESS_LEASES
_R = RUN_LEASES

_holder: tuple[int, str] | None = None


def process_holder() -> str:
    """This process's name as a lease holder: ``host:pid:random`` (new after a fork)."""
    global _holder
    pid = os.getpid()
    if _holder is None or _holder[0] != pid:
        _holder = (pid, f"{socket.gethostname()[:120]}:{pid}:{uuid.uuid4().hex[:12]}")
    return _holder[1]


@dataclass(frozen=True)
class RunLease:
    """Who holds a run, and whether that holder's process lease is still current."""

    flow_run_id: str
    holder: str
    holder_alive: bool
    heals: int
    held_at: datetime


class LeaseStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        return self._db

    async def renew_process(self, holder: str, ttl: timedelta, *, host: str, pid: int) -> datetime:
        """Create or renew ``holder``'s process lease until now + ``ttl``; returns the expiry."""
        now = utc_now()
        expires = now + ttl
        async with self._db.transaction() as connection:
            renewed = await connection.execute(
                update(_P).where(_P.c.holder == holder).values(renewed_at=now, expires_at=expires)
            )
            if renewed.rowcount == 0:
                await insert_or_ignore(
                    connection,
                    _P,
                    {
                        "holder": holder,
                        "host": host[:200],
                        "pid": pid,
                        "started_at": now,
                        "renewed_at": now,
                        "expires_at": expires,
                    },
                    ["holder"],
                )
        return expires

    async def expire_process(self, holder: str) -> None:
        """End ``holder``'s lease now (a clean exit): whatever it still holds is taken back at
        once, not after its expiry."""
        now = utc_now()
        async with self._db.transaction() as connection:
            await connection.execute(
                update(_P).where(_P.c.holder == holder).values(renewed_at=now, expires_at=now)
            )

    async def process_alive(self, holder: str, now: datetime | None = None) -> bool:
        """Whether ``holder`` has a process lease that has not expired."""
        moment = now or utc_now()
        async with self._db.transaction(readonly=True) as connection:
            row = (
                await connection.execute(select(_P.c.expires_at).where(_P.c.holder == holder))
            ).first()
        return row is not None and row[0] > moment

    async def hold_run(self, flow_run_id: str, holder: str) -> None:
        """Record that ``holder`` executes ``flow_run_id`` now (keeps the heal count)."""
        now = utc_now()
        async with self._db.transaction() as connection:
            moved = await connection.execute(
                update(_R).where(_R.c.flow_run_id == flow_run_id).values(holder=holder, held_at=now)
            )
            if moved.rowcount == 0:
                await insert_or_ignore(
                    connection,
                    _R,
                    {"flow_run_id": flow_run_id, "holder": holder, "held_at": now, "heals": 0},
                    ["flow_run_id"],
                )

    async def release_run(self, flow_run_id: str, holder: str) -> None:
        """``holder`` no longer executes ``flow_run_id`` (it suspended or ended)."""
        async with self._db.transaction() as connection:
            await connection.execute(
                delete(_R).where(_R.c.flow_run_id == flow_run_id, _R.c.holder == holder)
            )

    async def find_runs(self, flow_run_ids: Iterable[str]) -> dict[str, RunLease]:
        """The leases of those runs that have one, with their holders' liveness now."""
        ids = list(flow_run_ids)
        if not ids:
            return {}
        now = utc_now()
        found: dict[str, RunLease] = {}
        async with self._db.transaction(readonly=True) as connection:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                rows = await connection.execute(
                    select(_R, _P.c.expires_at)
                    .select_from(_R.outerjoin(_P, _P.c.holder == _R.c.holder))
                    .where(_R.c.flow_run_id.in_(chunk))
                )
                for row in rows.mappings():
                    expires = row["expires_at"]
                    found[row["flow_run_id"]] = RunLease(
                        flow_run_id=row["flow_run_id"],
                        holder=row["holder"],
                        holder_alive=expires is not None and expires > now,
                        heals=row["heals"],
                        held_at=row["held_at"],
                    )
        return found

    async def take_back(
        self, flow_run_id: str, expected_holder: str | None, taker: str
    ) -> int | None:
        """Move ``flow_run_id`` from ``expected_holder`` (None: from no lease at all) to
        ``taker``; returns the run's heal count after this heal, or None when another process
        changed the lease first (it is healing the run, or a live holder took it)."""
        now = utc_now()
        async with self._db.transaction() as connection:
            if expected_holder is None:
                inserted = await insert_or_ignore(
                    connection,
                    _R,
                    {"flow_run_id": flow_run_id, "holder": taker, "held_at": now, "heals": 1},
                    ["flow_run_id"],
                )
                return 1 if inserted else None
            moved = await connection.execute(
                update(_R)
                .where(_R.c.flow_run_id == flow_run_id, _R.c.holder == expected_holder)
                .values(holder=taker, held_at=now, heals=_R.c.heals + 1)
                .returning(_R.c.heals)
            )
            row = moved.first()
        return None if row is None else int(row[0])


async def holder_expired(connection: AsyncConnection, holder: str, now: datetime) -> bool:
    """Whether ``holder`` kept a process lease that has expired (a dead process). A holder with
    no lease at all (a process that never executed runs) is not known to be dead: False."""
    row = (await connection.execute(select(_P.c.expires_at).where(_P.c.holder == holder))).first()
    return row is not None and row[0] <= now
