"""Drill 4: PostgreSQL connections cut under load. Every 0.3 s the drill terminates every
backend of the application database (``pg_terminate_backend``) while device episodes flow through
the listener and the worker; then it stops and the system must settle on its own."""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from drills.catalog import Trial, drill, trial
from drills.env import Platform
from drills.report import Row

DEVICES = 20
TERMINATE_EVERY = 0.3
TERMINATE_FOR = 20.0


async def terminate_backends(t: Trial, stop: asyncio.Event) -> int:
    """Cut every connection to the application database every ``TERMINATE_EVERY`` seconds."""
    admin = await asyncpg.connect(t.stage.platform.postgres.admin_dsn, timeout=10)
    killed = 0
    try:
        while not stop.is_set():
            killed += int(
                await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    t.stage.app_db,
                )
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TERMINATE_EVERY)
    finally:
        await admin.close()
    return killed


@drill(
    "pg-terminate",
    4,
    injected=f"pg_terminate_backend on every app-database connection every {TERMINATE_EVERY} s "
    f"for {TERMINATE_FOR:g} s under load ({DEVICES} devices)",
    expected="each event stored once, 1 completed run per device, each side effect once",
)
async def pg_terminate(platform: Platform, row: Row) -> Row:
    async with trial(platform, row, max_delivery=10) as t:
        await t.stage.start_system()
        stop = asyncio.Event()
        cutter = asyncio.create_task(terminate_backends(t, stop))
        started = time.monotonic()
        devices = [t.device(n) for n in range(DEVICES)]
        for device in devices:
            await t.episode_start(device)
            await asyncio.sleep(TERMINATE_FOR / DEVICES / 2)
        for device in devices:
            await t.episode_end(device)
            await asyncio.sleep(TERMINATE_FOR / DEVICES / 2)
        await asyncio.sleep(max(0.0, TERMINATE_FOR - (time.monotonic() - started)))
        stop.set()
        killed = await cutter
        t.fault()
        row.injected += f"; {killed} connections cut"
        return await t.settle()
