"""Drives the pure engine inside a Prefect flow run: actions in, tasks and waits, outcomes out.

``RunDriver.drive(engine, run, system)`` loops ``next_action`` -> execute -> ``apply`` until the
engine says ``Finished``. Every clock reading and side effect is journalled (``flows.steps``):
an activity's outcome by its task, an event claim or a short sleep by ``steps.once``, so a replay
from the top (after a suspend) reads the recorded outcomes, walks the same path with the same
keys and creates no task run for what it already did. The only task runs of a run are its
activities (a final failure ends its task run Failed, with the error and cause).

Waits: a timer due within ``short_wait_seconds`` sleeps in place; longer timers and every event
wait record themselves in the wait store and suspend the run (no process is held), with a state
message and a log line saying what they wait for and until when, and the trail so far published.
The resumer (``flows.timers``), the event router or an operator (the UI's Resume form, Prefect's
REST resume) resumes it with a ``WakeInput``; the replay reaches the same ``suspend`` call, which
returns that input at once, and ``flows.waking`` does what it says (a resume the wait cannot use
is said in the state message, and the run waits again at the same wait). Branches (parallel,
map) run as asyncio tasks in one ``TaskGroup``; when one branch suspends, the others are
cancelled and the whole run suspends, and on resume every branch replays from the journal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from prefect.client.schemas.objects import State
from prefect.exceptions import Pause

from flows import steps, trail
from flows.runtime import FlowSettings
from flows.suspension import suspend, waiting_message
from flows.wake import WakeInput, wake_description, wake_schema
from flows.waking import Waking, received
from interpreter.engine import Engine
from interpreter.errors import OrchestrationError
from interpreter.models import RetryPolicy
from interpreter.runtime import (
    Action,
    BranchesFailed,
    BranchesSucceeded,
    CompensationsRan,
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
from operations.observability import log_context

__all__ = ["RunDriver", "TaskRunNotCompletedError", "TransitionListener"]

#: Called with every trail entry as the run takes it (replays report them again).
TransitionListener = Callable[[TrailEntry], None]

_E = TypeVar("_E", bound=BaseException)

#: Compensations run once each: a failing compensation is recorded and the saga goes on.
COMPENSATION_POLICY = RetryPolicy(max_attempts=1)


class TaskRunNotCompletedError(OrchestrationError):
    """An activity's task run ended without a journalled outcome: the machinery broke.

    The task journals an activity's final failure before it ends Failed, so a Failed task run
    with a journal entry is a workflow outcome, not this. Without one no outcome was recorded,
    so the run fails here rather than make one up with the flow's clock (a replay could not
    reproduce it).
    """

    def __init__(self, path: str, state_name: str, message: str) -> None:
        super().__init__(
            f"the task run of state {path!r} ended {state_name} ({message}), not Completed; "
            "no outcome was recorded, so the run stops here"
        )
        self.path = path
        self.state_name = state_name


class _BranchFailedError(Exception):
    """A fail-fast branch failed: cancels its siblings."""

    def __init__(self, index: int, finished: Finished) -> None:
        super().__init__(f"branch {index} failed")
        self.index = index
        self.finished = finished


@dataclass
class RunDriver:
    """Executes the engine's actions for one flow run."""

    run_id: str
    device_id: str | None
    subject: str
    settings: FlowSettings
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    listeners: list[TransitionListener] = field(default_factory=list)
    trail: list[TrailEntry] = field(default_factory=list)
    #: The first failure of the run (state path, error, cause): where a failed run went wrong.
    first_failure: tuple[str, str, str] | None = None
    #: Compensation steps run, and how many of them failed.
    compensated: int = 0
    compensations_failed: int = 0
    _suspend_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _waking: Waking = field(init=False)

    def __post_init__(self) -> None:
        self._waking = Waking(
            self.run_id, self.subject, self.settings.short_wait_seconds, self.logger
        )

    _suspended: bool = False
    #: True while this execution replays what an earlier one of the run did (after a suspend or
    #: a heal): its transitions were logged to Prefect then, so they are logged locally only.
    replaying: bool = False

    async def drive(
        self, engine: Engine, run: RunState, system: SystemContext
    ) -> tuple[RunState, Finished]:
        """Run the engine to its end; return the last state and the ``Finished`` action."""
        fresh = [0]
        steps.fresh_steps.set(fresh)
        self._report(run.trail)
        while True:
            action: Action = engine.next_action(run, system)
            if isinstance(action, Finished):
                return run, action
            outcome = await self._execute(engine, action, run, system)
            if fresh[0]:
                self.replaying = False
            seen = len(run.trail)
            run = engine.apply(run, outcome, system)
            self._report(run.trail[seen:])

    def _report(self, entries: list[TrailEntry]) -> None:
        for entry in entries:
            notes = self._waking.notes
            note = notes.get((entry.path, entry.visit)) if entry.type == "wait" else None
            if note is not None:
                entry = entry.model_copy(update={"outcome": f"{entry.outcome} ({note})"})
            self.trail.append(entry)
            self.logger.info(
                "%s [%s #%d] %s",
                entry.path,
                entry.type,
                entry.visit,
                entry.outcome,
                extra={
                    "send_to_api": not self.replaying,
                    "orch_state": entry.state,
                    "orch_path": entry.path,
                    "orch_visit": entry.visit,
                    "orch_type": entry.type,
                    "orch_outcome": entry.outcome,
                },
            )
            for listener in self.listeners:
                listener(entry)

    async def _execute(
        self, engine: Engine, action: Action, run: RunState, system: SystemContext
    ) -> Outcome:
        outcome: Outcome
        if isinstance(action, ExecuteTask):
            with log_context(state_name=action.path):
                outcome = await self._task(action)
            if isinstance(outcome, TaskFailed):
                self._failed(action.path, outcome.error, outcome.cause)
            return outcome
        if isinstance(action, WaitFor):
            with log_context(state_name=action.path):
                return await self._wait(action)
        if isinstance(action, RunBranches):
            with log_context(state_name=action.path):
                outcome = await self._branches(engine, action, run, system)
            if isinstance(outcome, BranchesFailed):
                self._failed(action.path, outcome.error, outcome.cause)
            return outcome
        if isinstance(action, RunCompensations):
            return await self._compensations(action, run)
        raise TypeError(f"unknown action {action!r}")  # pragma: no cover - exhaustive union

    def _failed(self, path: str, error: str, cause: str | None) -> None:
        if self.first_failure is None:
            self.first_failure = (path, error, cause or "")

    # --- tasks ---------------------------------------------------------------------------------

    async def _task(self, action: ExecuteTask) -> TaskSucceeded | TaskFailed:
        timeout = action.timeout_seconds or self.settings.default_task_timeout_seconds
        result = await self._call_activity(
            step_key=action.step_key,
            state=action.state,
            path=action.path,
            visit=action.visit,
            activity=action.activity,
            input=action.input,
            policy=action.retry,
            timeout_seconds=timeout,
            idempotency_key=action.idempotency_key,
        )
        at = datetime.fromisoformat(result["at"])
        if result["ok"]:
            return TaskSucceeded(result=result["result"], at=at)
        return TaskFailed(error=result["error"], cause=result["cause"], at=at)

    async def _call_activity(
        self,
        *,
        step_key: str,
        state: str,
        path: str,
        visit: int,
        activity: str,
        input: dict[str, Any],
        policy: RetryPolicy,
        timeout_seconds: float | None,
        idempotency_key: str,
        label: str | None = None,
    ) -> dict[str, Any]:
        key = steps.cache_key(self.run_id, "task", step_key)
        found, journalled = await steps.recorded(key)
        if found:  # a replay: no task run, and a failed step is never run again
            outcome: dict[str, Any] = journalled
            return outcome
        configured = steps.activity_task(policy=policy)
        task_state: State[Any] = await configured(
            activity,
            input,
            policy=policy.model_dump(mode="json"),
            timeout_seconds=timeout_seconds,
            idempotency_key=idempotency_key,
            run_id=self.run_id,
            device_id=self.device_id,
            state=state,
            step_cache_key=key,
            label=label or steps.step_label(path, visit),
            return_state=True,
        )
        if task_state.is_completed():
            result: dict[str, Any] = await task_state.aresult()
            return result
        found, journalled = await steps.recorded(key)
        if found:  # the final failure: the task run ended Failed after journalling it
            failure: dict[str, Any] = journalled
            return failure
        raise TaskRunNotCompletedError(
            path, str(task_state.name or task_state.type.value), task_state.message or "no message"
        )

    # --- waits ---------------------------------------------------------------------------------

    async def _wait(self, action: WaitFor) -> Outcome:
        key = action.wait_key
        until = action.until
        event = action.event
        if event is None:
            if until is None:
                raise ValueError(f"wait {action.path!r} has neither a timer nor an event")
            due = until.isoformat()
            short = await steps.once(
                steps.cache_key(self.run_id, "sleep", key),
                "sleep",
                lambda: steps.sleep_if_short(due, self.settings.short_wait_seconds),
            )
            if short["slept"]:
                return WaitElapsed(at=until)
        else:
            # Register first, then look in the store: an event recorded after the registration
            # is seen by the router (it finds the wait and resumes us); one recorded before it
            # is found by this claim. One side always sees the other.
            await steps.register_wait(
                self.run_id, key, self.subject, event, until.isoformat() if until else None
            )
            claimed = await self._waking.claim(
                steps.cache_key(self.run_id, "claim", key), event, key
            )
            if claimed is not None:
                await steps.resolve_wait(self.run_id, key, "event")
                return received(claimed)
        # Suspend until a resume says what to do; one the run cannot use is said (state message
        # and a warning) and the run waits again at the same wait. Prefect refuses a pause key
        # twice, so the next suspend is ``<key>-r<n>``: deterministic, so a replay walks
        # through the same stored inputs and journalled decisions.
        attempt = 0
        unused: str | None = None
        while True:
            suspend_key = key if attempt == 0 else f"{key}-r{attempt}"
            wake = await self._suspend(suspend_key, action, unused)
            taken = await self._waking.take(wake, action, suspend_key)
            if not isinstance(taken, str):
                return taken
            unused = taken
            attempt += 1
            await self._waking.say_unused(action.path, unused, f"{key}-r{attempt}")

    async def _suspend(self, key: str, action: WaitFor, unused: str | None) -> WakeInput:
        """Register the wait, then suspend the run until the resumer, the router or an operator
        resumes it. ``unused``: why the previous resume of this wait was not used."""
        until = action.until
        await steps.register_wait(
            self.run_id, key, self.subject, action.event, until.isoformat() if until else None
        )
        message = waiting_message(action.path, action.event, self.subject, until)
        schema = wake_schema(action.event, until is not None)
        description = wake_description(message, action.event, until)
        if unused is not None:
            message = f"{message} (last resume not used: {unused})"

        async def publish_trail_so_far() -> None:
            rows = trail.trail_rows(self.trail)
            rows.append(trail.waiting_row(action.path, action.visit, message))
            await trail.publish_trail(rows, f"{trail.SO_FAR_DESCRIPTION} {message}")

        async with self._suspend_lock:
            if self._suspended:
                # Another branch already suspended the run: wait to be cancelled with it.
                await asyncio.Event().wait()
            try:
                wake = await suspend(
                    key,
                    message,
                    logger=self.logger,
                    schema=schema,
                    description=description,
                    on_suspended=publish_trail_so_far,
                )
            except Pause:
                self._suspended = True
                raise
        await steps.resolve_wait(self.run_id, key, wake.how)
        return wake

    # --- branches ------------------------------------------------------------------------------

    async def _branches(
        self, engine: Engine, action: RunBranches, run: RunState, system: SystemContext
    ) -> BranchesSucceeded | BranchesFailed:
        count = len(action.branches)
        limit = asyncio.Semaphore(action.max_concurrency or count or 1)
        finished: dict[int, tuple[RunState, Finished]] = {}

        async def one(index: int) -> None:
            async with limit:
                branch_engine = engine.branch(action, index)
                start = branch_engine.start_branch(action.branch_data[index], run.timestamp, system)
                end, done = await self.drive(branch_engine, start, system)
                finished[index] = (end, done)
                if done.status == "failed" and action.fail_fast:
                    raise _BranchFailedError(index, done)

        try:
            async with asyncio.TaskGroup() as group:
                for index in range(count):
                    group.create_task(one(index))
        except BaseExceptionGroup as group_error:
            pauses = group_error.subgroup(Pause)
            if pauses is not None:
                raise _first(pauses) from None
            broken = group_error.subgroup(TaskRunNotCompletedError)
            if broken is not None:
                raise _first(broken) from None  # its message, not "unhandled errors in a group"
            _fail_fast, rest = group_error.split(_BranchFailedError)
            if rest is not None:
                raise
        failures = sorted(
            (index, end, done) for index, (end, done) in finished.items() if done.status == "failed"
        )
        at = max((end.timestamp for end, _ in finished.values()), default=run.timestamp)
        if failures:
            index, _end, done = failures[0]
            return BranchesFailed(
                error=done.error or "States.BranchFailed",
                cause=f"branch {index}: {done.cause or done.error or 'failed'}",
                at=at,
            )
        return BranchesSucceeded(results=[finished[i][1].output for i in range(count)], at=at)

    # --- compensation --------------------------------------------------------------------------

    async def _compensations(self, action: RunCompensations, run: RunState) -> CompensationsRan:
        failures: list[str] = []
        at = run.timestamp
        for step in action.steps:
            result = await self._call_activity(
                step_key=step.step_key,
                state=step.state,
                path=step.path,
                visit=step.visit,
                activity=step.activity,
                input=step.input,
                policy=COMPENSATION_POLICY,
                timeout_seconds=self.settings.default_task_timeout_seconds,
                idempotency_key=step.idempotency_key,
                # Its own name: the undone step's path alone would look like a second run of it.
                label=f"compensate {steps.step_label(step.path, step.visit)}",
            )
            at = max(at, datetime.fromisoformat(result["at"]))
            self.compensated += 1
            if not result["ok"]:
                self.compensations_failed += 1
                failures.append(f"{step.state}: {result['error']}")
                self.logger.warning(
                    "compensation of %s failed: %s: %s (continuing)",
                    step.path,
                    result["error"],
                    result["cause"],
                )
        return CompensationsRan(failures=failures, at=at)


def _first(group: BaseExceptionGroup[_E]) -> _E:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            inner: _E = _first(exc)
            return inner
        return exc
    raise RuntimeError("empty exception group")  # pragma: no cover - subgroup is never empty
