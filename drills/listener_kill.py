"""Drill 1: the listener SIGKILLed. 1c: right after an event was recorded and routed, before its
message was completed (a start, a resume, another start); 1: at random moments under a steady
stream of device episodes, restarted at once each time."""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid

from drills.catalog import Trial, drill, trial
from drills.env import Platform
from drills.procs import Process
from drills.report import Row

ROUTED_DEVICES = 10
RANDOM_DEVICES = 20
RANDOM_KILLS = 4
HOLD_DEADLINE = 90.0
#: Azure Service Bus's default: a message survives this many listener deaths before it is
#: dead-lettered (the fake broker's own default, 3, is for tests).
SB_MAX_DELIVERY = 10


async def held_and_killed(t: Trial, holding: Process, device: str, name: str) -> None:
    """Start the holding listener with ``device``'s next ``name`` event marked, send it, and
    SIGKILL the listener once that event is recorded and routed (before its message completes)."""
    hold = t.stage.directory / "hold"
    event_id = f"{name.split('.')[-1]}-{uuid.uuid4().hex[:8]}"
    (hold / f"{event_id}.hold").touch()
    holding.start()
    t.expect.add(device, event_id)
    await t.send.event(device, name, event_id)
    routed = hold / f"{event_id}.routed"
    end = time.monotonic() + HOLD_DEADLINE
    while not routed.exists():
        if time.monotonic() > end:
            raise RuntimeError(f"{event_id} was not routed within {HOLD_DEADLINE:g}s")
        await asyncio.sleep(0.05)
    holding.kill()
    t.fault()
    (hold / f"{event_id}.release").touch()  # its redelivery passes straight through


@drill(
    "listener-routed",
    1,
    injected="listener SIGKILL right after routing, before completing (a start, a resume, a start)",
    expected="each event stored once, 1 completed run per device, each side effect once",
)
async def listener_routed(platform: Platform, row: Row) -> Row:
    async with trial(platform, row, max_delivery=SB_MAX_DELIVERY) as t:
        stage = t.stage
        (stage.directory / "hold").mkdir()
        await stage.start_system(listeners=0)
        first, resumed, last, *others = [t.device(n) for n in range(ROUTED_DEVICES)]
        for device in others:
            await t.episode_start(device)
            await t.episode_end(device)
        await t.episode_start(resumed)
        holding = stage.process(
            "holding-listener",
            [sys.executable, "-m", "drills.holding_listener"],
            ORCH_DRILL_HOLD_DIR=str(stage.directory / "hold"),
        )
        await held_and_killed(t, holding, first, "device.hello")
        await held_and_killed(t, holding, resumed, "device.ready")
        await held_and_killed(t, holding, last, "device.hello")
        stage.listener().start()
        await t.episode_end(first)
        await t.episode_end(last)
        return await t.settle()


@drill(
    "listener-random",
    1,
    injected=f"listener SIGKILL at {RANDOM_KILLS} random moments under load, restarted at once",
    expected="each event stored once, 1 completed run per device, each side effect once",
)
async def listener_random(platform: Platform, row: Row) -> Row:
    seed = int(time.time())
    chance = random.Random(seed)
    row.injected += f" (seed {seed})"
    async with trial(platform, row, max_delivery=SB_MAX_DELIVERY) as t:
        await t.stage.start_system()
        (listener,) = (p for p in t.stage.processes if p.name == "listener")
        devices = [t.device(n) for n in range(RANDOM_DEVICES)]
        killer = asyncio.create_task(kill_at_random(t, listener, chance))
        for device in devices:
            await t.episode_start(device)
            await asyncio.sleep(chance.uniform(0.1, 0.5))
        for device in devices:
            await t.episode_end(device)
            await asyncio.sleep(chance.uniform(0.1, 0.5))
        await killer
        return await t.settle()


async def kill_at_random(t: Trial, listener: Process, chance: random.Random) -> None:
    for _ in range(RANDOM_KILLS):
        await asyncio.sleep(chance.uniform(0.5, 5.0))
        listener.kill()
        t.fault()
        listener.start()
