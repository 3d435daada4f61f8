"""``selfcheck``: no fault. The framework's own check: every part starts, a few device episodes
go through the listener, the worker and the sink, and every figure comes out as expected."""

from __future__ import annotations

from drills.catalog import drill, trial
from drills.env import Platform
from drills.report import Row

DEVICES = 5


@drill(
    "selfcheck",
    0,
    injected="nothing (the framework's self-check)",
    expected=f"{DEVICES} devices x (hello, ready): 1 completed run each, 2 side effects each",
)
async def selfcheck(platform: Platform, row: Row) -> Row:
    async with trial(platform, row) as t:
        await t.stage.start_system()
        for n in range(DEVICES):
            device = t.device(n)
            await t.episode_start(device)
            await t.episode_end(device)
        t.fault()
        return await t.settle()
