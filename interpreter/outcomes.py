"""Apply the executor's outcome to the state that asked for it; say where the run goes next.

One function per kind of state with an action (task, wait, parallel/map, compensation) plus the
end of on-failure compensation. Each returns the updated run and the next state to enter (``None``
when the run ended or stays put). An outcome that does not fit the state raises ``ValueError``:
that is an executor bug, never a problem of the run's data.
"""

from __future__ import annotations

from interpreter.actions import compensations
from interpreter.errors import ExpressionError, RuntimeWorkflowError
from interpreter.models import CompensationState, MapState, ParallelState, TaskState, WaitState
from interpreter.paths import resolve_template
from interpreter.runtime import (
    BranchesFailed,
    BranchesSucceeded,
    CompensationsRan,
    CompletedTask,
    EventReceived,
    EventTimedOut,
    Outcome,
    RunState,
    SystemContext,
    TaskFailed,
    TaskSucceeded,
    WaitElapsed,
)
from interpreter.transitions import (
    TIMEOUT,
    Scope,
    document,
    ended,
    error_name,
    fail_state,
    mismatch,
    store,
    trail,
    transition,
    uncaught,
    visit,
)

__all__ = [
    "after_failure_compensation",
    "apply_branches",
    "apply_compensation",
    "apply_task",
    "apply_wait",
]

Step = tuple[RunState, str | None]


def apply_task(
    scope: Scope,
    run: RunState,
    name: str,
    state: TaskState,
    outcome: Outcome,
    system: SystemContext,
) -> Step:
    """Store the result (and what undoes it), or follow the failure rules."""
    if isinstance(outcome, TaskFailed):
        return fail_state(scope, run, name, state, outcome.error, outcome.cause)
    if not isinstance(outcome, TaskSucceeded):
        raise mismatch(name, "task", outcome)
    run = store(run, state.result_path, name, outcome.result)
    if state.compensate is not None:
        try:
            undo_input = resolve_template(
                state.compensate.input, document(run, name, system), state=name
            )
        except (RuntimeWorkflowError, ExpressionError) as exc:
            cause = f"compensate input: {exc}"
            return fail_state(scope, run, name, state, error_name(exc), cause)
        done = CompletedTask(
            state=name,
            path=scope.path(name),
            visit=visit(run, name),
            activity=state.compensate.activity,
            input=undo_input,
        )
        run = run.model_copy(update={"completed": [*run.completed, done]})
    run = trail(scope, run, name, "task", "succeeded")
    return transition(scope, run, state.next)


def apply_wait(scope: Scope, run: RunState, name: str, state: WaitState, outcome: Outcome) -> Step:
    """A timer elapsed, an event arrived (stored), or the event timed out."""
    event = state.event
    if event is None:
        if not isinstance(outcome, WaitElapsed):
            raise mismatch(name, "timer wait", outcome)
        return transition(scope, trail(scope, run, name, "wait", "elapsed"), state.next)
    if isinstance(outcome, EventReceived):
        run = store(run, event.result_path, name, outcome.payload)
        return transition(scope, trail(scope, run, name, "wait", "event"), state.next)
    if not isinstance(outcome, EventTimedOut):
        raise mismatch(name, "event wait", outcome)
    run = trail(scope, run, name, "wait", "timeout")
    if event.timeout_next is not None:
        return run, event.timeout_next
    cause = f"event {event.name!r} did not arrive in state {name!r}"
    return uncaught(scope, run, name, None, TIMEOUT, cause), None


def apply_branches(
    scope: Scope, run: RunState, name: str, state: ParallelState | MapState, outcome: Outcome
) -> Step:
    """Store the branch results in order, or follow the failure rules."""
    if isinstance(outcome, BranchesFailed):
        return fail_state(scope, run, name, state, outcome.error, outcome.cause)
    if not isinstance(outcome, BranchesSucceeded):
        raise mismatch(name, state.type, outcome)
    run = store(run, state.result_path, name, outcome.results)
    run = trail(scope, run, name, state.type, "succeeded")
    return transition(scope, run, state.next)


def apply_compensation(
    scope: Scope,
    run: RunState,
    name: str,
    state: CompensationState,
    outcome: Outcome,
    system: SystemContext,
) -> Step:
    """After a compensation state's steps ran: go on to ``next``, or fail with its error."""
    if not isinstance(outcome, CompensationsRan):
        raise mismatch(name, "compensation", outcome)
    run = _compensated(scope, run, name, state.states, outcome, system)
    if state.next is not None:
        return run, state.next
    return ended(run, "failed", error=state.error, cause=state.cause), None


def after_failure_compensation(
    scope: Scope, run: RunState, name: str, outcome: CompensationsRan, system: SystemContext
) -> RunState:
    """On-failure compensation ran: the run ends Failed with the error it kept."""
    run = _compensated(scope, run, name, None, outcome, system, "on failure: ")
    error, cause = run.pending_failure or ("States.Runtime", "")
    run = run.model_copy(update={"pending_failure": None})
    return ended(run, "failed", error=error, cause=cause)


def _compensated(
    scope: Scope,
    run: RunState,
    name: str,
    only: list[str] | None,
    outcome: CompensationsRan,
    system: SystemContext,
    reason: str = "",
) -> RunState:
    """Drop the compensated tasks (they are never undone twice) and record the outcome."""
    ran = {(s.path, s.visit) for s in compensations(scope, run, name, only, system).steps}
    remaining = [c for c in run.completed if (c.path, c.visit) not in ran]
    text = f"{reason}compensated {len(ran)}"
    if outcome.failures:
        text += f", {len(outcome.failures)} failed: " + "; ".join(outcome.failures)
    run = run.model_copy(update={"completed": remaining})
    return trail(scope, run, name, "compensation", text)
