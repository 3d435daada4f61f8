"""The generic workflow flow: load, validate and pin a definition, then drive the engine to its end.

Entrypoint for deployments: ``flows/workflow.py:run_workflow``. One flow for every definition; the
definition is data, pinned: the creator of the run stores it by content hash
(``flows.definitions.pin``) and passes ``definition_hash``, so every replay (after a suspend) reads
exactly the content the run started with, with no Prefect call; without a hash, the run reads it
once and journals it with its hash (the fallback). Validation and compilation happen once per hash
per process. A run that ends ``failed`` raises ``WorkflowFailedError``, so Prefect shows it Failed
with the reason. The trail of states is logged state by state while the run goes, and published
as a table artifact by a hook once the run's final state is set (off the run's own time), with
the output of a completed run as a JSON artifact; a run that is cancelled or crashes publishes
the trail it had reached.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect import Flow, flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext
from prefect.exceptions import Pause

from flows import definitions, leases, steps, trail
from flows.definitions import run_name, run_tags
from flows.driver import RunDriver, TransitionListener
from flows.leases import executor_managed
from flows.logfilter import install_suspend_log_filter
from flows.runtime import Resources, get_resources
from flows.wake import event_subject
from interpreter.errors import OrchestrationError
from interpreter.models import WorkflowDefinition
from interpreter.runtime import Finished, RunState, SystemContext, TrailEntry
from operations.observability import log_context, metrics
from store.transient import retry_transient

__all__ = [
    "FLOW_NAME",
    "DeviceBusyError",
    "WorkflowFailedError",
    "add_transition_listener",
    "remove_transition_listener",
    "run_name",
    "run_tags",
    "run_workflow",
]

FLOW_NAME = "run-workflow"

install_suspend_log_filter()

_listeners: list[TransitionListener] = []
#: Runs whose engine finished, waiting for the hook that publishes their trail (popped there).
_finished_trails: dict[UUID, tuple[WorkflowDefinition, list[TrailEntry], Finished]] = {}
#: Runs executing in this process: a hook of a run that ends unfinished (cancelled, crashed)
#: publishes the trail its driver had reached. Removed when the execution returns or raises.
_live_trails: dict[UUID, tuple[WorkflowDefinition, RunDriver]] = {}


class WorkflowFailedError(OrchestrationError):
    """The run ended ``failed``: where it started to fail, what compensation did, how it ended.

    Without compensation or an earlier failure: ``"<state>: <error>: <cause>"``. Otherwise, e.g.
    ``"UpdateAndNotify failed (Http.Status5xx: 503 from ...); compensated 2 steps (1 failed);
    ended OnboardingFailed: Onboarding.Failed: <cause>"``.
    """

    def __init__(
        self,
        state: str | None,
        error: str,
        cause: str | None,
        *,
        origin: tuple[str, str, str] | None = None,
        compensated: int = 0,
        compensations_failed: int = 0,
    ) -> None:
        where = f"{state}: " if state else ""
        final = f"{where}{error}: {cause or '(no cause given)'}"
        parts: list[str] = []
        # The first failure, unless the final error already says it: a failure caught into a
        # compensation or fail state ends with that state's error, which alone hid e.g. the
        # path of a States.PathNotFound.
        if origin is not None and (origin[0] != state or compensated or origin[1] != error):
            origin_state, origin_error, origin_cause = origin
            detail = f"{origin_error}: {origin_cause}" if origin_cause else origin_error
            parts.append(f"{origin_state} failed ({detail})")
        if compensated:
            steps_word = "step" if compensated == 1 else "steps"
            note = f" ({compensations_failed} failed)" if compensations_failed else ""
            parts.append(f"compensated {compensated} {steps_word}{note}")
        message = "; ".join([*parts, f"ended {final}"]) if parts else final
        super().__init__(message)
        self.state = state
        self.error = error
        self.cause = cause
        self.origin = origin
        self.compensated = compensated


class DeviceBusyError(OrchestrationError):
    """The run names a device that already has another current run: it does nothing."""

    def __init__(self, device_id: str, other_run: str, workflow: str) -> None:
        super().__init__(
            f"device {device_id} already has run {other_run} ({workflow}); a device runs one "
            "workflow at a time: send that run its events, or end it, then start this one"
        )
        self.device_id = device_id
        self.other_run = other_run


class DefinitionChangedError(OrchestrationError):
    """The definition found does not have the hash the run was created for."""


def add_transition_listener(listener: TransitionListener) -> None:
    """Call ``listener`` with each trail entry of every run in this process (CLI progress)."""
    _listeners.append(listener)


def remove_transition_listener(listener: TransitionListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


async def _publish_trail(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """The trail of states as a table artifact of the run (a hook: after the final state), and
    a completed run's output; a run that ended unfinished shows the trail it reached."""
    live = _live_trails.pop(flow_run.id, None)
    entry = _finished_trails.pop(flow_run.id, None)
    if entry is None:
        if live is None or not live[1].trail:
            return  # ended before its engine started (a definition error): nothing to show
        definition, driver = live
        ended = str(state.name or state.type.value).lower()
        how = f"{ended} ({state.message})" if state.message else ended
        await trail.publish_trail(
            trail.trail_rows(driver.trail),
            f"{trail.TRAIL_DESCRIPTION} {definition.name} {definition.version}: {how}",
        )
        return
    definition, entries, finished = entry
    summary = f"{definition.name} {definition.version}: {finished.status}"
    if finished.status == "failed":
        summary += f" ({finished.error}: {finished.cause})"
    await trail.publish_trail(trail.trail_rows(entries), f"{trail.TRAIL_DESCRIPTION} {summary}")
    if finished.status != "failed":
        await trail.publish_output(finished.output)


async def _ended(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """The hook of every final state (one hook: one line in the run's log): publish the trail,
    then release the run's lease (this process executes it no more). The executor releases
    the runs it holds itself once the engine returns: not twice."""
    try:
        await _publish_trail(flow, flow_run, state)
    finally:
        if not executor_managed.get():
            with contextlib.suppress(Exception):
                await (await leases.keeper()).release(flow_run.id)


@flow(
    name=FLOW_NAME,
    persist_result=True,
    # Prefect's validation builds a pydantic model from the signature on every run (~5 ms, a
    # third of the interpreter's overhead over a hand-written flow); ``_check_parameters`` does
    # the same checks directly.
    validate_parameters=False,
    on_completion=[_ended],
    on_failure=[_ended],
    on_crashed=[_ended],
    on_cancellation=[_ended],
)
async def run_workflow(
    workflow: str,
    input: dict[str, Any] | None = None,
    version: str | None = None,
    device_id: str | None = None,
    definition_hash: str | None = None,
) -> Any:
    """Run the workflow ``workflow`` (a name, or a path to a ``.json`` definition) on ``input``.

    ``definition_hash``: the hash under which the creator pinned the definition
    (``flows.definitions.pin``); the run reads it from there. Without it (or when the pinned copy
    is not found here) the definition is loaded by ``workflow`` in a cached task, and must then
    have that hash.
    """
    _check_parameters(workflow, input, version, device_id, definition_hash)
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("run_workflow must run as a Prefect flow run")
    flow_run = context.flow_run
    if executor_managed.get():  # the executor holds the run's lease around the engine
        return await _execute(flow_run, workflow, input, version, device_id, definition_hash)
    # A Prefect worker's flow process: the run holds its lease itself (``flows.leases``); the
    # final-state hook releases it once the run's state is set, a suspension right here.
    lease = await leases.keeper()
    await retry_transient("holding the run's lease", lambda: lease.hold(flow_run.id))
    try:
        return await _execute(flow_run, workflow, input, version, device_id, definition_hash)
    except Pause:
        # Suspended (Prefect has the run Paused already): not held by this process any more, so
        # the claimer of its next execution is not judged by this process's lease.
        with contextlib.suppress(Exception):
            await lease.release(flow_run.id)
        raise


async def _execute(
    flow_run: FlowRun,
    workflow: str,
    input: dict[str, Any] | None,
    version: str | None,
    device_id: str | None,
    definition_hash: str | None,
) -> Any:
    run_id = str(flow_run.id)
    logger = get_run_logger()
    resources = await get_resources()

    prepared, started_at = await _definition(
        run_id, flow_run, workflow, version, definition_hash, resources
    )
    definition = prepared.definition
    await _name_and_tag(flow_run, definition, device_id)
    if device_id:
        # One run per device, however the run was started (the ledger's own claim is idempotent).
        other = await steps.claim_device_run(
            device_id, run_id, flow_run.idempotency_key, definition.name
        )
        if other is not None:
            raise DeviceBusyError(device_id, other.run_id or other.run_key, other.workflow)

    system = SystemContext(
        run_id=run_id,
        workflow=definition.name,
        version=definition.version,
        definition_hash=prepared.digest,
        device_id=device_id,
        started_at=started_at,
    )
    engine = prepared.engine
    driver = RunDriver(
        run_id=run_id,
        device_id=device_id,
        subject=event_subject(device_id, run_id),
        settings=resources.settings,
        logger=logger,
        listeners=list(_listeners),
        # A later execution of the run (resumed, healed) replays the transitions it logged.
        replaying=flow_run.run_count >= 1,  # as read before this execution began
    )
    with log_context(device_id=device_id, flow_run_id=run_id):
        run = engine.start(input or {}, system)
        _live_trails[flow_run.id] = (definition, driver)
        # Any other exception leaves the entry for the failure/crash/cancellation hook.
        try:
            end, finished = await driver.drive(engine, run, system)
        except Pause:  # suspended: the trail so far is published already
            _live_trails.pop(flow_run.id, None)
            raise
        _live_trails.pop(flow_run.id, None)
        # Only the execution that reaches the end records: a replay after a suspend does not.
        _record_metrics(definition, started_at, end, driver.trail, finished)
        # Published by the on_completion/on_failure hook, once the run's final state is set.
        _finished_trails[flow_run.id] = (definition, driver.trail, finished)
        if device_id:
            # Idempotent against the device ledger: no task run, safe on any replay.
            await steps.finish_device_run(device_id, run_id)
    if finished.status == "failed":
        raise WorkflowFailedError(
            _failed_state(driver.trail),
            finished.error or "States.Failed",
            finished.cause,
            origin=driver.first_failure,
            compensated=driver.compensated,
            compensations_failed=driver.compensations_failed,
        )
    return finished.output


def _record_metrics(
    definition: WorkflowDefinition,
    started_at: datetime,
    end: RunState,
    trail: list[TrailEntry],
    finished: Finished,
) -> None:
    """Run duration and each state's duration (from the run's own clock, waits included)."""
    instruments = metrics()
    instruments.run_duration.record(
        max((end.timestamp - started_at).total_seconds(), 0.0),
        {"workflow": definition.name, "outcome": finished.status},
    )
    # A state's time: from the previous entry of the same branch (or the run's start) to its own.
    previous: dict[str, datetime] = {}
    for entry in trail:
        branch = entry.path.rpartition("/")[0]
        since = previous.get(branch, started_at)
        instruments.state_duration.record(
            max((entry.at - since).total_seconds(), 0.0),
            {"workflow": definition.name, "state": entry.state, "state_type": entry.type},
        )
        previous[branch] = entry.at


async def _definition(
    run_id: str,
    flow_run: FlowRun,
    workflow: str,
    version: str | None,
    definition_hash: str | None,
    resources: Resources,
) -> tuple[definitions.Prepared, datetime]:
    """The run's pinned definition, prepared, and the run's stable clock origin.

    By hash: read from the content-addressed store (once per process), no Prefect call; the clock
    origin is the run's creation time, which the server keeps the same on every replay. Without a
    hash (or a store that does not have it): read once and journalled with its hash
    (``steps.once``), so a replay gets the same content back, clock origin included.
    """
    activities = resources.registry.names()
    if definition_hash:
        found = definitions.prepared(definition_hash, activities)
        if found is None:
            pinned = await definitions.read_pinned(
                definition_hash, resources.settings.definitions_dir
            )
            if pinned is not None:
                found = definitions.prepare(pinned, definition_hash, activities)
        if found is not None:
            _check_version(workflow, found.definition, version)
            return found, _created_at(flow_run)
    loaded: dict[str, Any] = await steps.once(
        steps.cache_key(run_id, "definition", f"{workflow}@{version or ''}"),
        "definition",
        lambda: steps.load_definition(workflow, version),
    )
    pinned_hash = str(loaded["hash"])
    if definition_hash and pinned_hash != definition_hash:
        raise DefinitionChangedError(
            f"definition {workflow!r} has hash {pinned_hash[:12]}, the run was created for "
            f"{definition_hash[:12]}"
        )
    found = definitions.prepared(pinned_hash, activities)
    if found is None:
        definition = WorkflowDefinition.model_validate(loaded["definition"])
        found = definitions.prepare(definition, pinned_hash, activities)
    _check_version(workflow, found.definition, version)
    return found, datetime.fromisoformat(loaded["startedAt"])


def _check_parameters(
    workflow: object,
    input: object,
    version: object,
    device_id: object,
    definition_hash: object,
) -> None:
    """The parameters' types (they arrive as JSON from the API, unchecked by Prefect here)."""
    if not isinstance(workflow, str) or not workflow:
        raise TypeError(f"parameter 'workflow' must be a non-empty string, got {workflow!r}")
    if input is not None and not isinstance(input, dict):
        raise TypeError(f"parameter 'input' must be an object, got {type(input).__name__}")
    for name, value in (
        ("version", version),
        ("device_id", device_id),
        ("definition_hash", definition_hash),
    ):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"parameter {name!r} must be a string, got {type(value).__name__}")


def _check_version(workflow: str, definition: WorkflowDefinition, version: str | None) -> None:
    if version and definition.version != version:
        raise DefinitionChangedError(
            f"definition {workflow!r} is version {definition.version!r}, not {version!r}"
        )


def _created_at(flow_run: FlowRun) -> datetime:
    moment = flow_run.created or flow_run.expected_start_time
    if moment is None:  # pragma: no cover - runs read from the server always have it
        raise RuntimeError(f"flow run {flow_run.id} has no creation time")
    # A plain datetime: Prefect's DateTime (pendulum) drops the zone when a timedelta is added.
    return datetime.fromtimestamp(moment.timestamp(), UTC)


async def _name_and_tag(
    flow_run: Any, definition: WorkflowDefinition, device_id: str | None
) -> None:
    """Give the run its readable name and tags unless it was created with them."""
    name = run_name(definition.name, device_id, str(flow_run.id))
    wanted = run_tags(definition.name, device_id, definition.version)
    current = list(flow_run.tags or [])
    missing = [tag for tag in wanted if tag not in current]
    named = flow_run.name == name or str(flow_run.name).startswith(f"{definition.name}/")
    if named and not missing:
        return  # named and tagged at creation: no extra API call
    if named:
        name = str(flow_run.name)
    async with get_client() as client:
        await client.update_flow_run(flow_run.id, name=name, tags=[*current, *missing])


def _failed_state(trail: list[TrailEntry]) -> str | None:
    for entry in reversed(trail):
        if entry.outcome.startswith("failed") or entry.type == "fail":
            return entry.path
    return trail[-1].path if trail else None
