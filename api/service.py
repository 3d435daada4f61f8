"""What the management API does, over the Prefect client and the ingress pipeline.

Starting, reading and terminating runs go to Prefect (through ``listeners.control``'s client and
its error translation); a run is started with its definition pinned by content hash
(``api.definitions``), so it executes the definition as it was when it was started. Raising an
event goes through ``Ingress.process``, exactly the path a Service Bus message takes (record, then
start, resume or leave for the run to claim).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import TYPE_CHECKING, Any

from fastapi.exceptions import RequestValidationError

from api.definitions import DefinitionPinner
from api.models import EventAccepted, StartWorkflowRequest, TrailStep, WorkflowStatus
from flows.definitions import RunInputError, run_tags
from listeners.control import PrefectRunControl, RunNotFoundError
from operations.observability import log_context, metrics

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from listeners.pipeline import Ingress
    from listeners.router import Router, RunLedger

__all__ = ["ConflictError", "NotFoundError", "WorkflowService"]

INSTANCE_TAG = "instance:"
# The flow logs each trail entry as "<path> [<type> #<visit>] <outcome>" (flows.driver).
TRAIL_LINE = re.compile(r"^(?P<state>.+?) \[(?P<type>[a-z]+) #(?P<visit>\d+)\] (?P<outcome>.*)$")
MAX_TRAIL_LOGS = 200
RECORD_UNAVAILABLE = "the event could not be recorded now; try again later"


def input_refused(exc: RunInputError) -> RequestValidationError:
    """A 422 in FastAPI's own shape: each problem's ``loc`` names the member of the input (or the
    workflow, when its input schema is broken) and its ``msg`` the JSON pointer."""
    errors = []
    for problem in exc.problems:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in problem.pointer.split("/")[1:]]
        in_input = problem.code == "invalid-run-input"
        where = ("input", *parts) if in_input else ("workflowType",)
        what = "input" if in_input else "the definition's input schema at"
        errors.append(
            {
                "type": problem.code,
                "loc": ("body", *where),
                "msg": f"{what} {problem.pointer or '/'}: {problem.message}",
                "input": None,
            }
        )
    return RequestValidationError(errors)


class NotFoundError(Exception):
    pass


class ConflictError(Exception):
    pass


class WorkflowService:
    def __init__(
        self,
        control: PrefectRunControl,
        ingress: Ingress,
        definitions: DefinitionPinner,
        *,
        router: Router,
        ledger: RunLedger,
    ) -> None:
        self._control = control
        self._ingress = ingress
        self._definitions = definitions
        self._router = router
        self._ledger = ledger

    # -- runs --------------------------------------------------------------------------------

    async def start(self, request: StartWorkflowRequest) -> WorkflowStatus:
        """Pin the definition as it is now, then create the run (once per instance id).

        Starting an instance id again returns its run as it was created: Prefect keeps the first
        run's parameters, hash included, whatever the definition has become since."""
        try:
            pinned = await self._definitions.pin(
                request.workflow_type, request.version, run_input=request.input
            )
        except RunInputError as exc:
            raise input_refused(exc) from exc
        instance = request.instance_id
        key = f"api:{instance}" if instance else f"api:{uuid.uuid4()}"
        # The name and tags the flow gives its runs, at creation: the flow need not update them.
        tags = [*run_tags(pinned.name, request.device_id, pinned.version), "api"]
        if instance:
            tags.append(f"{INSTANCE_TAG}{instance}")
        parameters = {
            "workflow": request.workflow_type,
            "input": request.input,
            "version": request.version,
            "device_id": request.device_id,
            "definition_hash": pinned.digest,
        }
        name = f"{pinned.name}/{request.device_id or instance or key[4:12]}"
        if request.device_id:
            run_id = await self._start_device_run(
                request.device_id, request.workflow_type, key, parameters, name, tags
            )
        else:
            run_id = await self._control.start(
                parameters=parameters, idempotency_key=key, name=name, tags=tags
            )
        return await self.status(run_id)

    async def _start_device_run(
        self,
        device_id: str,
        workflow: str,
        key: str,
        parameters: dict[str, Any],
        name: str,
        tags: list[str],
    ) -> str:
        """A device has one run at a time: claim the device in the ledger first, as the router
        does (the claim queues the start in the outbox, so a start that cannot reach Prefect now
        is made by the reconciler), then create and bind the run. The device's events then route
        to this run; a device whose run is still active refuses the start (409)."""
        request = {"parameters": parameters, "name": name, "tags": tags, "runKey": key}
        claimed = await self._ledger.claim_start(
            device_id, key, workflow=workflow, started_by_event=key, request=request
        )
        if not claimed:
            current = await self._ledger.current(device_id)
            if current is None or current.run_key != key:
                raise ConflictError(
                    f"device {device_id} has an active run "
                    f"{current.run_id if current and current.run_id else '(starting)'}"
                )
        # Idempotent on the key: a repeated start of this instance returns the same run.
        return await self._router.execute_start(device_id, key, request, probe=True)

    async def find(self, workflow_id: str) -> FlowRun:
        """A run by its Prefect id, or by the instance id it was started with."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

        client = self._control.client
        try:
            run_id = uuid.UUID(workflow_id)
        except ValueError:
            runs = await self._control._call(
                client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        tags=FlowRunFilterTags(all_=[f"{INSTANCE_TAG}{workflow_id}"])
                    ),
                    limit=1,
                )
            )
            if not runs:
                raise NotFoundError(f"no workflow with id or instance id {workflow_id!r}") from None
            return runs[0]
        try:
            run: FlowRun = await self._control._call(client.read_flow_run(run_id))
        except RunNotFoundError as exc:  # Prefect unreachable is a 503, not "no such run"
            raise NotFoundError(f"no workflow with id {workflow_id!r}") from exc
        return run

    async def status(self, workflow_id: str) -> WorkflowStatus:
        run = await self.find(workflow_id)
        trail, complete, output = await self._trail(run)
        instance = next(
            (t[len(INSTANCE_TAG) :] for t in run.tags if t.startswith(INSTANCE_TAG)), None
        )
        state = run.state
        updated = max(
            (t for t in (run.updated, state.timestamp if state else None) if t is not None),
            default=None,
        )
        return WorkflowStatus(
            id=str(run.id),
            instance_id=instance,
            name=run.name,
            workflow_type=_str_or_none(run.parameters.get("workflow")),
            device_id=_str_or_none(run.parameters.get("device_id")),
            status=state.type.value if state else "SCHEDULED",
            state_name=(state.name or "") if state else "Scheduled",
            created_at=run.created,
            last_updated_at=updated,
            state_message=(state.message or None) if state else None,
            current_state=trail[-1].state if trail else None,
            trail=trail,
            trail_complete=complete,
            output=output,
        )

    async def terminate(self, workflow_id: str) -> WorkflowStatus:
        """Cancel the run: at once when no process holds it, else through Cancelling."""
        from prefect.client.schemas.objects import State
        from prefect.states import Cancelled, Cancelling

        run = await self.find(workflow_id)
        state = run.state
        if state is not None and state.is_final():
            raise ConflictError(f"workflow {run.id} already ended: {state.name}")
        holds_process = state is not None and (
            state.is_running() or (state.is_paused() and state.name != "Suspended")
        )
        message = "terminated through the management API"
        new: State[Any] = (
            Cancelling(message=message) if holds_process else Cancelled(message=message)
        )
        await self._control._call(self._control.client.set_flow_run_state(run.id, new, force=True))
        return await self.status(str(run.id))

    async def _trail(self, run: FlowRun) -> tuple[list[TrailStep], bool, Any]:
        """The run's trail, whether it is final, and its output (``flows.trail``'s artifacts).

        The final trail once the run has ended; else the latest trail so far a suspended run
        published (its last row the wait it is in); else what the run's logs show so far.
        """
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterType,
            FlowRunFilter,
            FlowRunFilterId,
            LogFilter,
            LogFilterFlowRunId,
        )
        from prefect.client.schemas.sorting import LogSort

        from flows.trail import OUTPUT_DESCRIPTION, TRAIL_DESCRIPTION, read_output

        client = self._control.client
        artifacts = await self._control._call(
            client.read_artifacts(
                artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["table", "markdown"])),
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
            )
        )
        output: Any = None
        for artifact in artifacts:
            if artifact.type == "markdown" and (artifact.description or "").startswith(
                OUTPUT_DESCRIPTION
            ):
                _found, output = read_output(artifact.data)
        # The final trail first; else the newest trail so far.
        tables = sorted(
            (a for a in artifacts if a.type == "table"),
            key=lambda a: (
                (a.description or "").startswith(TRAIL_DESCRIPTION),
                a.created.timestamp() if a.created else 0.0,
            ),
            reverse=True,
        )
        for artifact in tables:
            rows = _table_rows(artifact.data)
            if rows is not None:
                final = (artifact.description or "").startswith(TRAIL_DESCRIPTION)
                return [TrailStep.model_validate(row) for row in rows], final, output
        logs = await self._control._call(
            client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
                limit=MAX_TRAIL_LOGS,
                sort=LogSort.TIMESTAMP_ASC,
            )
        )
        steps: dict[tuple[str, int], TrailStep] = {}
        for log in logs:
            match = TRAIL_LINE.match(log.message)
            if match is None:
                continue
            step = TrailStep(
                state=match["state"],
                type=match["type"],
                visit=int(match["visit"]),
                outcome=match["outcome"],
                at=log.timestamp.isoformat(),
            )
            # A resumed run replays its cached steps and logs them again: keep the first.
            steps.setdefault((step.state, step.visit), step)
        return list(steps.values()), False, output

    # -- resume ------------------------------------------------------------------------------

    async def resume(self, workflow_id: str, run_input: dict[str, Any]) -> WorkflowStatus:
        """Resume the waiting run with the input of the UI's Resume form (``flows.wake``:
        ``{"action": "deliver-event", "payload": ...}`` or ``{"action": "fire-timer"}``).

        What the wait cannot use is a 422 with Prefect's reason (the run stays paused); a run
        that does not wait (not suspended yet, resumed already, ended) is a 409 with the reason.
        """
        from listeners.control import ResumeStatus

        run = await self.find(workflow_id)
        outcome = await self._control.resume(str(run.id), run_input)
        if outcome.status is ResumeStatus.REJECTED:
            error = {"type": "resume_refused", "loc": ["body"], "msg": outcome.reason}
            raise RequestValidationError([error])
        if outcome.status is not ResumeStatus.ACCEPTED:
            why = outcome.reason or "not paused"
            raise ConflictError(f"workflow {run.id} is not waiting for a resume: {why}")
        return await self.status(str(run.id))

    # -- events ------------------------------------------------------------------------------

    async def raise_event(
        self, workflow_id: str, name: str, payload: dict[str, Any], event_id: str | None
    ) -> tuple[EventAccepted, int]:
        run = await self.find(workflow_id)
        device = _str_or_none(run.parameters.get("device_id"))
        if device is None:
            raise ConflictError(
                f"workflow {run.id} has no device: events are routed per device, "
                "use POST /devices/{id}/events"
            )
        if run.state is not None and run.state.is_final():
            raise ConflictError(f"workflow {run.id} already ended: {run.state.name}")
        return await self.device_event(device, name, payload, event_id)

    async def device_event(
        self,
        device_id: str,
        name: str,
        payload: dict[str, Any],
        event_id: str | None,
        occurred_at: str | None = None,
    ) -> tuple[EventAccepted, int]:
        """Through ``Ingress.process``; returns the body and the HTTP status to answer with."""
        from listeners.events import IncomingMessage
        from listeners.pipeline import OVERFLOW_REASON, Disposition

        event_id = event_id or str(uuid.uuid4())
        body: dict[str, Any] = {
            "deviceId": device_id,
            "eventId": event_id,
            "name": name,
            "payload": payload,
        }
        if occurred_at is not None:
            body["occurredAt"] = occurred_at
        message = IncomingMessage(
            body=json.dumps(body, separators=(",", ":")).encode(),
            message_id=event_id,
            session_id=device_id,
        )
        with log_context(device_id=device_id, message_id=event_id):
            outcome = await self._ingress.process(message)
        _count(outcome, name)
        result = outcome.result.as_dict() if outcome.result is not None else {}
        accepted = EventAccepted(
            disposition=outcome.disposition.value,
            device_id=result.get("deviceId", device_id),
            event_id=result.get("eventId", event_id),
            recorded=result.get("recorded"),
            action=result.get("action"),
            run_id=result.get("runId"),
            detail=result.get("detail") or outcome.description or None,
        )
        if outcome.disposition is Disposition.COMPLETE:
            return accepted, 202
        if outcome.disposition is Disposition.DEAD_LETTER:
            return accepted, 429 if outcome.reason == OVERFLOW_REASON else 422
        # Transient: the cause (a driver's error text) is in the pipeline's log, not the answer.
        return accepted.model_copy(update={"detail": RECORD_UNAVAILABLE}), 503

    async def prefect_healthy(self) -> bool:
        return await self._control.client.api_healthcheck() is None


def _count(outcome: Any, name: str) -> None:
    from listeners.pipeline import Disposition

    if outcome.disposition is Disposition.DEAD_LETTER:
        metrics().dead_letters.add(1, {"reason": outcome.reason or "unknown", "source": "api"})
    elif outcome.result is not None:
        metrics().device_events.add(1, {"event": name, "action": outcome.result.action.value})


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def _table_rows(data: Any) -> list[dict[str, Any]] | None:
    """A table artifact's rows (stored as a JSON string of a list of row objects)."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return None
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return [
            {
                "state": str(row.get("state", "")),
                "type": str(row.get("type", "")),
                "visit": int(row.get("visit", 0)),
                "outcome": str(row.get("outcome", "")),
                "at": row.get("at"),
            }
            for row in data
        ]
    return None
