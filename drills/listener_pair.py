"""Drill 6: long handling and two listeners on the same queue. Two ``orchestration listen``
processes share the queue; for some devices the drill holds the device rows locked in PostgreSQL
for longer than three broker lock durations, so recording their events waits that long while the
listener must keep the session lock (renewal) and the other listener must not take the session."""

from __future__ import annotations

import asyncio
import time

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from drills.catalog import drill, trial
from drills.env import Platform
from drills.report import Row

DEVICES = 16
SLOW_DEVICES = 4
LOCK_DURATION = 5.0
HOLD_ROWS_FOR = 3.2 * LOCK_DURATION


@drill(
    "listener-pair",
    6,
    injected=f"two listeners on one queue; {SLOW_DEVICES} devices' rows locked in PostgreSQL for "
    f"{HOLD_ROWS_FOR:g} s (broker lock {LOCK_DURATION:g} s) while their events arrive",
    expected="each event stored once (the slow ones too), 1 completed run per device, "
    "each side effect once, nothing dead-lettered",
)
async def listener_pair(platform: Platform, row: Row) -> Row:
    async with trial(platform, row, lock_duration=LOCK_DURATION, max_delivery=10) as t:
        await t.stage.start_system(listeners=2)
        devices = [t.device(n) for n in range(DEVICES)]
        for device in devices:
            await t.episode_start(device)
        slow = devices[:SLOW_DEVICES]
        conn = await asyncpg.connect(t.stage.app_dsn, timeout=10)
        try:
            end = time.monotonic() + 90
            while await conn.fetchval(
                "SELECT count(*) FROM devices WHERE device_id = ANY($1::text[])", slow
            ) < len(slow):
                if time.monotonic() > end:
                    raise RuntimeError("the slow devices' first events were not stored in 90s")
                await asyncio.sleep(0.2)
            async with conn.transaction():
                await conn.execute(
                    "SELECT 1 FROM devices WHERE device_id = ANY($1::text[]) FOR UPDATE", slow
                )
                for device in devices:
                    await t.episode_end(device)
                t.fault()
                await asyncio.sleep(HOLD_ROWS_FOR)
        finally:
            await conn.close()
        return await t.settle()
