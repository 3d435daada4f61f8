"""The resumer: wakes suspended runs whose timer (or event timeout) is due, or whose event is there.

A suspended run holds no process, so something else must wake it. Every run records its wait in
the wait store before suspending (``WaitStore.register``); each tick (default every second) the
resumer reads the waits that are due and resumes their runs with ``{"kind": "timer"}``, and resumes
runs whose awaited event is already in the store with ``{"kind": "event"}``. The second case closes
a race: an event that arrives just before its run suspends finds the run not yet paused, so the
router's resume is answered ``ABORT``; the next tick here delivers it.

A resume answer is checked by its ``status`` (not the HTTP code): ``ACCEPT`` resolves the wait;
``ABORT`` (the run is not paused) resolves it only when the run is gone or finished, else the wait
is tried again next tick (the run has not suspended yet); ``REJECT`` (input refused) is logged and
tried again. It runs inside the executor, or alone (``Resumer().run()``), or as a scheduled flow
(``resume_due_runs``): every path is idempotent, so several resumers may run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import flow
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import ObjectNotFound

from flows.runtime import get_resources

__all__ = ["Resumer", "ResumerStats", "resume_due_runs"]

logger = logging.getLogger("flows.timers")


@dataclass
class ResumerStats:
    resumed_timer: int = 0
    resumed_event: int = 0
    not_yet_paused: int = 0
    gone: int = 0
    rejected: int = 0


@dataclass
class Resumer:
    """Resume due waits every ``tick_seconds`` until the stop event is set."""

    tick_seconds: float = 1.0
    batch: int = 200
    stats: ResumerStats = field(default_factory=ResumerStats)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                logger.exception("resumer tick failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick_seconds)

    async def tick(self, now: datetime | None = None) -> int:
        """One pass; returns how many runs were resumed."""
        resources = await get_resources()
        moment = now or datetime.now(UTC)
        resumed = 0
        async with get_client() as client:
            for wait in await resources.waits.due(moment, limit=self.batch):
                if await self._resume(client, wait, "timer", moment):
                    resumed += 1
            # Waits whose event is already in the store (it arrived before the run paused).
            for wait in await resources.waits.event_ready(limit=self.batch):
                if await self._resume(client, wait, "event", moment):
                    resumed += 1
        return resumed

    async def _resume(self, client: PrefectClient, wait: Any, kind: str, now: datetime) -> bool:
        resources = await get_resources()
        run_id = UUID(str(wait.run_id))
        try:
            current = await client.read_flow_run(run_id)
        except ObjectNotFound:
            await resources.waits.resolve(str(run_id), wait.wait_key, "gone")
            self.stats.gone += 1
            return False
        state = current.state
        if state is not None and state.is_final():
            await resources.waits.resolve(str(run_id), wait.wait_key, "gone")
            self.stats.gone += 1
            return False
        if state is None or state.type != StateType.PAUSED:
            self.stats.not_yet_paused += 1  # not suspended yet, or replaying: next tick
            return False
        if state.state_details.pause_key != wait.wait_key:
            # Suspended at another wait (another branch): a resume now would wake that one.
            return False
        try:
            response = await client.resume_flow_run(
                run_id, run_input={"kind": kind, "at": now.isoformat()}
            )
        except ObjectNotFound:
            await resources.waits.resolve(str(run_id), wait.wait_key, "gone")
            self.stats.gone += 1
            return False
        if response.status == SetStateStatus.ACCEPT:
            await resources.waits.resolve(str(run_id), wait.wait_key, kind)
            if kind == "timer":
                self.stats.resumed_timer += 1
            else:
                self.stats.resumed_event += 1
            return True
        if response.status == SetStateStatus.REJECT:
            self.stats.rejected += 1
            logger.warning("resume of %s refused: %s", run_id, response.details)
            return False
        # ABORT: the run stopped being paused between our read and the resume; next tick.
        self.stats.not_yet_paused += 1
        return False


@flow(name="resume-due-runs", persist_result=False)
async def resume_due_runs() -> int:
    """One resumer pass as a flow, for a Prefect schedule (every minute, say) as a safety net."""
    return await Resumer().tick()
