"""The dry run behind ``orchestration test``: drive the engine with mocked outcomes, no I/O.

Mocks (JSON, camelCase)::

    {"input": {...}, "deviceId": "dev-1", "runId": "simulation",
     "startedAt": "2025-01-01T00:00:00Z",
     "states": {"<state path or name>": [{"output": ...} | {"error": "Name", "cause": "...",
                                          "retryable": true}, ...]},
     "default": {"output": null},
     "events": {"<event name>": [payload, ...]},
     "timeouts": ["<event name>", ...]}

- Each attempt of a task takes the next entry of its list: first the list under the task's path
  (``Par/0/Ping``), else under its name (``Ping``), else ``default``; a task with none stops the
  simulation with an error naming the state. When a list runs out its last entry is reused, so one
  entry answers every visit of a state in a loop or map. The retry policy is applied here (through
  ``interpreter.retry``), the clock advancing by the un-jittered delays instead of sleeping.
- A compensation step takes entries under ``<path or name>#compensate``; without any it succeeds.
- A wait for an event takes the next payload listed for it (payloads are consumed, not reused). An
  event with no payload left, or named in ``timeouts``, times out if the wait has a timeout; a wait
  without one stops the simulation with status ``waiting``.
- Timers elapse at once: the simulated clock jumps to their due time.
- Parallel and map branches are simulated one after the other in index order (``failFast`` stops at
  the first failed branch; ``waitAll`` runs the rest, then fails with the first failure).
- At most ``max_steps`` actions (branches included) are executed, so a loop cannot hang.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from interpreter.engine import Engine
from interpreter.keys import compensation_path
from interpreter.loader import definition_hash as hash_definition
from interpreter.models import WorkflowDefinition
from interpreter.retry import retry_delays, should_retry
from interpreter.runtime import (
    BranchesFailed,
    BranchesSucceeded,
    CompensationsRan,
    EventReceived,
    EventTimedOut,
    ExecuteTask,
    Finished,
    Outcome,
    RunBranches,
    RunCompensations,
    RunState,
    SystemContext,
    TaskFailed,
    TaskSucceeded,
    TrailEntry,
    WaitElapsed,
    WaitFor,
)

__all__ = [
    "DEFAULT_STARTED_AT",
    "MAX_STEPS",
    "ActivityCall",
    "MockResult",
    "Mocks",
    "SimulationResult",
    "simulate",
]

MAX_STEPS = 10_000
DEFAULT_STARTED_AT = datetime(2025, 1, 1, tzinfo=UTC)

Status = Literal["succeeded", "failed", "waiting", "error"]


class _Model(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )


class MockResult(_Model):
    """One attempt's outcome: ``output``, or ``error`` (with ``cause``, ``retryable``)."""

    output: Any = None
    error: str | None = None
    cause: str = ""
    retryable: bool = True

    @model_validator(mode="after")
    def _output_or_error(self) -> MockResult:
        if self.error is not None and "output" in self.model_fields_set:
            raise ValueError("give either 'output' or 'error', not both")
        return self


class Mocks(_Model):
    input: Any = Field(default_factory=dict)
    device_id: str | None = None
    run_id: str = "simulation"
    started_at: datetime = DEFAULT_STARTED_AT
    states: dict[str, list[MockResult]] = Field(default_factory=dict)
    default: MockResult | None = None
    events: dict[str, list[Any]] = Field(default_factory=dict)
    timeouts: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class ActivityCall:
    """One attempt of an activity (or compensation) the simulated run made."""

    kind: Literal["task", "compensation"]
    state: str
    path: str
    visit: int
    attempt: int
    activity: str
    input: dict[str, Any]
    idempotency_key: str
    outcome: str  # "succeeded" or "failed: <error>"


@dataclass(frozen=True)
class SimulationResult:
    status: Status
    trail: list[TrailEntry]  # every state visited, branches included, in execution order
    data: dict[str, Any]
    output: Any = None
    error: str | None = None
    cause: str | None = None
    calls: list[ActivityCall] = field(default_factory=list)
    message: str | None = None  # why a simulation stopped early (waiting, missing mock, limit)


class _Stop(Exception):  # noqa: N818  # control flow inside the simulator, never escapes
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status: Status = status
        self.message = message


@dataclass
class _Branch:
    finished: Finished
    clock: datetime


class _Simulator:
    def __init__(self, mocks: Mocks, system: SystemContext, max_steps: int) -> None:
        self.mocks = mocks
        self.system = system
        self.max_steps = max_steps
        self.steps = 0
        self.used: dict[str, int] = {}
        self.events = {name: list(payloads) for name, payloads in mocks.events.items()}
        self.calls: list[ActivityCall] = []
        self.trail: list[TrailEntry] = []
        self.top: RunState | None = None  # the top-level run as far as it got

    def drive(
        self, engine: Engine, run: RunState, *, top: bool = False
    ) -> tuple[RunState, Finished]:
        """Run ``run`` to its end; raise ``_Stop`` when it cannot go on."""
        self.trail.extend(run.trail)
        if top:
            self.top = run
        while True:
            action = engine.next_action(run, self.system)
            if isinstance(action, Finished):
                return run, action
            self.steps += 1
            if self.steps > self.max_steps:
                raise _Stop("error", f"stopped after {self.max_steps} steps (a loop?)")
            if isinstance(action, ExecuteTask):
                outcome: Outcome = self._task(action, run.timestamp)
            elif isinstance(action, WaitFor):
                outcome = self._wait(action, run.timestamp)
            elif isinstance(action, RunBranches):
                outcome = self._branches(engine, action, run.timestamp)
            else:
                outcome = self._compensations(action, run.timestamp)
            before = len(run.trail)
            run = engine.apply(run, outcome, self.system)
            self.trail.extend(run.trail[before:])
            if top:
                self.top = run

    def _take(self, path: str, name: str) -> MockResult | None:
        for key in (path, name):
            entries = self.mocks.states.get(key)
            if entries:
                used = self.used.get(key, 0)
                self.used[key] = used + 1
                return entries[min(used, len(entries) - 1)]
        return None

    def _task(self, action: ExecuteTask, clock: datetime) -> Outcome:
        delays = retry_delays(action.retry)
        attempt = 0
        while True:
            attempt += 1
            mock = self._take(action.path, action.state) or self.mocks.default
            if mock is None:
                raise _Stop(
                    "error",
                    f"no mock for state {action.state!r} (path {action.path!r}, activity "
                    f'{action.activity!r}): add it under "states" in the mocks file',
                )
            outcome = "succeeded" if mock.error is None else f"failed: {mock.error}"
            self.calls.append(
                ActivityCall(
                    "task",
                    action.state,
                    action.path,
                    action.visit,
                    attempt,
                    action.activity,
                    action.input,
                    action.idempotency_key,
                    outcome,
                )
            )
            if mock.error is None:
                return TaskSucceeded(result=mock.output, at=clock)
            if not should_retry(action.retry, mock.error, mock.retryable, attempt):
                return TaskFailed(error=mock.error, cause=mock.cause, at=clock)
            clock += timedelta(seconds=delays[attempt - 1])

    def _wait(self, action: WaitFor, clock: datetime) -> Outcome:
        if action.event is None:
            return WaitElapsed(at=max(clock, action.until or clock))
        pending = self.events.get(action.event, [])
        if pending and action.event not in self.mocks.timeouts:
            return EventReceived(payload=pending.pop(0), at=clock)
        if action.until is not None:
            return EventTimedOut(at=max(clock, action.until))
        raise _Stop(
            "waiting",
            f"waiting for event {action.event!r} in state {action.state!r} "
            "(no payload left in the mocks and the wait has no timeout)",
        )

    def _branches(self, engine: Engine, action: RunBranches, clock: datetime) -> Outcome:
        results: list[Any] = []
        failure: Finished | None = None
        latest = clock
        for index in range(len(action.branches)):
            branch_engine = engine.branch(action, index)
            run = branch_engine.start_branch(action.branch_data[index], clock, self.system)
            run, finished = self.drive(branch_engine, run)
            latest = max(latest, run.timestamp)
            if finished.status == "succeeded":
                results.append(finished.output)
                continue
            failure = failure or finished
            if action.fail_fast:
                break
        if failure is not None:
            return BranchesFailed(
                error=failure.error or "States.BranchFailed", cause=failure.cause or "", at=latest
            )
        return BranchesSucceeded(results=results, at=latest)

    def _compensations(self, action: RunCompensations, clock: datetime) -> Outcome:
        failures: list[str] = []
        for step in action.steps:
            mock = self._take(compensation_path(step.path), compensation_path(step.state))
            error = None if mock is None else mock.error
            self.calls.append(
                ActivityCall(
                    "compensation",
                    step.state,
                    step.path,
                    step.visit,
                    1,
                    step.activity,
                    step.input,
                    step.idempotency_key,
                    "succeeded" if error is None else f"failed: {error}",
                )
            )
            if error is not None:
                failures.append(f"{step.state}: {error}")
        return CompensationsRan(failures=failures, at=clock)


def simulate(
    definition: WorkflowDefinition,
    mocks: Mocks,
    *,
    definition_hash: str | None = None,
    max_steps: int = MAX_STEPS,
) -> SimulationResult:
    """Run ``definition`` against ``mocks`` to the end (or until it cannot go on)."""
    digest = definition_hash or hash_definition(definition)
    system = SystemContext(
        run_id=mocks.run_id,
        workflow=definition.name,
        version=definition.version,
        definition_hash=digest,
        device_id=mocks.device_id,
        started_at=mocks.started_at,
    )
    engine = Engine(definition, definition_hash=digest)
    simulator = _Simulator(mocks, system, max_steps)
    run = engine.start(mocks.input, system)
    try:
        run, finished = simulator.drive(engine, run, top=True)
    except _Stop as stop:
        return SimulationResult(
            status=stop.status,
            trail=simulator.trail,
            data=(simulator.top or run).data,
            calls=simulator.calls,
            message=stop.message,
        )
    return SimulationResult(
        status=finished.status,
        trail=simulator.trail,
        data=run.data,
        output=finished.output,
        error=finished.error,
        cause=finished.cause,
        calls=simulator.calls,
    )
