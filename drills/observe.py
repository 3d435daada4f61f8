"""What a drill sees after its fault: figures from the application database (events stored,
twice-stored, outbox), from Prefect (runs per device and their states), from the sink (side
effects per idempotency key) and from the broker (the dead-letter queue), checked against what
the drill expects.

``Expect`` says what a healed system looks like; ``Observer.snapshot`` takes the figures;
``Snapshot.problems`` lists every difference (empty: the system has settled as it should).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import httpx
from azure.servicebus import ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient

from drills.env import Stage
from drills.sink import Hit
from store.transient import retry_transient

__all__ = ["Expect", "Letter", "Observer", "Snapshot"]

FINAL_OK = "COMPLETED"


@dataclass
class Expect:
    """A healed system: these events stored once, one completed run per device with
    ``keys_per_run`` side effects each seen once (``extra_per_key`` more for a step that was in
    flight at a kill), and exactly these dead letters (message id -> reason)."""

    events: dict[str, set[str]] = field(default_factory=dict)
    devices_without_run: set[str] = field(default_factory=set)
    keys_per_run: int = 2
    extra_per_key: int = 0
    dead_letters: dict[str, str] = field(default_factory=dict)
    #: Messages that may be dead-lettered (with a reason) or accepted: either is correct.
    optional_letters: set[str] = field(default_factory=set)
    #: A drill's own checks on the figures (each returns its problems).
    checks: list[Callable[[Snapshot], list[str]]] = field(default_factory=list)

    def add(self, device: str, *event_ids: str) -> None:
        self.events.setdefault(device, set()).update(event_ids)


@dataclass(frozen=True, slots=True)
class Letter:
    message_id: str
    reason: str | None
    description: str | None


@dataclass
class Snapshot:
    """The figures at one moment."""

    stored: dict[tuple[str, str], int]
    runs: dict[str, list[str]]  # device -> state types of its runs
    keys: dict[str, Counter[str]]
    outbox_pending: int
    letters: list[Letter]
    hits: list[Hit] = field(default_factory=list)

    @property
    def stored_total(self) -> int:
        return len(self.stored)

    @property
    def stored_twice(self) -> int:
        return sum(n - 1 for n in self.stored.values() if n > 1)

    def lost(self, expect: Expect) -> list[tuple[str, str]]:
        return [
            (device, event_id)
            for device, ids in expect.events.items()
            for event_id in sorted(ids)
            if (device, event_id) not in self.stored
        ]

    def side_effects(self) -> Counter[int]:
        """How many keys were seen once, twice, ..."""
        return Counter(n for keys in self.keys.values() for n in keys.values())

    def problems(self, expect: Expect, *, letters: bool = True) -> list[str]:
        found: list[str] = []
        lost = self.lost(expect)
        if lost:
            found.append(f"{len(lost)} events lost (e.g. {lost[0][0]}/{lost[0][1]})")
        if self.stored_twice:
            found.append(f"{self.stored_twice} events stored twice")
        expected_ids = {(d, e) for d, ids in expect.events.items() for e in ids}
        unexpected = sorted(set(self.stored) - expected_ids)
        if unexpected:
            found.append(f"{len(unexpected)} unexpected events stored (e.g. {unexpected[0]})")
        for device in sorted(expect.events):
            runs = self.runs.get(device, [])
            if device in expect.devices_without_run:
                if runs:
                    found.append(f"{device}: {len(runs)} runs, expected none")
                continue
            if len(runs) != 1:
                found.append(f"{device}: {len(runs)} runs, expected 1")
            elif runs[0] != FINAL_OK:
                found.append(f"{device}: run is {runs[0]}")
            keys = self.keys.get(device, Counter())
            if len(runs) == 1 and len(keys) != expect.keys_per_run:
                wanted = expect.keys_per_run
                found.append(f"{device}: {len(keys)} idempotency keys, expected {wanted}")
            over = [k for k, n in keys.items() if n > 1 + expect.extra_per_key]
            if over:
                found.append(f"{device}: key {over[0]} seen {keys[over[0]]} times")
        if self.outbox_pending:
            found.append(f"{self.outbox_pending} outbox entries pending")
        for check in expect.checks:
            found.extend(check(self))
        if letters:
            seen = {
                letter.message_id: letter.reason
                for letter in self.letters
                if letter.message_id not in expect.optional_letters
            }
            if seen != expect.dead_letters:
                found.append(f"dead letters {seen}, expected {expect.dead_letters}")
            if any(not letter.reason for letter in self.letters):
                found.append("a dead letter without a reason")
        return found

    def runs_per_device(self, expect: Expect) -> str:
        counts = Counter(
            len(self.runs.get(d, [])) for d in expect.events if d not in expect.devices_without_run
        )
        return " ".join(f"{n}:{c}" for n, c in sorted(counts.items())) or "-"

    def run_states(self) -> str:
        """How many runs are in each state, e.g. ``COMPLETED 4, RUNNING 11``."""
        counts = Counter(state for states in self.runs.values() for state in states)
        return ", ".join(f"{state} {n}" for state, n in counts.most_common()) or "no runs"

    def effects_per_key(self) -> str:
        counts = self.side_effects()
        return " ".join(f"{n}x:{c}" for n, c in sorted(counts.items())) or "-"


class Observer:
    """Reads the figures of one stage; keeps the dead letters it drained."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.letters: list[Letter] = []

    async def snapshot(self, devices: list[str], *, drain_letters: bool) -> Snapshot:
        if drain_letters:
            await self._drain_letters()
        # "too many clients" on the shared PostgreSQL, a Prefect hiccup: the figures are read
        # again, the drill does not break on its own observer.
        stored, pending = await retry_transient("drill observer: database", self._database)
        runs = await retry_transient("drill observer: runs", lambda: self._runs(devices))
        keys = self.stage.sink.keys_per_device()
        return Snapshot(stored, runs, keys, pending, list(self.letters), self.stage.sink.hits())

    async def _database(self) -> tuple[dict[tuple[str, str], int], int]:
        conn = await asyncpg.connect(self.stage.app_dsn, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT device_id, event_id, count(*) AS n FROM device_events"
                " GROUP BY device_id, event_id"
            )
            pending = await conn.fetchval(
                "SELECT count(*) FROM route_outbox WHERE status = 'pending'"
            )
        finally:
            await conn.close()
        return {(r["device_id"], r["event_id"]): int(r["n"]) for r in rows}, int(pending)

    async def _runs(self, devices: list[str]) -> dict[str, list[str]]:
        """Device -> the state types of its runs, from the Prefect server (tag ``device:<id>``)."""
        api = self.stage.platform.prefect.api_url
        found: dict[str, list[str]] = {}
        tags = [f"device:{d}" for d in devices]
        async with httpx.AsyncClient(timeout=10) as client:
            offset = 0
            while True:
                body: dict[str, Any] = {
                    "flow_runs": {"tags": {"any_": tags}},
                    "limit": 200,
                    "offset": offset,
                }
                response = await client.post(f"{api}/flow_runs/filter", json=body)
                response.raise_for_status()
                page = response.json()
                for run in page:
                    for tag in run.get("tags") or []:
                        if tag.startswith("device:") and tag in tags:
                            state = (run.get("state") or {}).get("type") or "NONE"
                            found.setdefault(tag.removeprefix("device:"), []).append(state)
                if len(page) < 200:
                    return found
                offset += 200

    async def _drain_letters(self) -> None:
        broker = self.stage.broker
        async with (
            ServiceBusClient.from_connection_string(broker.connection_string) as client,
            client.get_queue_receiver(
                broker.queue, sub_queue=ServiceBusSubQueue.DEAD_LETTER, max_wait_time=1
            ) as receiver,
        ):
            while True:
                batch = await receiver.receive_messages(max_message_count=50, max_wait_time=1)
                if not batch:
                    return
                for msg in batch:
                    self.letters.append(
                        Letter(
                            str(msg.message_id),
                            msg.dead_letter_reason,
                            msg.dead_letter_error_description,
                        )
                    )
                    await receiver.complete_message(msg)


async def settle(
    observer: Observer, expect: Expect, deadline: float, since: float
) -> tuple[Snapshot, float | None]:
    """Poll until the figures show no problem or ``deadline`` seconds pass; returns the last
    snapshot and the seconds from ``since`` (monotonic) to the first clean one (None: never)."""
    devices = sorted(expect.events)
    end = time.monotonic() + deadline
    while True:
        snap = await observer.snapshot(devices, drain_letters=False)
        if not snap.problems(expect, letters=False):
            snap = await observer.snapshot(devices, drain_letters=True)
            if not snap.problems(expect):
                return snap, time.monotonic() - since
        if time.monotonic() > end:
            snap = await observer.snapshot(devices, drain_letters=True)
            clean = not snap.problems(expect)
            return snap, (time.monotonic() - since) if clean else None
        await asyncio.sleep(1.0)
