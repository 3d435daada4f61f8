"""Drills 3 and 8: the Prefect server goes away. 3: stopped for 40 s under load, with devices
whose runs wait being resumed and new devices arriving only while it is down. 8: runs suspended
on a timer that falls due while the server is down; the worker's resumer must wake them once it
is back."""

from __future__ import annotations

import asyncio
import time

from drills.catalog import Trial, drill, trial
from drills.env import Platform, definition
from drills.observe import Observer
from drills.report import Row

WAITING = 10
ARRIVING = 10
DOWN_SECONDS = 40.0
TIMER_SECONDS = 45.0
TIMER_DOWN_SECONDS = 45.0


async def all_paused(t: Trial, devices: list[str], deadline: float = 120.0) -> None:
    observer = Observer(t.stage)
    end = time.monotonic() + deadline
    while True:
        snap = await observer.snapshot(devices, drain_letters=False)
        if all(snap.runs.get(d) == ["PAUSED"] for d in devices):
            return
        if time.monotonic() > end:
            raise RuntimeError(f"runs not all suspended within {deadline:g}s: {snap.run_states()}")
        await asyncio.sleep(1.0)


@drill(
    "prefect-down",
    3,
    injected=f"Prefect server stopped {DOWN_SECONDS:g} s: {WAITING} suspended runs' events and "
    f"{ARRIVING} new devices arrive only while it is down",
    expected="every event stored once, 1 completed run per device within 60 s of its return",
    quick=False,
)
async def prefect_down(platform: Platform, row: Row) -> Row:
    async with trial(platform, row) as t:
        await t.stage.start_system()
        waiting = [t.device(n) for n in range(WAITING)]
        arriving = [t.device(WAITING + n) for n in range(ARRIVING)]
        for device in waiting:
            await t.episode_start(device)
        await all_paused(t, waiting)
        await asyncio.to_thread(platform.stop_prefect)
        down = time.monotonic()
        try:
            for device in waiting:
                await t.episode_end(device)
            for device in arriving:
                await t.episode_start(device)
                await t.episode_end(device)
            await asyncio.sleep(max(0.0, DOWN_SECONDS - (time.monotonic() - down)))
        finally:
            await platform.start_prefect()
        t.fault()
        return await t.settle()


@drill(
    "resume-restart",
    8,
    injected=f"{WAITING} runs suspended on a {TIMER_SECONDS:g} s timer; the Prefect server is "
    f"down {TIMER_DOWN_SECONDS:g} s while they fall due",
    expected="the worker's resumer wakes every run once the server is back; each completes",
    quick=False,
)
async def resume_restart(platform: Platform, row: Row) -> Row:
    async with trial(platform, row) as t:
        t.stage.write_definition(definition(t.stage.sink.url, timer=TIMER_SECONDS))
        await t.stage.start_system()
        devices = [t.device(n) for n in range(WAITING)]
        for device in devices:
            await t.episode_start(device)
        await all_paused(t, devices)
        await asyncio.to_thread(platform.stop_prefect)
        try:
            await asyncio.sleep(TIMER_DOWN_SECONDS)
        finally:
            await platform.start_prefect()
        t.fault()
        return await t.settle()
