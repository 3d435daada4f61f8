"""The drills by name, and what every drill does around its fault: open a stage, send, inject,
settle, fill its row."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from drills.env import Platform, Stage
from drills.observe import Expect, Observer, settle
from drills.report import Row
from drills.sender import Sender

__all__ = ["DRILLS", "HEAL_DEADLINE", "Drill", "Trial", "drill", "trial"]

#: A killed executor's runs must be finished by the system within this (the issue's bar).
HEAL_DEADLINE = 60.0
#: Other faults: how long the system may take to settle on two shared cores before a row fails.
SETTLE_DEADLINE = 120.0


@dataclass
class Trial:
    """One drill's run: the stage, the producer, the expectations and the row being filled."""

    stage: Stage
    send: Sender
    expect: Expect
    row: Row
    started: float = field(default_factory=time.monotonic)
    fault_at: float | None = None

    def device(self, n: int) -> str:
        return f"{self.row.name}-{self.stage.directory.name[-6:]}-{n:03d}"

    async def episode_start(self, device: str, **payload: Any) -> None:
        event_id = f"hello-{uuid.uuid4().hex[:8]}"
        self.expect.add(device, event_id)
        await self.send.event(device, "device.hello", event_id, **payload)

    async def episode_end(self, device: str, **payload: Any) -> None:
        event_id = f"ready-{uuid.uuid4().hex[:8]}"
        self.expect.add(device, event_id)
        await self.send.event(device, "device.ready", event_id, **payload)

    def fault(self) -> None:
        """Mark the moment the (last) fault was injected: healing is timed from here."""
        self.fault_at = time.monotonic()

    async def settle(self, deadline: float = SETTLE_DEADLINE) -> Row:
        since = self.fault_at if self.fault_at is not None else time.monotonic()
        snap, heal = await settle(Observer(self.stage), self.expect, deadline, since)
        row = self.row.fill(snap, self.expect, len(self.send.sent), heal)
        if not row.passed:
            # What a stuck run waits for: the workers print their threads and asyncio tasks.
            await asyncio.to_thread(self.stage.dump_stacks)
            row.problems.append(f"process logs: {self.stage.directory}")
        return row


@contextlib.asynccontextmanager
async def trial(platform: Platform, row: Row, **broker: Any) -> AsyncIterator[Trial]:
    stage = await asyncio.to_thread(Stage.open, platform, row.name, **broker)
    try:
        async with Sender(stage) as send:
            yield Trial(stage, send, Expect(), row)
    finally:
        await asyncio.to_thread(stage.close)


DrillFn = Callable[[Platform, Row], Awaitable[Row]]


@dataclass(frozen=True)
class Drill:
    name: str
    injected: str
    expected: str
    run: DrillFn
    #: The drill's number in issue 8's list (0: the framework's self-check); the table's order.
    number: int
    #: Under ~2 minutes: part of CI (tests/integration/test_drills.py runs the passing ones).
    quick: bool = True

    def row(self) -> Row:
        return Row(self.name, self.injected, self.expected)


DRILLS: dict[str, Drill] = {}


def drill(
    name: str, number: int, injected: str, expected: str, *, quick: bool = True
) -> Callable[[DrillFn], DrillFn]:
    """Register a drill under ``name`` (``number``: its place in issue 8's list)."""

    def register(run: DrillFn) -> DrillFn:
        DRILLS[name] = Drill(name, injected, expected, run, number, quick)
        return run

    return register
