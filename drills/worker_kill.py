"""Drill 2: ``orchestration worker`` SIGKILLed while its activities are in flight (the sink holds
each answer, so the kill lands mid-request): then restarted; or not restarted, with a second
worker alive beside it. Every run the dead worker held must be finished by the system."""

from __future__ import annotations

import asyncio
import time

from drills.catalog import HEAL_DEADLINE, Trial, drill, trial
from drills.env import Platform
from drills.report import Row

DEVICES = 15
IN_FLIGHT = 5
#: Seconds the sink holds each answer while the kill is prepared.
SINK_DELAY = 4.0


async def load_and_kill(t: Trial, victim: str) -> None:
    """Send every device's episode, wait until ``IN_FLIGHT`` side effects are in flight, SIGKILL
    the worker named ``victim``, and let the sink answer at once again."""
    t.stage.sink.delay = SINK_DELAY
    t.expect.extra_per_key = 1  # the step in flight at the kill may run once more, same key
    devices = [t.device(n) for n in range(DEVICES)]
    for device in devices:
        await t.episode_start(device)
        await t.episode_end(device)
    end = time.monotonic() + 90
    while len(t.stage.sink.hits()) < IN_FLIGHT:
        if time.monotonic() > end:
            raise RuntimeError(f"fewer than {IN_FLIGHT} side effects started within 90s")
        await asyncio.sleep(0.1)
    (worker,) = (p for p in t.stage.processes if p.name == victim)
    worker.kill()
    t.fault()
    t.stage.sink.delay = 0.0


@drill(
    "worker-restart",
    2,
    injected=f"worker SIGKILL with >= {IN_FLIGHT} activities in flight ({DEVICES} devices), "
    "restarted",
    expected="every run finished within 60 s of the kill; each key once (the one in flight: twice)",
)
async def worker_restart(platform: Platform, row: Row) -> Row:
    async with trial(platform, row) as t:
        await t.stage.start_system()
        await load_and_kill(t, "worker")
        (worker,) = (p for p in t.stage.processes if p.name == "worker")
        worker.start()
        return await t.settle(HEAL_DEADLINE)


@drill(
    "worker-survivor",
    2,
    injected=f"one of two workers SIGKILLed with activities in flight ({DEVICES} devices), "
    "not restarted",
    expected="the live worker finishes every run within 60 s of the kill; each key once (or twice)",
)
async def worker_survivor(platform: Platform, row: Row) -> Row:
    async with trial(platform, row) as t:
        await t.stage.start_system(workers=2)
        await load_and_kill(t, "worker1")
        return await t.settle(HEAL_DEADLINE)
