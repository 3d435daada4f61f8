"""The resumer: wakes suspended runs whose timer (or event timeout) is due, or whose event is there.

A suspended run holds no process, so something else must wake it. Every run records its wait in
the wait store before suspending (``WaitStore.register``); each tick (default every second) the
resumer reads the waits that are due and resumes their runs with ``{"kind": "timer"}``, and resumes
runs whose awaited event is already in the store with ``{"kind": "event"}``. The second case closes
a race: an event that arrives just before its run suspends finds the run not yet paused, so the
router's resume is answered ``ABORT``; the next tick here delivers it.

A resume answer is checked by its ``status`` (not the HTTP code): ``ACCEPT`` resolves the wait;
``ABORT`` (the run is not paused) resolves it only when the run is gone or finished, else the wait
is tried again next tick (the run has not suspended yet); ``REJECT`` (input refused, or the run is
still saving its input schema) is tried again.

There is one resumer: the loop ``orchestration worker`` runs (``Executor`` starts ``Resumer.run``).
It needs no lease from the Prefect server (a scheduled, concurrency-limited deployment did, and a
server restart once left its slot taken for good): its state is the wait store, every step is
idempotent, and several workers may each run one. A resume another resumer won (HTTP 409, or
``ABORT`` because the run left Paused) is expected and logged at debug. It says one INFO line per
run it resumes and nothing when idle; Prefect unreachable is one WARNING when it starts and one
INFO when it ends, and every call to Prefect has a deadline so a tick never hangs on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import ObjectNotFound

from flows.runtime import get_resources
from operations.prefect_call import call_prefect

__all__ = ["PrefectUnreachableError", "Resumer", "ResumerStats"]

logger = logging.getLogger("flows.timers")

T = TypeVar("T")

#: Prefect's REJECT reason while a run is suspending and has not saved its input schema yet.
SCHEMA_NOT_SAVED = "Run input schema not found."


class PrefectUnreachableError(Exception):
    """Prefect did not answer (refused, timed out, 5xx): the tick ends, the next one retries."""


def _at_wait(pause_key: str | None, wait_key: str) -> bool:
    """Whether a run paused under ``pause_key`` waits at ``wait_key``: the key itself, or
    ``<wait key>-r<n>`` (a run that could not use a resume suspends again at the same wait under
    a new key, since Prefect refuses a pause key twice)."""
    if pause_key == wait_key:
        return True
    prefix = f"{wait_key}-r"
    return bool(pause_key and pause_key.startswith(prefix) and pause_key[len(prefix) :].isdigit())


@dataclass
class ResumerStats:
    resumed_timer: int = 0
    resumed_event: int = 0
    not_yet_paused: int = 0
    gone: int = 0
    rejected: int = 0
    #: Resumes another resumer won (HTTP 409): expected with several workers.
    conflicts: int = 0
    #: Ticks that ended because Prefect was unreachable.
    unreachable: int = 0


@dataclass
class Resumer:
    """Resume due waits every ``tick_seconds`` until the stop event is set."""

    tick_seconds: float = 1.0
    batch: int = 200
    #: Deadline of one call to Prefect (the client's own retries of a refused connection would
    #: otherwise hold a tick for a minute while the server is down).
    call_timeout: float = 10.0
    stats: ResumerStats = field(default_factory=ResumerStats)
    _outage: bool = False

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.tick()
            except PrefectUnreachableError as exc:
                self.stats.unreachable += 1
                if not self._outage:
                    logger.warning("resumer: %s; trying again every %gs", exc, self.tick_seconds)
                self._outage = True
            except Exception:
                logger.exception("resumer tick failed; trying again")
            else:
                if self._outage:
                    logger.info("resumer: Prefect answers again")
                self._outage = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.tick_seconds)

    async def tick(self, now: datetime | None = None) -> int:
        """One pass; returns how many runs were resumed. Raises ``PrefectUnreachableError``."""
        resources = await get_resources()
        moment = now or datetime.now(UTC)
        due = await resources.waits.due(moment, limit=self.batch)
        # Waits whose event is already in the store (it arrived before the run paused).
        ready = await resources.waits.event_ready(limit=self.batch)
        if not due and not ready:
            return 0  # idle: no client, no request, no log line
        resumed = 0
        async with get_client() as client:
            for wait in due:
                resumed += await self._resume(client, wait, "timer", moment)
            for wait in ready:
                resumed += await self._resume(client, wait, "event", moment)
        return resumed

    async def _call(self, call: Awaitable[T]) -> T:
        """Await a Prefect call under the deadline; an unreachable Prefect is one error type."""
        return await call_prefect(
            call, seconds=self.call_timeout, unavailable=PrefectUnreachableError
        )

    async def _resume(self, client: PrefectClient, wait: Any, kind: str, now: datetime) -> bool:
        resources = await get_resources()
        run_id = UUID(str(wait.run_id))
        try:
            current = await self._call(client.read_flow_run(run_id))
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
        if not _at_wait(state.state_details.pause_key, wait.wait_key):
            # Suspended at another wait (another branch): a resume now would wake that one.
            return False
        try:
            response = await self._call(
                client.resume_flow_run(run_id, run_input={"kind": kind, "at": now.isoformat()})
            )
        except ObjectNotFound:
            await resources.waits.resolve(str(run_id), wait.wait_key, "gone")
            self.stats.gone += 1
            return False
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 409:
                raise
            # Another resumer's input was stored first (its resume won): nothing to do here.
            self.stats.conflicts += 1
            logger.debug("run %s was resumed by another resumer (409)", run_id)
            return False
        if response.status == SetStateStatus.ACCEPT:
            await resources.waits.resolve(str(run_id), wait.wait_key, kind)
            if kind == "timer":
                self.stats.resumed_timer += 1
            else:
                self.stats.resumed_event += 1
            logger.info("resumed run %s at wait %s (%s)", run_id, wait.wait_key, kind)
            return True
        reason = getattr(response.details, "reason", "")
        if response.status == SetStateStatus.REJECT:
            # A run between proposing Suspended and saving its input schema refuses any input
            # for a moment (expected); any other refusal is worth a warning. Next tick again.
            self.stats.rejected += 1
            level = logging.DEBUG if reason == SCHEMA_NOT_SAVED else logging.WARNING
            logger.log(level, "resume of run %s refused: %s", run_id, reason)
            return False
        # ABORT: the run stopped being paused between our read and the resume (another resumer
        # or the router woke it); next tick looks again.
        self.stats.not_yet_paused += 1
        logger.debug("resume of run %s aborted: %s", run_id, reason)
        return False
