"""Runtime data of one run and the vocabulary between the pure engine and whoever executes it.

The engine (``interpreter.engine.Engine``) is pure: ``next_action(run)`` says what must happen at
the current state, the executor (the Prefect flow, or the dry-run simulator) does it and reports an
``Outcome``, and ``apply(run, outcome)`` returns the next ``RunState``. Same inputs, same outputs:
a replayed flow makes exactly the same decisions. Time only enters through outcomes (``at``) and
``SystemContext.started_at``; the engine never reads a clock.

Keys: ``step_key`` names one visit of one state of one pinned definition (cache key for the task);
``wait_key`` is the same idea restricted to lowercase letters, digits and dashes (Prefect's
suspend/pause key alphabet).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from interpreter.models import Branch, RetryPolicy

__all__ = [
    "Action",
    "BranchesFailed",
    "BranchesSucceeded",
    "CompensationStep",
    "CompensationsRan",
    "CompletedTask",
    "EventReceived",
    "EventTimedOut",
    "ExecuteTask",
    "Finished",
    "Outcome",
    "RunBranches",
    "RunCompensations",
    "RunState",
    "SystemContext",
    "TaskFailed",
    "TaskSucceeded",
    "TrailEntry",
    "WaitElapsed",
    "WaitFor",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SystemContext(_Frozen):
    """What ``$.system`` exposes besides the per-step fields the engine adds."""

    run_id: str
    workflow: str
    version: str
    definition_hash: str
    device_id: str | None = None
    started_at: datetime


class TrailEntry(_Frozen):
    """One state visited: what happened there, for the UI and for ``orchestration test``."""

    state: str
    path: str
    visit: int
    type: str
    outcome: str  # e.g. "succeeded", "failed: DeviceOffline", "-> NextState", "event", "timeout"
    at: datetime


class CompletedTask(_Frozen):
    """A task that completed and can be compensated; input resolved when it completed."""

    state: str
    path: str
    visit: int
    activity: str
    input: dict[str, Any]


class RunState(_Frozen):
    data: dict[str, Any]  # {"input": ..., "state": ...}; $.system is derived, never stored here
    current: str | None
    visits: dict[str, int] = Field(default_factory=dict)
    timestamp: datetime  # the step's stable clock: advanced only by outcomes' ``at``
    trail: list[TrailEntry] = Field(default_factory=list)
    completed: list[CompletedTask] = Field(default_factory=list)
    status: Literal["running", "succeeded", "failed"] = "running"
    output: Any = None
    error: str | None = None
    cause: str | None = None
    pending_failure: tuple[str, str] | None = None  # error kept while on-failure compensation runs


# --- actions: what the executor must do next ---------------------------------------------------


class ExecuteTask(_Frozen):
    kind: Literal["task"] = "task"
    state: str
    path: str
    visit: int
    step_key: str
    activity: str
    input: dict[str, Any]
    retry: RetryPolicy
    timeout_seconds: float | None
    idempotency_key: str


class WaitFor(_Frozen):
    """Wait for a timer (``until``) or an event (``event`` with optional ``until`` deadline)."""

    kind: Literal["wait"] = "wait"
    state: str
    path: str
    visit: int
    wait_key: str
    until: datetime | None  # timer due time, or the event's timeout deadline
    event: str | None = None


class RunBranches(_Frozen):
    """Run ``branches`` (parallel) or one branch per item (map); each with its own start data."""

    kind: Literal["branches"] = "branches"
    state: str
    path: str
    visit: int
    branches: list[Branch]  # one per branch to run (a map repeats its branch per item)
    branch_data: list[dict[str, Any]]  # the starting ``data`` of each branch
    branch_paths: list[str]  # unique path prefix of each branch, for keys
    fail_fast: bool
    max_concurrency: int | None


class CompensationStep(_Frozen):
    state: str
    path: str
    visit: int
    activity: str
    input: dict[str, Any]
    step_key: str
    idempotency_key: str


class RunCompensations(_Frozen):
    kind: Literal["compensations"] = "compensations"
    state: str
    path: str
    visit: int
    steps: list[CompensationStep]  # already in the order to run (reverse completion)


class Finished(_Frozen):
    kind: Literal["finished"] = "finished"
    status: Literal["succeeded", "failed"]
    output: Any = None
    error: str | None = None
    cause: str | None = None


Action = ExecuteTask | WaitFor | RunBranches | RunCompensations | Finished


# --- outcomes: what the executor reports back ---------------------------------------------------


class TaskSucceeded(_Frozen):
    result: Any
    at: datetime


class TaskFailed(_Frozen):
    error: str
    cause: str
    at: datetime


class WaitElapsed(_Frozen):
    at: datetime


class EventReceived(_Frozen):
    payload: Any
    at: datetime


class EventTimedOut(_Frozen):
    at: datetime


class BranchesSucceeded(_Frozen):
    results: list[Any]  # in branch (or item) order
    at: datetime


class BranchesFailed(_Frozen):
    error: str
    cause: str
    at: datetime


class CompensationsRan(_Frozen):
    failures: list[str]  # "state: error" for each compensation that failed (others continued)
    at: datetime


Outcome = (
    TaskSucceeded
    | TaskFailed
    | WaitElapsed
    | EventReceived
    | EventTimedOut
    | BranchesSucceeded
    | BranchesFailed
    | CompensationsRan
)
