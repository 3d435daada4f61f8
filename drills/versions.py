"""Drill 7: the definition changes while runs are suspended on it. Many devices' runs wait at
``device.ready`` on version 1; the file is replaced by version 2 (whose steps post elsewhere);
the waiting runs are resumed and must finish on version 1, while devices that start afterwards
run version 2."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from drills.catalog import Trial, drill, trial
from drills.env import Platform, definition
from drills.observe import Observer, Snapshot
from drills.report import Row

#: As issue 8 asks: 100 runs suspended on v1 (they hold no process and no connection).
SUSPENDED = 100
LATER = 5


async def all_suspended(t: Trial, devices: list[str], deadline: float = 240.0) -> None:
    """Until every device's run is Paused (suspended at its wait)."""
    observer = Observer(t.stage)
    end = time.monotonic() + deadline
    while True:
        snap = await observer.snapshot(devices, drain_letters=False)
        paused = sum(snap.runs.get(d) == ["PAUSED"] for d in devices)
        if paused == len(devices):
            return
        if time.monotonic() > end:
            raise RuntimeError(f"only {paused}/{len(devices)} runs suspended after {deadline:g}s")
        await asyncio.sleep(1.0)


def on_version(devices: list[str], suffix: str) -> Callable[[Snapshot], list[str]]:
    """A check: every step of these devices posted to ``/<step><suffix>``."""

    def check(snap: Snapshot) -> list[str]:
        wanted = set(devices)
        wrong = [h for h in snap.hits if h.device in wanted and h.path != f"/{h.step}{suffix}"]
        if not wrong:
            return []
        return [f"{len(wrong)} steps ran another version (e.g. {wrong[0].device} {wrong[0].path})"]

    return check


@drill(
    "definition-change",
    7,
    injected=f"the definition replaced (v1 -> v2) while {SUSPENDED} runs are suspended on v1",
    expected=f"the {SUSPENDED} runs finish on v1; {LATER} runs started afterwards run v2",
    quick=False,
)
async def definition_change(platform: Platform, row: Row) -> Row:
    async with trial(platform, row) as t:
        await t.stage.start_system()
        waiting = [t.device(n) for n in range(SUSPENDED)]
        later = [t.device(SUSPENDED + n) for n in range(LATER)]
        for device in waiting:
            await t.episode_start(device)
        await all_suspended(t, waiting)
        t.stage.write_definition(definition(t.stage.sink.url, version="2"))
        t.fault()
        for device in waiting:
            await t.episode_end(device)
        for device in later:
            await t.episode_start(device)
            await t.episode_end(device)
        t.expect.checks.append(on_version(waiting, ""))
        t.expect.checks.append(on_version(later, "-v2"))
        return await t.settle(deadline=180.0)
