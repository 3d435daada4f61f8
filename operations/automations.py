"""Stuck-run and crashed-run alerts as Prefect automations: defined as code, applied idempotently.

Four automations, named ``orchestration: ...``, owned by ``orchestration automations apply``:

- ``stuck-active``: a run of a watched deployment that stays Pending, Running, Retrying or Resuming
  (the run was resumed but nothing picked it up) longer than ``threshold`` (default 50 hours).
- ``stuck-waiting``: a run that stays Paused or Suspended longer than ``paused_threshold``.
- ``crashed``: a run of a watched deployment whose heartbeats stop (its process died: ``kill -9``, a
  lost container, an executor killed mid-run) for the crash window. It changes no state itself: it
  starts a run of the guard deployment (``crash-guard/crash-guard``, ``operations.crash_guard``),
  which marks the run Crashed only if it is still Running/Pending and still silent. A heartbeat
  that races a suspend reopens the trigger's window on a live suspended run; the guard is what
  keeps such a run alive (see ``operations.crash_guard``).
- ``run-crashed``: any run of a watched deployment entering Crashed (marked by the guard, by a
  worker, or by the executor on shutdown) tells the webhook.

Stuck vs waiting. A device workflow legitimately sits Paused/Suspended while it waits for an
event or a timer; it is "stuck" only once it is past its own wait (the timer resumer should
have resumed it).
Prefect automations cannot compare a run against its own due time, so the paused threshold is
``threshold + the longest wait any deployed definition can take`` (computed from the definitions by
``longest_wait``). A paused run older than that is necessarily past its timeout. Waits with no upper
bound (an event wait without ``timeoutSeconds``, a ``timestamp`` wait) are reported by ``apply`` so
the operator either adds a timeout or sets ``--paused-threshold`` explicitly. Every state
change restarts the window, so a run that waits, runs and waits again is judged per wait.

Heartbeat events (``prefect.flow-run.heartbeat``) are deliberately absent from the stuck triggers'
``expect``: a live but stuck run heartbeats, and that must not hide it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from interpreter.models import Branch, ParallelState, WaitState, WorkflowDefinition

__all__ = [
    "AUTOMATION_NAMES",
    "THRESHOLD_FORMS",
    "AlertPlan",
    "AlertSettings",
    "AppliedAutomation",
    "WaitBound",
    "apply_automations",
    "build_automations",
    "check_threshold",
    "definition_files",
    "ensure_webhook_block",
    "list_automations",
    "load_definitions",
    "longest_wait",
    "make_plan",
    "parse_threshold",
    "resolve_deployments",
]

NAME_STUCK_ACTIVE = "orchestration: stuck run (pending or running)"
NAME_STUCK_WAITING = "orchestration: stuck run (paused past its waits)"
NAME_CRASHED = "orchestration: crashed run (heartbeats stopped)"
NAME_RUN_CRASHED = "orchestration: run crashed (alert)"
AUTOMATION_NAMES = (NAME_STUCK_ACTIVE, NAME_STUCK_WAITING, NAME_CRASHED, NAME_RUN_CRASHED)

# Every flow-run state name Prefect emits as ``prefect.flow-run.<name>``: any of them ends a window.
STATE_NAMES = (
    "Scheduled",
    "Late",
    "AwaitingRetry",
    "AwaitingConcurrencySlot",
    "Resuming",
    "Pending",
    "Running",
    "Retrying",
    "Paused",
    "Suspended",
    "Completed",
    "Cached",
    "RolledBack",
    "Failed",
    "Crashed",
    "Cancelling",
    "Cancelled",
    "TimedOut",
)
ACTIVE_STATES = ("Pending", "Running", "Retrying", "Resuming")
WAITING_STATES = ("Paused", "Suspended")
# States after which a run sends no more heartbeats on purpose.
QUIET_STATES: tuple[str, ...] = ("Completed", "Cached", "RolledBack", "Failed", "Crashed")
QUIET_STATES += ("Cancelled", "Paused", "Suspended", "TimedOut")
HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


def _event(state: str) -> str:
    return f"prefect.flow-run.{state}"


MIN_WINDOW_HOURS = 10 / 3600
#: Prefect refuses proactive windows under 10 s.
MIN_WINDOW = timedelta(seconds=10)
THRESHOLD_FORMS = "a number with a unit (90s, 15m, 50h, 2d) or an ISO 8601 duration (PT50H)"
_THRESHOLD = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([smhd])", re.ASCII | re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_threshold(text: str) -> timedelta:
    """A stuck threshold: ``90s``, ``15m``, ``50h``, ``2d`` or ISO 8601 (``PT50H``), at least
    ``MIN_WINDOW``. Raises ``ValueError`` saying what was wrong (``THRESHOLD_FORMS`` says what
    is accepted)."""
    from interpreter.durations import parse_duration
    from interpreter.errors import ExpressionError

    value = text.strip()
    match = _THRESHOLD.fullmatch(value)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        if not math.isfinite(seconds) or seconds > timedelta.max.total_seconds() / 2:
            raise ValueError(f"{value[:40]!r} is too long")
        threshold = timedelta(seconds=seconds)
    elif value[:1].upper() == "P":
        try:
            threshold = parse_duration(value.upper())
        except ExpressionError as exc:
            raise ValueError(str(exc)) from None
    else:
        raise ValueError(f"{value[:40]!r} is not a duration")
    return check_threshold(threshold, shown=value[:40])


def check_threshold(threshold: timedelta, *, shown: str) -> timedelta:
    """``threshold`` if Prefect can hold it as an automation window (at least ``MIN_WINDOW``)."""
    if threshold < MIN_WINDOW:
        raise ValueError(
            f"{shown!r} is {threshold.total_seconds():g} s, below the minimum of "
            f"{MIN_WINDOW.total_seconds():g} s that Prefect accepts for an automation window"
        )
    return threshold


class AlertSettings(BaseSettings):
    """Alert configuration (env prefix ``ORCH_ALERTS_``); the CLI options override it."""

    model_config = SettingsConfigDict(env_prefix="ORCH_ALERTS_", extra="ignore")

    # Prefect refuses proactive windows under 10 s.
    threshold_hours: float = Field(default=50.0, ge=MIN_WINDOW_HOURS)
    paused_threshold_hours: float | None = Field(
        default=None,
        ge=MIN_WINDOW_HOURS,
        description="Default: threshold + the longest wait in the definitions",
    )
    heartbeat_seconds: int = Field(
        default=30, ge=30, description="PREFECT_FLOWS_HEARTBEAT_FREQUENCY of workers and executors"
    )
    missed_heartbeats: float = Field(default=3.0, gt=1)
    webhook_block: str = "orchestration-alerts"
    webhook_url: SecretStr | None = None
    deployments: list[str] = Field(default_factory=lambda: ["run-workflow/device-workflow"])
    #: The deployment of ``operations.crash_guard`` the crashed-run automation runs.
    guard_deployment: str = "crash-guard/crash-guard"
    definitions_dir: Path = Path("definitions")


@dataclass(frozen=True)
class WaitBound:
    """The longest wait found in the definitions, and the waits that have no upper bound."""

    longest: timedelta
    unbounded: tuple[str, ...]


@dataclass(frozen=True)
class AlertPlan:
    """Everything the automations need, resolved: thresholds and ids."""

    threshold: timedelta
    paused_threshold: timedelta
    crash_window: timedelta
    deployment_ids: tuple[UUID, ...]
    webhook_block_id: UUID | None
    guard_deployment_id: UUID


@dataclass(frozen=True)
class AppliedAutomation:
    name: str
    id: UUID
    outcome: Literal["created", "updated", "unchanged"]


def _wait_length(state: WaitState) -> timedelta | None:
    """How long a wait state can last; None when it has no upper bound."""
    if state.seconds is not None:
        return timedelta(seconds=state.seconds)
    if state.event is not None:
        timeout = state.event.timeout_seconds
        return None if timeout is None else timedelta(seconds=timeout)
    if state.duration is not None:
        try:
            from interpreter.durations import parse_duration
        except ImportError:  # the durations module is not there yet: treat as unbounded
            return None
        try:
            return parse_duration(state.duration)
        except Exception:  # a path or a bad literal: not knowable before the run
            return None
    return None  # a timestamp wait: an absolute instant, not bounded by the definition


def _walk_waits(states: dict[str, Any], prefix: str) -> Iterable[tuple[str, WaitState]]:
    for name, state in states.items():
        if isinstance(state, WaitState):
            yield f"{prefix}{name}", state
        elif isinstance(state, ParallelState):
            for index, branch in enumerate(state.branches):
                yield from _walk_branch(branch, f"{prefix}{name}/{index}/")


def _walk_branch(branch: Branch, prefix: str) -> Iterable[tuple[str, WaitState]]:
    return _walk_waits(branch.states, prefix)


def longest_wait(definitions: Iterable[WorkflowDefinition]) -> WaitBound:
    """The longest single wait across the definitions; unbounded waits are named separately."""
    longest = timedelta(0)
    unbounded: list[str] = []
    for definition in definitions:
        for path, state in _walk_waits(dict(definition.states), ""):
            length = _wait_length(state)
            if length is None:
                unbounded.append(f"{definition.name}@{definition.version}:{path}")
            else:
                longest = max(longest, length)
    return WaitBound(longest, tuple(unbounded))


def definition_files(directory: Path) -> list[Path]:
    """The files ``definitions.load`` reads: ``<workflow>.json`` and ``<workflow>/<version>.json``.

    Not the JSON Schema beside them (``schema.json``) nor the ``*.mocks.json`` files of
    ``orchestration test``: they are not definitions, and warning about them every time hides the
    warnings that matter."""
    if not directory.is_dir():
        return []
    candidates = sorted(directory.glob("*.json")) + sorted(directory.glob("*/*.json"))
    return [
        path
        for path in candidates
        if not path.name.endswith(".mocks.json")
        and not (path.parent == directory and path.name == "schema.json")
    ]


def load_definitions(directory: Path) -> tuple[list[WorkflowDefinition], list[str]]:
    """Every definition under ``directory`` (``definition_files``) and the files that did not
    parse."""
    found: list[WorkflowDefinition] = []
    problems: list[str] = []
    for path in definition_files(directory):
        try:
            found.append(WorkflowDefinition.model_validate_json(path.read_bytes()))
        except (OSError, ValidationError) as exc:
            problems.append(f"{path}: {type(exc).__name__}")
    return found, problems


def _webhook_actions(block_id: UUID | None, alert: str, window: timedelta) -> list[Any]:
    from prefect.events.actions import CallWebhook

    if block_id is None:
        return []
    # Rendered by the server's Jinja templating; `| string` because a bare UUID fails to render.
    payload = (
        "{"
        f'"alert": {json.dumps(alert)}, '
        '"flow_run_id": "{{ flow_run.id | string }}", '
        '"flow_run_name": {{ flow_run.name | tojson }}, '
        '"state": {{ flow_run.state.name | tojson }}, '
        f'"window_seconds": {window.total_seconds():g}'
        "}"
    )
    return [CallWebhook(block_document_id=block_id, payload=payload)]


def build_automations(plan: AlertPlan) -> list[Any]:
    """The automations for ``plan`` as ``AutomationCore`` objects (no I/O)."""
    from prefect.events.actions import RunDeployment
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    related = {
        "prefect.resource.role": "deployment",
        "prefect.resource.id": [f"prefect.deployment.{i}" for i in plan.deployment_ids],
    }
    all_states = {_event(s) for s in STATE_NAMES}

    def proactive(after: set[str], expect: set[str], within: timedelta) -> EventTrigger:
        return EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=related,
            after=after,
            expect=expect,
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=within,
        )

    stuck_active = AutomationCore(
        name=NAME_STUCK_ACTIVE,
        description=(
            f"A workflow run stayed in one of {', '.join(ACTIVE_STATES)} for more than "
            f"{plan.threshold.total_seconds():g} s. Applied by `orchestration automations apply`."
        ),
        trigger=proactive({_event(s) for s in ACTIVE_STATES}, all_states, plan.threshold),
        actions=_webhook_actions(plan.webhook_block_id, "stuck-active", plan.threshold),
    )
    stuck_waiting = AutomationCore(
        name=NAME_STUCK_WAITING,
        description=(
            f"A workflow run stayed Paused/Suspended for more than "
            f"{plan.paused_threshold.total_seconds():g} s: past the longest wait its definitions "
            "allow. Applied by `orchestration automations apply`."
        ),
        trigger=proactive({_event(s) for s in WAITING_STATES}, all_states, plan.paused_threshold),
        actions=_webhook_actions(plan.webhook_block_id, "stuck-waiting", plan.paused_threshold),
    )
    window = plan.crash_window.total_seconds()
    crashed = AutomationCore(
        name=NAME_CRASHED,
        description=(
            f"No heartbeat from a workflow run for {window:g} s: its process may have died. "
            "Runs the crash guard, which marks the run Crashed only if it is still Running or "
            "Pending and silent (a heartbeat racing a suspend reopens this window on a live "
            "suspended run). Applied by `orchestration automations apply`."
        ),
        trigger=proactive(
            {HEARTBEAT_EVENT},
            {HEARTBEAT_EVENT, *(_event(s) for s in QUIET_STATES)},
            plan.crash_window,
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=plan.guard_deployment_id,
                # Rendered by the server when the trigger fires; `| string`: a bare UUID fails.
                parameters={"flow_run_id": "{{ flow_run.id | string }}", "window_seconds": window},
            )
        ],
    )
    run_crashed = AutomationCore(
        name=NAME_RUN_CRASHED,
        description=(
            "A workflow run entered Crashed (the crash guard, a worker or the executor marked "
            "it). Applied by `orchestration automations apply`."
        ),
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related=related,
            expect={_event("Crashed")},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=_webhook_actions(plan.webhook_block_id, "crashed", plan.crash_window),
    )
    return [stuck_active, stuck_waiting, crashed, run_crashed]


async def resolve_deployments(client: Any, names: Sequence[str]) -> tuple[UUID, ...]:
    """Deployment ids for ``flow-name/deployment-name`` names; a missing one raises LookupError."""
    from prefect.exceptions import ObjectNotFound

    ids: list[UUID] = []
    missing: list[str] = []
    for name in names:
        try:
            deployment = await client.read_deployment_by_name(name)
        except ObjectNotFound:
            missing.append(name)
            continue
        ids.append(deployment.id)
    if missing:
        raise LookupError(
            f"deployment(s) not found: {', '.join(missing)}; run `prefect deploy --all` first"
        )
    return tuple(ids)


async def ensure_webhook_block(name: str, url: SecretStr | None) -> UUID | None:
    """Save (overwrite) the Webhook block when a URL is given, else find it; None if absent."""
    from prefect.blocks.webhook import Webhook
    from prefect.exceptions import ObjectNotFound
    from prefect.types import SecretDict

    if url is not None:
        block = Webhook(
            method="POST",
            url=url,
            headers=SecretDict({"Content-Type": "application/json"}),
        )
        block_id: UUID = await block.save(name, overwrite=True)
        return block_id
    try:
        existing = await Webhook.load(name)
    except (ValueError, ObjectNotFound):
        return None
    found: UUID | None = existing._block_document_id
    return found


def _normalized(value: Any) -> Any:
    # Triggers get a fresh random ``id`` each time one is built, and ``after``/``expect`` are sets
    # that serialize in any order: neither is part of what the automation means.
    if isinstance(value, dict):
        return {k: _normalized(v) for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return sorted((_normalized(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


def _comparable(automation: Any) -> Any:
    data = automation.model_dump(mode="json", exclude={"id", "owner_resource"})
    return _normalized(json.loads(json.dumps(data, sort_keys=True, default=str)))


async def apply_automations(client: Any, plan: AlertPlan) -> list[AppliedAutomation]:
    """Create or update the automations by name; running it twice changes nothing."""
    from prefect.events.schemas.automations import AutomationCore

    applied: list[AppliedAutomation] = []
    for wanted in build_automations(plan):
        existing = await client.read_automations_by_name(wanted.name)
        if not existing:
            new_id: UUID = await client.create_automation(wanted)
            applied.append(AppliedAutomation(wanted.name, new_id, "created"))
            continue
        keep, *duplicates = existing
        for duplicate in duplicates:  # a concurrent apply made two: keep one
            await client.delete_automation(duplicate.id)
        current = AutomationCore(**keep.model_dump(exclude={"id", "owner_resource"}))
        if _comparable(current) == _comparable(wanted):
            applied.append(AppliedAutomation(wanted.name, keep.id, "unchanged"))
        else:
            await client.update_automation(keep.id, wanted)
            applied.append(AppliedAutomation(wanted.name, keep.id, "updated"))
    return applied


async def list_automations(client: Any) -> list[dict[str, Any]]:
    """The orchestration automations on the server: name, id, enabled, window."""
    rows: list[dict[str, Any]] = []
    for name in AUTOMATION_NAMES:
        for automation in await client.read_automations_by_name(name):
            within = getattr(automation.trigger, "within", None)
            rows.append(
                {
                    "name": automation.name,
                    "id": str(automation.id),
                    "enabled": automation.enabled,
                    "window_seconds": within.total_seconds() if within is not None else None,
                    "actions": [action.type for action in automation.actions],
                }
            )
    return rows


async def make_plan(client: Any, settings: AlertSettings) -> tuple[AlertPlan, list[str]]:
    """Resolve ``settings`` against the server and the definitions; also return warnings."""
    warnings: list[str] = []
    threshold = timedelta(hours=settings.threshold_hours)
    if settings.paused_threshold_hours is not None:
        paused = timedelta(hours=settings.paused_threshold_hours)
    else:
        definitions, broken = load_definitions(settings.definitions_dir)
        warnings.extend(f"definition not read: {problem}" for problem in broken)
        bound = longest_wait(definitions)
        paused = threshold + bound.longest
        if bound.unbounded:
            warnings.append(
                "waits with no upper bound (a paused run past the paused threshold is reported "
                f"as stuck): {', '.join(bound.unbounded)}"
            )
    block_id = await ensure_webhook_block(settings.webhook_block, settings.webhook_url)
    if block_id is None:
        warnings.append(
            f"no Webhook block {settings.webhook_block!r} and no --webhook-url: alerts notify "
            "nobody (crashed runs are still marked Crashed)"
        )
    (guard_id,) = await resolve_deployments(client, [settings.guard_deployment])
    plan = AlertPlan(
        threshold=threshold,
        paused_threshold=paused,
        crash_window=timedelta(seconds=settings.heartbeat_seconds * settings.missed_heartbeats),
        deployment_ids=await resolve_deployments(client, settings.deployments),
        webhook_block_id=block_id,
        guard_deployment_id=guard_id,
    )
    return plan, warnings
