"""Start-or-route: what happens to a device event after a transport has delivered it.

``Router.handle(event)`` first records the event durably (insert-or-ignore on its event id), then:

- no run for the device, or its last run has finished -> start a run of the configured workflow;
- the device's run waits for an event of this name -> resume it (the run claims the event itself);
- the device's run is busy -> nothing more: the event waits in the store until a run asks for it.

A duplicate (a redelivery of an event stored before) is acknowledged and starts nothing new: it
only finishes what its own first delivery may have left undone when a crash cut it off, its own
start (``_may_route_duplicate``) or the resume of the run that waits for it while it is still
unconsumed. An event id stored with other content (``conflict``) or refused for the device's
limit is routed nowhere.

Where the truth lives: the ``device_runs`` row of our database. A start is a compare-and-set on
that row (``claim_start`` succeeds for one caller only, and writes its outbox row in the same
transaction), and the Prefect run is created with an idempotency key derived from the device and
the event that claimed the start, so a crash between claim and create, a redelivery, or a second
router all converge on one run. Whether a run has finished is kept in the row too (the flow marks
it, and the reconciler sweeps runs that crashed): routing a busy device's event never asks
Prefect.

Prefect down never loses an event and never blocks the queue: the event is recorded first, a start
or resume that cannot reach Prefect stays in the outbox (``deferred``), and the reconciler
(``listeners.outbox``) retries it until it is done. Every step can run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol

from listeners.control import (
    ControlError,
    ControlUnavailableError,
    ResumeOutcome,
    ResumeStatus,
    RunControl,
)
from listeners.events import IncomingEvent
from store.runs import DeviceRun, OutboxEntry, RunSnapshot

if TYPE_CHECKING:
    from flows.definitions import Pinned

__all__ = [
    "DefinitionPin",
    "EventLog",
    "RecordStatus",
    "RouteAction",
    "RouteResult",
    "Router",
    "RunLedger",
    "resume_input",
    "run_key_for",
]

log = logging.getLogger(__name__)


class RecordStatus(enum.StrEnum):
    RECORDED = "recorded"  # stored now
    DUPLICATE = "duplicate"  # stored before (a redelivery): acknowledged, starts nothing new
    CONFLICT = "conflict"  # the id is stored with other content; not stored
    OVERFLOW = "overflow"  # the device holds too many events; not stored


class RouteAction(enum.StrEnum):
    STARTED = "started"
    RESUMED = "resumed"
    BUSY = "busy"  # a run is busy; the event waits in the store
    DEFERRED = "deferred"  # Prefect could not be reached; the outbox will finish the job
    REFUSED = "refused"  # the event was not stored (overflow), so nothing was routed
    REJECTED = "rejected"  # definition missing or invalid, or input breaks its schema: no start
    IGNORED = "ignored"  # a duplicate: its first delivery was routed already; nothing to do


@dataclass(frozen=True, slots=True)
class RouteResult:
    device_id: str
    event_id: str
    recorded: RecordStatus
    action: RouteAction
    run_id: str | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "deviceId": self.device_id,
            "eventId": self.event_id,
            "recorded": self.recorded.value,
            "action": self.action.value,
            "runId": self.run_id,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Recorded:
    """What recording a batch did: a status per event, and per device its run snapshot."""

    statuses: list[RecordStatus]
    runs: dict[str, RunSnapshot]


class EventLog(Protocol):
    """The durable record of device events (``store.events.EventStore`` behind an adapter)."""

    async def record_many(self, events: Sequence[IncomingEvent]) -> Recorded:
        """Record the events (idempotent per event id) and read each device's run snapshot after
        recording, in one transaction."""
        ...

    async def is_unconsumed(self, device_id: str, event_id: str, name: str) -> bool:
        """Whether the event is stored and no wait has claimed it yet."""
        ...


class RunLedger(Protocol):
    """The device's current run and the route outbox (``store.runs.DeviceRunStore``)."""

    async def current(self, device_id: str) -> DeviceRun | None: ...

    async def claim_start(
        self,
        device_id: str,
        run_key: str,
        *,
        workflow: str,
        started_by_event: str | None = None,
        stale_after: timedelta | None = None,
        request: Any = None,
    ) -> bool: ...

    async def set_run(self, device_id: str, run_key: str, run_id: str) -> bool: ...

    async def finish(self, device_id: str, run: str) -> bool: ...

    async def active(
        self, limit: int, after: tuple[datetime, str] | None = None
    ) -> list[DeviceRun]: ...

    async def enqueue(
        self,
        device_id: str,
        event_id: str,
        action: Literal["start", "resume"],
        payload: Any = None,
        *,
        not_before: datetime | None = None,
        error: str | None = None,
    ) -> int: ...

    async def due(self, now: datetime, limit: int) -> list[OutboxEntry]: ...

    async def outstanding(self, device_id: str | None = None) -> list[OutboxEntry]: ...

    async def mark_done(self, entry_id: int, *, note: str | None = None) -> None: ...

    async def mark_failed(
        self, entry_id: int, error: str, *, retry_at: datetime | None = None
    ) -> None: ...


class DefinitionPin(Protocol):
    """Pins the workflow's current definition by content hash (``flows.definitions``'s
    ``DefinitionPinner``): raises ``UnknownWorkflowError`` (missing or invalid: final),
    ``RunInputError`` (``run_input`` breaks the definition's input schema: final) or
    ``DefinitionsUnavailableError`` (the source is down: try again later)."""

    async def pin(
        self, workflow: str, version: str | None, *, run_input: dict[str, Any] | None = None
    ) -> Pinned: ...


def _started_something(result: RouteResult) -> bool:
    return result.action in (RouteAction.STARTED, RouteAction.DEFERRED) or (
        result.detail == "lost the start"
    )


def _may_route_duplicate(current: DeviceRun | None, run_key: str) -> bool:
    """Whether a duplicate may still be routed as a start: only to finish what its own first
    delivery began and a crash cut off. With no run for the device at all, the first delivery
    never reached its start (recorded, then killed). With its own run key on the device's run,
    the first delivery claimed the start; creating again is idempotent and ends at that same run.
    Anything else (a run started by another event, running or finished) means starting again
    could only start a second run, with an event its first delivery already routed."""
    return current is None or current.run_key == run_key


def run_key_for(event: IncomingEvent) -> str:
    """The idempotency key of the run an event starts (Prefect keeps it forever, per deployment)."""
    return f"ingress:{event.device_id}:{event.event_id}"


def resume_input(event_id: str, at: datetime) -> dict[str, Any]:
    """What a waiting run is resumed with; the run then claims the event from the store itself."""
    return {"kind": "event", "at": at.isoformat(), "eventId": event_id}


class Router:
    """Record, then start, resume or leave be. Safe to run in many processes at once."""

    def __init__(
        self,
        *,
        events: EventLog,
        ledger: RunLedger,
        control: RunControl,
        workflow: str,
        workflow_version: str | None = None,
        unavailable_backoff: float = 5.0,
        max_concurrent_calls: int = 16,
        definitions: DefinitionPin | None = None,
    ) -> None:
        self._events = events
        # With ``definitions``, each start pins the definition before claiming the device and
        # the hash travels in the start request (the outbox too): the run executes the content
        # as it was when its event arrived, and a retried start creates the same run.
        self._definitions = definitions
        self._ledger = ledger
        self._control = control
        self.workflow = workflow
        self.workflow_version = workflow_version
        self._backoff = unavailable_backoff
        # While Prefect is known to be down, go straight to the outbox instead of waiting out a
        # deadline on every event (a circuit breaker: the reconciler closes it again).
        self._unavailable_until = 0.0
        # A batch of new devices must not stampede Prefect with a create per device at once
        # (calls time out, the circuit opens and every start lands in the outbox): queue here.
        self._calls = asyncio.Semaphore(max_concurrent_calls)

    # -- the decision ------------------------------------------------------------------------

    async def handle(self, event: IncomingEvent) -> RouteResult:
        """Record and route one event."""
        return (await self.handle_many([event]))[0]

    async def handle_many(self, events: Sequence[IncomingEvent]) -> list[RouteResult]:
        """Record the events in one transaction, then route each; one result per event, in order.

        Devices are routed concurrently, each device's events in order. The snapshot read with
        the record says what each device's run is and waits for, so a busy device's events cost
        no further read; a start or a resume changes the snapshot for the device's next events.
        """
        recorded = await self._events.record_many(events)
        results: list[RouteResult | None] = [None] * len(events)
        by_device: dict[str, list[int]] = {}
        for index, event in enumerate(events):
            by_device.setdefault(event.device_id, []).append(index)

        async def route_device(device_id: str, indexes: list[int]) -> None:
            snapshot = recorded.runs.get(device_id, RunSnapshot(None))
            current, waiting = snapshot.run, set(snapshot.waiting)
            for index in indexes:
                event, status = events[index], recorded.statuses[index]
                result = await self._route(event, status, current, waiting)
                results[index] = result
                if result.action is RouteAction.RESUMED:
                    waiting.clear()  # the run is no longer paused: later events wait in the store
                elif _started_something(result) and (
                    current is None or current.finished or current.run_id is None
                ):
                    # A start was claimed, made, lost or deferred: the ledger knows the run now.
                    current, waiting = await self._ledger.current(device_id), set()

        if len(by_device) == 1:
            [(device_id, indexes)] = by_device.items()
            await route_device(device_id, indexes)
        else:
            await asyncio.gather(*(route_device(d, i) for d, i in by_device.items()))
        return [result for result in results if result is not None]

    async def _route(
        self,
        event: IncomingEvent,
        recorded: RecordStatus,
        current: DeviceRun | None,
        waiting: set[str],
    ) -> RouteResult:
        if recorded is RecordStatus.OVERFLOW:
            return self._result(event, recorded, RouteAction.REFUSED, detail="device event limit")
        if recorded is RecordStatus.CONFLICT:
            detail = "the event id is stored with other content"
            return self._result(event, recorded, RouteAction.REFUSED, detail=detail)
        # The snapshot was read after the record, under the device's lock, which a run's wait
        # registration also takes: either the run finds the event when it claims (it claims
        # after registering), or the snapshot shows its wait.
        run_key = run_key_for(event)
        if recorded is RecordStatus.DUPLICATE and not _may_route_duplicate(current, run_key):
            # Starting now would give an event its first delivery already routed (a finished
            # run may have consumed it) to a new run, which waits for it in vain. Resuming is
            # right only while the event is still unconsumed and the run waits for its name: the
            # first delivery was cut off before its resume (the run claims it, compare-and-set).
            if (
                current is not None
                and not current.finished
                and current.run_id is not None
                and event.name in waiting
                and await self._events.is_unconsumed(event.device_id, event.event_id, event.name)
            ):
                return await self._resume(event, recorded, current.run_id)
            return self._result(event, recorded, RouteAction.IGNORED, detail="duplicate")
        if current is not None and current.finished and current.run_key == run_key:
            # A late redelivery of the event that started the device's last run: done already.
            return self._result(event, recorded, RouteAction.STARTED, current.run_id, "already")
        if current is None or current.finished:
            return await self._start(event, recorded)
        if current.run_key == run_key:
            # This very event started the current run: a redelivery, maybe after a crash
            # between claim and create. Creating again is idempotent.
            if current.run_id is None:
                request = await self._claimed_request(event)
                if request is None:  # created meanwhile: Prefect answers with that run
                    request = self.start_request(event)
                return await self._create(event, recorded, current.run_key, request)
            return self._result(event, recorded, RouteAction.STARTED, current.run_id, "already")
        if current.run_id is None:
            return self._result(event, recorded, RouteAction.BUSY, detail="a start is pending")
        if event.name in waiting:
            return await self._resume(event, recorded, current.run_id)
        return self._result(event, recorded, RouteAction.BUSY, current.run_id)

    # -- start -------------------------------------------------------------------------------

    def start_request(self, event: IncomingEvent, pinned: Pinned | None = None) -> dict[str, Any]:
        """Everything needed to create the run, as stored in the outbox (JSON).

        With the pinned definition, the run gets the name and tags its flow gives runs
        (``<workflow>/<device>``, ``workflow:``, ``device:``, ``version:``) at creation, so the
        flow need not rename it (an update per start on the server)."""
        from flows.definitions import run_name, run_tags

        parameters: dict[str, Any] = {
            "workflow": self.workflow,
            "input": {"event": event.as_input()},
            "version": self.workflow_version,
            "device_id": event.device_id,
        }
        if pinned is None:
            name = f"{self.workflow}-{event.device_id}-{event.event_id[:12]}"
            tags = [f"device:{event.device_id}", f"workflow:{self.workflow}"]
        else:
            parameters["definition_hash"] = pinned.digest
            name = run_name(pinned.name, event.device_id, event.event_id)
            tags = run_tags(pinned.name, event.device_id, pinned.version)
        return {
            "parameters": parameters,
            "name": name,
            "tags": [*tags, "ingress"],
            "runKey": run_key_for(event),
        }

    async def _pin(self, event: IncomingEvent) -> Pinned | None:
        """The pinned definition (None without ``definitions``), the event's run input
        checked against its input schema; raises ``UnknownWorkflowError``, ``RunInputError`` or
        ``DefinitionsUnavailableError``."""
        if self._definitions is None:
            return None
        run_input = self.start_request(event)["parameters"]["input"]
        return await self._definitions.pin(
            self.workflow, self.workflow_version, run_input=run_input
        )

    async def _start(self, event: IncomingEvent, recorded: RecordStatus) -> RouteResult:
        from flows.definitions import RunInputError, UnknownWorkflowError

        run_key = run_key_for(event)
        try:
            # DefinitionsUnavailableError propagates: the transport redelivers the event later
            # (it is recorded already; nothing was claimed, so nothing is half done).
            pinned = await self._pin(event)
        except RunInputError as exc:
            log.error(
                "device=%s event=%s workflow=%s: no run started, the event breaks the "
                "definition's input schema: %s",
                event.device_id,
                event.event_id,
                self.workflow,
                exc,
            )
            return self._result(event, recorded, RouteAction.REJECTED, detail=str(exc))
        except UnknownWorkflowError as exc:
            log.error(
                "device=%s event=%s workflow=%s: no run started, the definition is missing or "
                "invalid: %s",
                event.device_id,
                event.event_id,
                self.workflow,
                exc,
            )
            return self._result(event, recorded, RouteAction.REJECTED, detail=str(exc))
        request = self.start_request(event, pinned)
        # The call slot first, then the claim: the claim's outbox entry falls due START_GRACE
        # after it, and a start queued here behind a burst of others must not look abandoned to
        # a reconciler, which would create it a second time (idempotent, but a create per run
        # more on the server, when it is busiest).
        async with self._calls:
            claimed = await self._ledger.claim_start(
                event.device_id,
                run_key,
                workflow=self.workflow,
                started_by_event=event.event_id,
                request=request,
            )
            if not claimed:
                winner = await self._ledger.current(event.device_id)
                if winner is None or winner.run_key != run_key:
                    # Another event (another router) started the device's run first.
                    run_id = winner.run_id if winner else None
                    return self._result(event, recorded, RouteAction.BUSY, run_id, "lost the start")
                if winner.run_id is not None:
                    return self._result(
                        event, recorded, RouteAction.STARTED, winner.run_id, "already"
                    )
                # Our own claim from before: create with the request stored then (the same pin).
                request = await self._claimed_request(event) or request
            return await self._create(event, recorded, run_key, request, holding_slot=True)

    async def _claimed_request(self, event: IncomingEvent) -> dict[str, Any] | None:
        """The start request the claim stored in the outbox for this event, if still pending."""
        for entry in await self._ledger.outstanding(event.device_id):
            if (
                entry.action == "start"
                and entry.event_id == event.event_id
                and isinstance(entry.payload, dict)
            ):
                return dict(entry.payload)
        return None

    async def _create(
        self,
        event: IncomingEvent,
        recorded: RecordStatus,
        run_key: str,
        request: dict[str, Any],
        *,
        holding_slot: bool = False,
    ) -> RouteResult:
        try:
            run_id = await self.execute_start(
                event.device_id, run_key, request, holding_slot=holding_slot
            )
        except ControlError as exc:
            # The claim queued the start in the outbox already; the reconciler retries it.
            return self._result(event, recorded, RouteAction.DEFERRED, detail=str(exc))
        return self._result(event, recorded, RouteAction.STARTED, run_id)

    async def execute_start(
        self,
        device_id: str,
        run_key: str,
        request: dict[str, Any],
        *,
        probe: bool = False,
        holding_slot: bool = False,
    ) -> str:
        """Create the run (idempotent on ``run_key``) and bind it; raises ``ControlError``.

        ``probe``: call Prefect even while the circuit is open (the reconciler's retries).
        ``holding_slot``: the caller holds one of the concurrent call slots already."""
        if not probe:
            self._check_circuit()
        try:
            async with contextlib.nullcontext() if holding_slot else self._calls:
                run_id = await self._control.start(
                    parameters=request["parameters"],
                    idempotency_key=run_key,
                    name=request["name"],
                    tags=request["tags"],
                )
        except ControlUnavailableError:
            self._open_circuit()
            raise
        if probe:
            self.close_circuit()
        await self._ledger.set_run(device_id, run_key, run_id)
        return run_id

    # -- resume ------------------------------------------------------------------------------

    async def _resume(
        self, event: IncomingEvent, recorded: RecordStatus, run_id: str
    ) -> RouteResult:
        request = {
            "runId": run_id,
            "eventName": event.name,
            "runInput": resume_input(event.event_id, event.received_at),
        }
        try:
            outcome = await self.execute_resume(request)
        except ControlError as exc:
            await self._ledger.enqueue(
                event.device_id, event.event_id, "resume", request, error=str(exc)
            )
            return self._result(event, recorded, RouteAction.DEFERRED, run_id, str(exc))
        if outcome.status is ResumeStatus.ACCEPTED:
            return self._result(event, recorded, RouteAction.RESUMED, run_id)
        # Not resumable yet: the run registered its wait but has not (fully) suspended, or it
        # refused the input. The reconciler tries again, with backoff, while the wait is open
        # and the event unclaimed, until the run takes it or has ended.
        detail = f"{outcome.status.value}: {outcome.reason}" if outcome.reason else "not paused"
        await self._ledger.enqueue(event.device_id, event.event_id, "resume", request, error=detail)
        return self._result(event, recorded, RouteAction.DEFERRED, run_id, detail)

    async def execute_resume(
        self, request: dict[str, Any], *, probe: bool = False
    ) -> ResumeOutcome:
        """Resume the run with the request's input; raises ``ControlError``."""
        if not probe:
            self._check_circuit()
        try:
            async with self._calls:
                outcome = await self._control.resume(request["runId"], request["runInput"])
        except ControlUnavailableError:
            self._open_circuit()
            raise
        if probe:
            self.close_circuit()
        if outcome.status is ResumeStatus.REJECTED:
            log.error("run %s rejected the resume input: %s", request["runId"], outcome.reason)
        return outcome

    # -- helpers -----------------------------------------------------------------------------

    def _check_circuit(self) -> None:
        if time.monotonic() < self._unavailable_until:
            raise ControlUnavailableError("Prefect was unavailable moments ago; left to the outbox")

    def _open_circuit(self) -> None:
        self._unavailable_until = time.monotonic() + self._backoff

    def close_circuit(self) -> None:
        """Prefect answered again (the reconciler saw it): route directly again."""
        self._unavailable_until = 0.0

    @staticmethod
    def _result(
        event: IncomingEvent,
        recorded: RecordStatus,
        action: RouteAction,
        run_id: str | None = None,
        detail: str = "",
    ) -> RouteResult:
        return RouteResult(event.device_id, event.event_id, recorded, action, run_id, detail)
