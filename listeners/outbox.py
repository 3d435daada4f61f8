"""The reconciler: finish what the router could not, and notice runs that ended without telling.

Two duties, one loop (``Reconciler.run``; ``Reconciler.running`` runs it in the background),
each pass bounded. It runs in every long-lived process: the Service Bus listener, the management
API and ``orchestration worker`` (``orchestration send-event`` is short-lived: what it deferred
is left to them).

1. The route outbox. A start claimed by the router but not confirmed by Prefect (Prefect down, the
   process died between claim and create) is created again with the same idempotency key, so it
   happens exactly once; a resume that found Prefect down, or a run that had registered its wait but
   not yet suspended (answered ``ABORT``, or ``REJECT`` "Run input schema not found" while it is
   between proposing ``Suspended`` and saving its input schema), is tried again while the run
   still waits for that event and the event is still unclaimed. It ends when the run takes it,
   or when the run has ended (done, with the reason kept in the entry). Failures back off
   exponentially per item; nothing is dropped.
2. The sweep. Runs the ledger believes active are checked against Prefect in one request per batch,
   a batch per pass, each pass going on where the last stopped (a cursor that wraps around);
   finished ones (completed, failed, crashed, cancelled) are marked finished, so the device's next
   event starts a new run. The flow marks its own end; this catches the runs that could not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from listeners.control import ControlError, ControlUnavailableError, ResumeStatus, RunControl
from listeners.router import EventLog, Router, RunLedger
from store.runs import OutboxEntry
from store.waits import Wait

__all__ = ["ReconcileReport", "Reconciler", "RunNotReadyError", "WaitIndex"]

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 60.0
#: How long ``Reconciler.running`` lets a pass in progress finish when its block ends.
STOP_SECONDS = 15.0


class WaitIndex(Protocol):
    """Which runs wait for which device event (``store.waits.WaitStore``)."""

    async def waiting_for(self, device_id: str, event_name: str) -> list[Wait]: ...


def _request(entry: OutboxEntry) -> dict[str, Any]:
    return dict(entry.payload) if isinstance(entry.payload, dict) else {}


@dataclass
class ReconcileReport:
    started: int = 0
    resumed: int = 0
    dropped: int = 0  # resume items no longer needed (the wait resolved or the event was claimed)
    retrying: int = 0
    finished_runs: int = 0

    @property
    def progressed(self) -> int:
        return self.started + self.resumed + self.dropped + self.finished_runs


class RunNotReadyError(ControlError):
    """The run cannot take the resume yet (not suspended, still suspending, or it refused the
    input while it still waits): the entry stays and is tried again with backoff."""


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** max(0, attempts)))


class Reconciler:
    """Retry the outbox and sweep finished runs; safe to run in several processes."""

    def __init__(
        self,
        *,
        router: Router,
        ledger: RunLedger,
        events: EventLog,
        waits: WaitIndex,
        control: RunControl,
        batch: int = 200,
    ) -> None:
        self._router = router
        self._ledger = ledger
        self._events = events
        self._waits = waits
        self._control = control
        self._batch = batch
        # Where the sweep goes on: (updated_at, device_id) of the last run it checked, None to
        # begin again from the least recently updated run (after a page shorter than a batch).
        self._sweep_after: tuple[datetime, str] | None = None

    @contextlib.asynccontextmanager
    async def running(self, *, interval: float) -> AsyncIterator[None]:
        """Reconcile in the background for the block's duration (the worker, the API).

        Every process that takes events in or executes runs does this, so a start or resume
        deferred while Prefect was down is finished wherever the process lives: the outbox is
        leased per entry, so several reconcilers share it without doing an entry twice."""
        stop = asyncio.Event()
        loop = asyncio.create_task(self.run(stop, interval=interval), name="reconciler")
        try:
            yield
        finally:
            stop.set()
            try:
                await asyncio.wait_for(loop, timeout=STOP_SECONDS)
            except TimeoutError:
                log.warning("reconciler pass still busy after %.0fs; cancelled", STOP_SECONDS)

    async def run(self, stop: asyncio.Event, *, interval: float) -> None:
        """Pass after pass until ``stop``; a failing pass is logged and retried next interval."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("reconciler pass failed; trying again in %.1fs", interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    async def run_once(self, now: datetime | None = None) -> ReconcileReport:
        report = ReconcileReport()
        now = now or datetime.now(UTC)
        unavailable: ControlUnavailableError | None = None
        for item in await self._ledger.due(now, self._batch):
            try:
                if unavailable is not None:
                    raise unavailable  # one probe per pass while Prefect is down is enough
                await self._attempt(item, report)
            except ControlError as exc:
                if isinstance(exc, ControlUnavailableError):
                    unavailable = exc
                report.retrying += 1
                retry_in = backoff(item.attempts)
                log.log(
                    # A run that has not suspended yet is the expected race, not a failure.
                    logging.INFO if isinstance(exc, RunNotReadyError) else logging.WARNING,
                    "outbox %s device=%s event=%s attempt %d: %s; next in %.1fs",
                    item.action,
                    item.device_id,
                    item.event_id,
                    item.attempts + 1,
                    exc,
                    retry_in.total_seconds(),
                )
                await self._ledger.mark_failed(item.id, str(exc), retry_at=now + retry_in)
        if unavailable is not None:
            return report
        try:
            await self._sweep(report)
        except ControlError as exc:
            log.warning("run sweep skipped: %s", exc)
        return report

    async def _attempt(self, item: OutboxEntry, report: ReconcileReport) -> None:
        request = _request(item)
        if item.action == "start":
            run_id = await self._router.execute_start(
                item.device_id, request["runKey"], request, probe=True
            )
            log.info(
                "outbox start device=%s event=%s run=%s", item.device_id, item.event_id, run_id
            )
            report.started += 1
            return  # set_run() marked the item done
        run_id = request["runId"]
        name = request["eventName"]
        still_wanted = await self._events.is_unconsumed(
            item.device_id, item.event_id, name
        ) and run_id in {w.run_id for w in await self._waits.waiting_for(item.device_id, name)}
        if not still_wanted:
            report.dropped += 1
            await self._ledger.mark_done(item.id)
            return
        outcome = await self._router.execute_resume(request, probe=True)
        if outcome.status is ResumeStatus.ACCEPTED:
            log.info(
                "outbox resume device=%s event=%s run=%s", item.device_id, item.event_id, run_id
            )
            report.resumed += 1
            await self._ledger.mark_done(item.id)
            return
        # Not taken: the run is not suspended yet, is suspending (its input schema not saved
        # yet), refused the input, or has ended. Only the last makes the resume pointless.
        status = await self._control.status(run_id)
        if status is None or status.finished:
            why = (
                f"run {status.state_type} ({status.state_name})" if status else "run unknown"
            ) + f": {outcome.status.value}: {outcome.reason}"
            log.info(
                "outbox resume device=%s event=%s run=%s no longer needed: %s",
                item.device_id,
                item.event_id,
                run_id,
                why,
            )
            report.dropped += 1
            await self._ledger.mark_done(item.id, note=why)
            return
        raise RunNotReadyError(
            f"{outcome.status.value} while {status.state_type} ({status.state_name}): "
            f"{outcome.reason}"
        )

    async def _sweep(self, report: ReconcileReport) -> None:
        page = await self._ledger.active(self._batch, self._sweep_after)
        # Runs still active are not touched, so the next pass must look past this page, or a
        # crashed run beyond the first batch would never be seen; the cursor wraps at the end.
        after = (page[-1].updated_at, page[-1].device_id) if len(page) >= self._batch else None
        active = [run for run in page if run.run_id]
        statuses = await self._control.statuses([run.run_id for run in active if run.run_id])
        self._sweep_after = after  # only once the page was checked
        for run in active:
            status = statuses.get(run.run_id or "")
            # Unknown to Prefect (its database was reset) counts as finished too.
            if (status is None or status.finished) and await self._ledger.finish(
                run.device_id, run.run_key
            ):
                report.finished_runs += 1
                log.info(
                    "device=%s run=%s finished (%s)",
                    run.device_id,
                    run.run_id,
                    status.state_name if status else "unknown to Prefect",
                )
