"""The generic workflow flow: load, validate and pin a definition, then drive the engine to its end.

Entrypoint for deployments: ``flows/workflow.py:run_workflow``. One flow for every definition; the
definition is data. Step one is a cached task that reads the definition and records its hash: a
replay (after a suspend) gets that pinned copy back, so a run finishes on the definition it
started with even if the file changed while it waited. A run that ends ``failed`` raises
``WorkflowFailedError`` ("<state>: <error>: <cause>"), so Prefect shows it Failed with the
reason; the trail of states taken is published as a table artifact and logged state by state.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from flows import steps
from flows.driver import RunDriver, TransitionListener
from flows.runtime import get_resources
from flows.wake import event_subject
from interpreter.engine import Engine
from interpreter.errors import OrchestrationError
from interpreter.models import WorkflowDefinition
from interpreter.runtime import Finished, SystemContext, TrailEntry
from interpreter.validate import require_valid

__all__ = [
    "FLOW_NAME",
    "WorkflowFailedError",
    "add_transition_listener",
    "remove_transition_listener",
    "run_name",
    "run_tags",
    "run_workflow",
]

FLOW_NAME = "run-workflow"

_listeners: list[TransitionListener] = []


class WorkflowFailedError(OrchestrationError):
    """The run ended ``failed``: the definition's error and cause, and the state where it failed."""

    def __init__(self, state: str | None, error: str, cause: str | None) -> None:
        where = f"{state}: " if state else ""
        super().__init__(f"{where}{error}: {cause or '(no cause given)'}")
        self.state = state
        self.error = error
        self.cause = cause


class DefinitionChangedError(OrchestrationError):
    """The definition found does not have the hash the run was created for."""


def add_transition_listener(listener: TransitionListener) -> None:
    """Call ``listener`` with each trail entry of every run in this process (CLI progress)."""
    _listeners.append(listener)


def remove_transition_listener(listener: TransitionListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def run_name(workflow: str, device_id: str | None, run_id: str) -> str:
    """``<workflow>/<device>``, or ``<workflow>/<first 8 of the run id>`` without a device."""
    return f"{workflow}/{device_id or run_id[:8]}"


def run_tags(workflow: str, device_id: str | None, version: str | None) -> list[str]:
    tags = [f"workflow:{workflow}"]
    if device_id:
        tags.append(f"device:{device_id}")
    if version:
        tags.append(f"version:{version}")
    return tags


@flow(name=FLOW_NAME, persist_result=True, validate_parameters=True)
async def run_workflow(
    workflow: str,
    input: dict[str, Any] | None = None,
    version: str | None = None,
    device_id: str | None = None,
    definition_hash: str | None = None,
) -> Any:
    """Run the workflow ``workflow`` (a name, or a path to a ``.json`` definition) on ``input``."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        raise RuntimeError("run_workflow must run as a Prefect flow run")
    flow_run = context.flow_run
    run_id = str(flow_run.id)
    logger = get_run_logger()
    resources = await get_resources()

    loaded = await steps.load_definition.with_options(
        cache_key_fn=lambda _ctx, _params: steps.cache_key(
            run_id, "definition", f"{workflow}@{version or ''}"
        ),
    )(workflow, version)
    definition = WorkflowDefinition.model_validate(loaded["definition"])
    pinned_hash = str(loaded["hash"])
    if definition_hash and pinned_hash != definition_hash:
        raise DefinitionChangedError(
            f"definition {workflow!r} has hash {pinned_hash[:12]}, the run was created for "
            f"{definition_hash[:12]}"
        )
    if version and definition.version != version:
        raise DefinitionChangedError(
            f"definition {workflow!r} is version {definition.version!r}, not {version!r}"
        )
    require_valid(definition, activities=resources.registry.names())
    await _name_and_tag(flow_run, definition, device_id)

    system = SystemContext(
        run_id=run_id,
        workflow=definition.name,
        version=definition.version,
        definition_hash=pinned_hash,
        device_id=device_id,
        started_at=datetime.fromisoformat(loaded["startedAt"]),
    )
    engine = Engine(definition, definition_hash=pinned_hash)
    driver = RunDriver(
        run_id=run_id,
        device_id=device_id,
        subject=event_subject(device_id, run_id),
        settings=resources.settings,
        logger=logger,
        listeners=list(_listeners),
    )
    run = engine.start(input or {}, system)
    _run, finished = await driver.drive(engine, run, system)
    await _publish_trail(definition, driver.trail, finished)
    if device_id:
        await steps.finish_device_run.with_options(
            cache_key_fn=lambda _ctx, _params: steps.cache_key(run_id, "finish", device_id),
        )(device_id, run_id)
    if finished.status == "failed":
        raise WorkflowFailedError(
            _failed_state(driver.trail), finished.error or "States.Failed", finished.cause
        )
    return finished.output


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


async def _publish_trail(
    definition: WorkflowDefinition, trail: list[TrailEntry], finished: Finished
) -> None:
    rows = [
        {
            "at": entry.at.isoformat(),
            "state": entry.path,
            "type": entry.type,
            "visit": entry.visit,
            "outcome": entry.outcome,
        }
        for entry in trail
    ]
    summary = f"{definition.name} {definition.version}: {finished.status}"
    if finished.status == "failed":
        summary += f" ({finished.error}: {finished.cause})"
    await acreate_table_artifact(table=rows, description=f"Trail of states. {summary}")
