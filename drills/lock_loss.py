"""Drill 6 (first half): the session lock lost during long handling. The listener
(``drills.holding_listener``) never renews a session lock, and for some events the first
handling outlasts the broker's lock: it waits before recording the batch (the redelivery, taken
by another session loop once the broker released the session, records the event first) or after
routing it (the first handling records and routes; the redelivery finds a duplicate). Either way
the first handling's settlement then meets a lost lock. Starts (``device.hello``) and resumes
(``device.ready``) both get slow handlings.
"""

from __future__ import annotations

import sys

from drills.catalog import Trial, drill, trial
from drills.env import Platform
from drills.observe import Snapshot
from drills.prefect_down import all_paused
from drills.procs import Process
from drills.report import Row

DEVICES = 16
LOCK_DURATION = 4.0
SLOW_SECONDS = 2.5 * LOCK_DURATION
#: Device n's hello (n < 4) or ready (4 <= n < 8) is slow, before recording (odd n) or after
#: routing (even n).
SLOW_EVENTS = 8


def slow_mark(n: int) -> str:
    return "slow-before" if n % 2 else "slow-after"


def lock_lost_check(listener: Process, slow: int) -> list[str]:
    """The fault happened: every slow handling lost its lock (the listener logs each)."""
    text = listener.log_text()
    slowed = text.count(" handling: ")
    lost = text.count("session lock lost")
    problems = []
    if slowed < slow:
        problems.append(f"{slowed} slow handlings, expected {slow}")
    if lost < slow:
        problems.append(f"the listener saw {lost} session locks lost, expected >= {slow}")
    return problems


async def send_marked(t: Trial, device: str, name: str, mark: str | None) -> None:
    prefix = "hello" if name == "device.hello" else "ready"
    event_id = f"{prefix}-{device[-3:]}-{t.stage.directory.name[-6:]}"
    if mark is not None:
        (t.stage.directory / "hold" / f"{event_id}.{mark}").touch()
    t.expect.add(device, event_id)
    await t.send.event(device, name, event_id)


@drill(
    "lock-loss",
    6,
    injected=f"session lock never renewed (broker lock {LOCK_DURATION:g} s); {SLOW_EVENTS} events' "
    f"first handling takes {SLOW_SECONDS:g} s, before recording or after routing "
    f"(4 starts, 4 resumes; {DEVICES} devices)",
    expected="each event stored once, 1 completed run per device, each side effect once, "
    "nothing dead-lettered; every slow handling lost its lock",
)
async def lock_loss(platform: Platform, row: Row) -> Row:
    async with trial(platform, row, lock_duration=LOCK_DURATION, max_delivery=10) as t:
        stage = t.stage
        (stage.directory / "hold").mkdir()
        await stage.start_system(listeners=0)
        listener = stage.process(
            "holding-listener",
            [sys.executable, "-m", "drills.holding_listener"],
            ORCH_DRILL_HOLD_DIR=str(stage.directory / "hold"),
            ORCH_DRILL_SLOW_SECONDS=str(SLOW_SECONDS),
            ORCH_DRILL_LOCK_RENEWAL_SECONDS="0",
            # Loops to spare while the slow ones sleep: a released session is taken at once.
            ORCH_SB_MAX_CONCURRENT_SESSIONS="8",
        ).start()
        await listener.wait_for_output("listening on queue", 120)
        devices = [t.device(n) for n in range(DEVICES)]
        for n, device in enumerate(devices):
            await send_marked(t, device, "device.hello", slow_mark(n) if n < 4 else None)
        # The slow ready events are resumes: their runs are suspended first.
        await all_paused(t, devices[4:])
        for n, device in enumerate(devices):
            slow = 4 <= n < SLOW_EVENTS
            await send_marked(t, device, "device.ready", slow_mark(n) if slow else None)
        t.fault()

        def check(_snap: Snapshot) -> list[str]:
            return lock_lost_check(listener, SLOW_EVENTS)

        t.expect.checks.append(check)
        return await t.settle()
