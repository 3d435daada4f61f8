"""The pure decision engine: what happens at the current state, and where an outcome leads.

``Engine(definition, definition_hash=...)`` compiles every path, condition and time literal once.
Then, for one run (``RunState``): ``start`` enters the start state, ``next_action`` says what the
executor must do there (``ExecuteTask``, ``WaitFor``, ``RunBranches``, ``RunCompensations`` or
``Finished``) and ``apply`` takes the executor's outcome and returns the next ``RunState``. Nothing
here reads a clock, the environment or randomness: the same definition, input and outcomes give the
same states, actions and keys, which is what lets a suspended Prefect run replay from the top.

Choice, succeed and fail never reach the executor: entering a state passes through them (each
recorded in the trail) until it reaches a state with work to do, or the end.

A state whose action cannot be built (its input names a path that matches nothing, a wait's
timestamp is not a timestamp, a map's items are not an array) fails *when it is entered*: the engine
records the failure (``States.PathNotFound`` / ``States.InvalidValue``) and follows the state's
``catch`` rules or the uncaught-failure rule, so ``next_action`` only ever sees states whose action
can be built, and the executor never holds a stale run.

Uncaught failure: with ``configuration.onFailure == "compensate"`` and compensable completed tasks,
the run keeps the error in ``pending_failure`` and ``next_action`` yields ``RunCompensations`` of
all of them (reverse completion order); their outcome ends the run Failed with the original error.
Otherwise the run ends Failed at once. A ``fail`` state ends the run without on-failure compensation
(route through a ``compensation`` state to undo work first).

Branches (parallel, map) run on branch engines (``engine.branch(action, index)``) with the branch
path as key prefix. A branch starts from a copy of the parent's ``$.state`` (a map adds the item at
``$.state.<itemName>`` and its index at ``$.state.index``); its result is its ``succeed`` output
mapping, else the ``$.state`` entries the branch added or changed. Compensation is per run: a
branch compensates its own tasks when it fails; the parent never sees them.

The work is split by responsibility: ``interpreter.actions`` builds the action of a state,
``interpreter.outcomes`` applies an outcome to it, ``interpreter.transitions`` holds the run-state
updates both share (trail, storing results, catch and the uncaught-failure rule); this module
enters states (passing through choice, succeed and fail) and dispatches.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any, Final

from interpreter.actions import build_action, compensations
from interpreter.compiled import Compiled, compile_states
from interpreter.errors import ExpressionError, RuntimeWorkflowError
from interpreter.limits import MAX_RUN_STEPS
from interpreter.models import (
    Branch,
    ChoiceState,
    CompensationState,
    FailState,
    MapState,
    ParallelState,
    SucceedState,
    TaskState,
    WaitState,
    WorkflowDefinition,
)
from interpreter.outcomes import (
    after_failure_compensation,
    apply_branches,
    apply_compensation,
    apply_task,
    apply_wait,
)
from interpreter.paths import resolve_template
from interpreter.runtime import (
    Action,
    BranchesSucceeded,
    CompensationsRan,
    Finished,
    Outcome,
    RunBranches,
    RunCompensations,
    RunState,
    SystemContext,
)
from interpreter.transitions import (
    INVALID_VALUE,
    NO_CHOICE_MATCHED,
    STEP_LIMIT,
    TIMEOUT,
    TRANSITION_LIMIT,
    Actionable,
    Scope,
    document,
    ended,
    error_name,
    fail_state,
    mismatch,
    trail,
    uncaught,
)

__all__ = [
    "INVALID_VALUE",
    "NO_CHOICE_MATCHED",
    "STEP_LIMIT",
    "TIMEOUT",
    "TRANSITION_LIMIT",
    "Engine",
]

# Choice states pass through without an outcome; a cycle of choices that never reaches a state
# with work to do would spin for ever, so one advance takes at most this many pass-through steps.
MAX_PASS_THROUGH: Final = 1_000

Step = tuple[RunState, str | None]


class Engine:
    """Decides a run's next action and applies outcomes; see the module docstring."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        *,
        definition_hash: str,
        _scope: Scope | None = None,
    ) -> None:
        self.definition = definition
        self.definition_hash = definition_hash
        if _scope is None:
            compiled = Compiled()
            compile_states(definition.states, definition.start_at, compiled)
            _scope = Scope(
                definition, definition_hash, compiled, definition.states, definition.start_at
            )
        self._scope = _scope

    # --- public API -----------------------------------------------------------------------------

    def start(self, input: Any, system: SystemContext) -> RunState:
        """A new run at the first state with work to do (or already finished)."""
        run = RunState(
            data={"input": input, "state": {}}, current=None, timestamp=system.started_at
        )
        return self._advance(run, self._scope.start_at, system)

    def branch(self, action: RunBranches, index: int) -> Engine:
        """The engine for branch ``index`` of ``action`` (keys prefixed with its branch path)."""
        owner = self._scope.states.get(action.state)
        branch: Branch
        if isinstance(owner, ParallelState):
            branch = owner.branches[index]
        elif isinstance(owner, MapState):
            branch = owner.branch
        else:
            raise ValueError(f"state {action.state!r} is not a parallel or map state")
        scope = replace(
            self._scope,
            states=branch.states,
            start_at=branch.start_at,
            prefix=action.branch_paths[index],
            base_state=dict(action.branch_data[index].get("state", {})),
        )
        return Engine(self.definition, definition_hash=self.definition_hash, _scope=scope)

    def start_branch(
        self, data: dict[str, Any], timestamp: datetime, system: SystemContext | None = None
    ) -> RunState:
        """A branch run from its starting ``data`` (``RunBranches.branch_data[i]``).

        Pass the parent's ``system`` so ``$.system`` is complete in the branch's first choice
        states; without it ``$.system`` holds only what the definition knows.
        """
        run = RunState(data=data, current=None, timestamp=timestamp)
        return self._advance(run, self._scope.start_at, system or self._bare_system(timestamp))

    def next_action(self, run: RunState, system: SystemContext) -> Action:
        """What the executor must do now; ``Finished`` once the run has ended."""
        if run.status != "running" or run.current is None:
            return Finished(
                status="failed" if run.status == "failed" else "succeeded",
                output=run.output,
                error=run.error,
                cause=run.cause,
            )
        if run.pending_failure is not None:
            return compensations(self._scope, run, run.current, None, system)
        state = self._scope.states[run.current]
        if not isinstance(state, Actionable):
            raise ValueError(
                f"run is at {run.current!r}, a {state.type} state, which has no action"
            )
        return build_action(self._scope, run, run.current, state, system)

    def apply(self, run: RunState, outcome: Outcome, system: SystemContext) -> RunState:
        """The run after ``outcome`` of the current state's action, advanced to the next action."""
        if run.status != "running" or run.current is None:
            raise ValueError(f"the run has ended ({run.status}); nothing to apply")
        scope, name = self._scope, run.current
        run = run.model_copy(update={"timestamp": outcome.at})
        if run.pending_failure is not None:
            if not isinstance(outcome, CompensationsRan):
                raise mismatch(name, "on-failure compensation", outcome)
            return after_failure_compensation(scope, run, name, outcome, system)
        state = scope.states[name]
        target: str | None
        if isinstance(state, TaskState):
            run, target = apply_task(scope, run, name, state, outcome, system)
        elif isinstance(state, WaitState):
            run, target = apply_wait(scope, run, name, state, outcome)
        elif isinstance(state, ParallelState | MapState):
            run, target = apply_branches(scope, run, name, state, outcome)
        elif isinstance(state, CompensationState):
            run, target = apply_compensation(scope, run, name, state, outcome, system)
        else:
            raise mismatch(name, f"{state.type} state", outcome)
        return run if target is None else self._advance(run, target, system)

    # --- entering states ------------------------------------------------------------------------

    def _bare_system(self, timestamp: datetime) -> SystemContext:
        return SystemContext(
            run_id="",
            workflow=self.definition.name,
            version=self.definition.version,
            definition_hash=self.definition_hash,
            started_at=timestamp,
        )

    def _advance(self, run: RunState, target: str, system: SystemContext) -> RunState:
        """Enter ``target`` and pass through choices until a state with an action, or the end."""
        next_target: str | None = target
        steps = 0
        while next_target is not None:
            steps += 1
            name = next_target
            visits = {**run.visits, name: run.visits.get(name, 0) + 1}
            run = run.model_copy(update={"current": name, "visits": visits})
            if len(run.trail) >= MAX_RUN_STEPS:
                cause = f"the run entered {len(run.trail)} states, the limit, at {name!r}"
                return uncaught(self._scope, run, name, "step", STEP_LIMIT, cause)
            if steps > MAX_PASS_THROUGH:
                cause = f"more than {MAX_PASS_THROUGH} choice steps without any work, at {name!r}"
                return uncaught(self._scope, run, name, "choice", TRANSITION_LIMIT, cause)
            run, next_target = self._enter(run, name, system)
        return run

    def _enter(self, run: RunState, name: str, system: SystemContext) -> Step:
        """Resolve a just-entered state: pass through, end the run, or stop at its action."""
        scope = self._scope
        state = scope.states[name]
        if isinstance(state, ChoiceState):
            return self._choose(run, name, state, system)
        if isinstance(state, SucceedState):
            return self._succeed(run, name, state, system), None
        if isinstance(state, FailState):
            run = trail(scope, run, name, "fail", f"failed: {state.error}")
            return ended(run, "failed", error=state.error, cause=state.cause), None
        try:
            action = build_action(scope, run, name, state, system)
        except (RuntimeWorkflowError, ExpressionError) as exc:
            return fail_state(scope, run, name, state, error_name(exc), str(exc))
        # Nothing to do (an empty map, a compensation with nothing to undo): complete it here.
        if isinstance(state, MapState) and isinstance(action, RunBranches) and not action.branches:
            done = BranchesSucceeded(results=[], at=run.timestamp)
            return apply_branches(scope, run, name, state, done)
        compensation = isinstance(action, RunCompensations) and not action.steps
        if isinstance(state, CompensationState) and compensation:
            nothing = CompensationsRan(failures=[], at=run.timestamp)
            return apply_compensation(scope, run, name, state, nothing, system)
        return run, None

    def _choose(self, run: RunState, name: str, state: ChoiceState, system: SystemContext) -> Step:
        scope = self._scope
        data = document(run, name, system)
        try:
            for rule in state.choices:
                if scope.compiled.conditions[id(rule)].evaluate(data):
                    return trail(scope, run, name, "choice", f"-> {rule.next}"), rule.next
        except RuntimeWorkflowError as exc:
            return uncaught(scope, run, name, "choice", error_name(exc), str(exc)), None
        if state.default is not None:
            return trail(scope, run, name, "choice", f"-> {state.default} (default)"), state.default
        cause = f"no choice of state {name!r} matched and it has no default"
        return uncaught(scope, run, name, "choice", NO_CHOICE_MATCHED, cause), None

    def _succeed(
        self, run: RunState, name: str, state: SucceedState, system: SystemContext
    ) -> RunState:
        scope = self._scope
        if state.output is None:
            output = scope.default_output(run)
        else:
            try:
                output = resolve_template(state.output, document(run, name, system), state=name)
            except (RuntimeWorkflowError, ExpressionError) as exc:
                return uncaught(scope, run, name, "succeed", error_name(exc), str(exc))
        run = trail(scope, run, name, "succeed", "succeeded")
        return ended(run, "succeeded", output=output)
