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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from interpreter.compiled import Compiled, compile_states
from interpreter.durations import parse_timestamp
from interpreter.errors import ExpressionError, RuntimeWorkflowError
from interpreter.keys import (
    branch_path,
    compensation_path,
    default_idempotency_key,
    state_path,
    step_key,
    wait_key,
)
from interpreter.models import (
    Branch,
    CatchRule,
    ChoiceState,
    CompensationState,
    FailState,
    MapState,
    ParallelState,
    State,
    SucceedState,
    TaskState,
    WaitState,
    WorkflowDefinition,
)
from interpreter.paths import assign, is_path, require, resolve_template
from interpreter.retry import effective_policy, match_catch
from interpreter.runtime import (
    Action,
    BranchesFailed,
    BranchesSucceeded,
    CompensationsRan,
    CompensationStep,
    CompletedTask,
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
    "INVALID_VALUE",
    "NO_CHOICE_MATCHED",
    "TIMEOUT",
    "TRANSITION_LIMIT",
    "Engine",
]

NO_CHOICE_MATCHED: Final = "States.NoChoiceMatched"
TIMEOUT: Final = "States.Timeout"
INVALID_VALUE: Final = "States.InvalidValue"
TRANSITION_LIMIT: Final = "States.TransitionLimit"

# Choice states pass through without an outcome; a cycle of choices that never reaches a state
# with work to do would spin for ever, so one advance takes at most this many pass-through steps.
MAX_PASS_THROUGH: Final = 1_000

_Actionable = TaskState | WaitState | ParallelState | MapState | CompensationState


@dataclass(frozen=True)
class _Scope:
    """The states an engine walks: the whole definition, or one branch under a path prefix."""

    states: Mapping[str, State]
    start_at: str
    prefix: str = ""
    base_state: Mapping[str, Any] | None = None  # a branch's starting $.state (result = the diff)


class Engine:
    """Decides a run's next action and applies outcomes; see the module docstring."""

    def __init__(
        self,
        definition: WorkflowDefinition,
        *,
        definition_hash: str,
        _scope: _Scope | None = None,
        _compiled: Compiled | None = None,
    ) -> None:
        self.definition = definition
        self.definition_hash = definition_hash
        self._config = definition.configuration
        self._scope = _scope or _Scope(definition.states, definition.start_at)
        if _compiled is None:
            _compiled = Compiled()
            compile_states(definition.states, definition.start_at, _compiled)
        self._compiled = _compiled

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
        scope = _Scope(
            branch.states,
            branch.start_at,
            prefix=action.branch_paths[index],
            base_state=dict(action.branch_data[index].get("state", {})),
        )
        return Engine(
            self.definition,
            definition_hash=self.definition_hash,
            _scope=scope,
            _compiled=self._compiled,
        )

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
            return self._compensations(run, run.current, None, system)
        state = self._scope.states[run.current]
        if not isinstance(state, _Actionable):
            raise ValueError(
                f"run is at {run.current!r}, a {state.type} state, which has no action"
            )
        return self._action(run, run.current, state, system)

    def apply(self, run: RunState, outcome: Outcome, system: SystemContext) -> RunState:
        """The run after ``outcome`` of the current state's action, advanced to the next action."""
        if run.status != "running" or run.current is None:
            raise ValueError(f"the run has ended ({run.status}); nothing to apply")
        name = run.current
        run = run.model_copy(update={"timestamp": outcome.at})
        if run.pending_failure is not None:
            if not isinstance(outcome, CompensationsRan):
                raise _mismatch(name, "on-failure compensation", outcome)
            return self._after_failure_compensation(run, name, outcome, system)
        state = self._scope.states[name]
        target: str | None
        if isinstance(state, TaskState):
            run, target = self._apply_task(run, name, state, outcome, system)
        elif isinstance(state, WaitState):
            run, target = self._apply_wait(run, name, state, outcome)
        elif isinstance(state, ParallelState | MapState):
            run, target = self._apply_branches(run, name, state, outcome)
        elif isinstance(state, CompensationState):
            run, target = self._apply_compensation(run, name, state, outcome, system)
        else:
            raise _mismatch(name, f"{state.type} state", outcome)
        return run if target is None else self._advance(run, target, system)

    # --- documents and keys ---------------------------------------------------------------------

    def _path(self, name: str) -> str:
        return state_path(self._scope.prefix, name)

    def _visit(self, run: RunState, name: str) -> int:
        return run.visits.get(name, 0)

    def _document(self, run: RunState, name: str, system: SystemContext) -> dict[str, Any]:
        """What paths read: ``{"input", "state", "system"}`` for ``name``'s current visit."""
        return {
            "input": run.data.get("input"),
            "state": run.data.get("state", {}),
            "system": {
                "runId": system.run_id,
                "workflow": system.workflow,
                "version": system.version,
                "definitionHash": system.definition_hash,
                "deviceId": system.device_id,
                "stateName": name,
                "attempt": self._visit(run, name),
                "timestamp": run.timestamp.isoformat(),
                "startedAt": system.started_at.isoformat(),
            },
        }

    def _bare_system(self, timestamp: datetime) -> SystemContext:
        return SystemContext(
            run_id="",
            workflow=self.definition.name,
            version=self.definition.version,
            definition_hash=self.definition_hash,
            started_at=timestamp,
        )

    # --- entering states ------------------------------------------------------------------------

    def _advance(self, run: RunState, target: str, system: SystemContext) -> RunState:
        """Enter ``target`` and pass through choices until a state with an action, or the end."""
        next_target: str | None = target
        steps = 0
        while next_target is not None:
            steps += 1
            name = next_target
            visits = {**run.visits, name: run.visits.get(name, 0) + 1}
            run = run.model_copy(update={"current": name, "visits": visits})
            if steps > MAX_PASS_THROUGH:
                cause = f"more than {MAX_PASS_THROUGH} choice steps without any work, at {name!r}"
                return self._uncaught(run, name, "choice", TRANSITION_LIMIT, cause)
            run, next_target = self._enter(run, name, system)
        return run

    def _enter(
        self, run: RunState, name: str, system: SystemContext
    ) -> tuple[RunState, str | None]:
        """Resolve a just-entered state: pass through, end the run, or stop at its action."""
        state = self._scope.states[name]
        if isinstance(state, ChoiceState):
            return self._choose(run, name, state, system)
        if isinstance(state, SucceedState):
            return self._succeed(run, name, state, system), None
        if isinstance(state, FailState):
            run = self._trail(run, name, "fail", f"failed: {state.error}")
            return _ended(run, "failed", error=state.error, cause=state.cause), None
        try:
            action = self._action(run, name, state, system)
        except (RuntimeWorkflowError, ExpressionError) as exc:
            return self._fail_state(run, name, state, _error_name(exc), str(exc))
        # Nothing to do (an empty map, a compensation with nothing to undo): complete it here.
        if isinstance(state, MapState) and isinstance(action, RunBranches) and not action.branches:
            done = BranchesSucceeded(results=[], at=run.timestamp)
            return self._apply_branches(run, name, state, done)
        compensation = isinstance(action, RunCompensations) and not action.steps
        if isinstance(state, CompensationState) and compensation:
            nothing = CompensationsRan(failures=[], at=run.timestamp)
            return self._apply_compensation(run, name, state, nothing, system)
        return run, None

    def _choose(
        self, run: RunState, name: str, state: ChoiceState, system: SystemContext
    ) -> tuple[RunState, str | None]:
        document = self._document(run, name, system)
        try:
            for rule in state.choices:
                if self._compiled.conditions[id(rule)].evaluate(document):
                    return self._trail(run, name, "choice", f"-> {rule.next}"), rule.next
        except RuntimeWorkflowError as exc:
            return self._uncaught(run, name, "choice", _error_name(exc), str(exc)), None
        if state.default is not None:
            return self._trail(run, name, "choice", f"-> {state.default} (default)"), state.default
        cause = f"no choice of state {name!r} matched and it has no default"
        return self._uncaught(run, name, "choice", NO_CHOICE_MATCHED, cause), None

    def _succeed(
        self, run: RunState, name: str, state: SucceedState, system: SystemContext
    ) -> RunState:
        if state.output is None:
            output = self._default_output(run)
        else:
            try:
                output = resolve_template(
                    state.output, self._document(run, name, system), state=name
                )
            except (RuntimeWorkflowError, ExpressionError) as exc:
                return self._uncaught(run, name, "succeed", _error_name(exc), str(exc))
        run = self._trail(run, name, "succeed", "succeeded")
        return _ended(run, "succeeded", output=output)

    def _default_output(self, run: RunState) -> Any:
        """``$.state``; for a branch only the entries it added or changed."""
        state: dict[str, Any] = run.data.get("state", {})
        base = self._scope.base_state
        if base is None:
            return state
        return {k: v for k, v in state.items() if k not in base or base[k] != v}

    # --- actions --------------------------------------------------------------------------------

    def _action(
        self, run: RunState, name: str, state: _Actionable, system: SystemContext
    ) -> Action:
        path, visit = self._path(name), self._visit(run, name)
        if isinstance(state, TaskState):
            document = self._document(run, name, system)
            key = step_key(self.definition_hash, path, visit)
            return ExecuteTask(
                state=name,
                path=path,
                visit=visit,
                step_key=key,
                activity=state.activity,
                input=resolve_template(state.input, document, state=name),
                retry=effective_policy(state, self._config),
                timeout_seconds=state.timeout_seconds or self._config.default_timeout_seconds,
                idempotency_key=self._idempotency_key(state, name, document, system, key),
            )
        if isinstance(state, WaitState):
            return self._wait(run, name, state, system, path, visit)
        if isinstance(state, ParallelState):
            data = {"input": run.data.get("input"), "state": dict(run.data.get("state", {}))}
            return RunBranches(
                state=name,
                path=path,
                visit=visit,
                branches=list(state.branches),
                branch_data=[data for _ in state.branches],
                branch_paths=[branch_path(path, visit, i) for i in range(len(state.branches))],
                fail_fast=state.on_branch_failure == "failFast",
                max_concurrency=None,
            )
        if isinstance(state, MapState):
            return self._map(run, name, state, system, path, visit)
        return self._compensations(run, name, state.states, system)

    def _idempotency_key(
        self,
        state: TaskState,
        name: str,
        document: Mapping[str, Any],
        system: SystemContext,
        key: str,
    ) -> str:
        expression = state.idempotency_key
        if expression is None:
            return default_idempotency_key(system.run_id, key)
        if not is_path(expression):
            return expression
        value = require(expression, document, state=name)
        if isinstance(value, str):
            return value
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)

    def _wait(
        self,
        run: RunState,
        name: str,
        state: WaitState,
        system: SystemContext,
        path: str,
        visit: int,
    ) -> WaitFor:
        key = wait_key(path, visit)
        if state.event is not None:
            timeout = state.event.timeout_seconds
            until = None if timeout is None else run.timestamp + timedelta(seconds=timeout)
            return WaitFor(
                state=name,
                path=path,
                visit=visit,
                wait_key=key,
                until=until,
                event=state.event.name,
            )
        delay = self._compiled.delays.get(id(state))
        if delay is not None:
            until = run.timestamp + delay
        elif id(state) in self._compiled.instants:
            until = self._compiled.instants[id(state)]
        else:
            if state.timestamp is None:
                raise ValueError(f"wait state {name!r} has nothing to wait for")
            value = require(state.timestamp, self._document(run, name, system), state=name)
            if not isinstance(value, str):
                raise _InvalidValueError(
                    f"timestamp {state.timestamp!r} of state {name!r} is a "
                    f"{type(value).__name__}, expected an RFC 3339 string"
                )
            try:
                until = parse_timestamp(value)
            except ExpressionError as exc:
                raise _InvalidValueError(f"state {name!r}: {exc}") from exc
        return WaitFor(state=name, path=path, visit=visit, wait_key=key, until=until)

    def _map(
        self,
        run: RunState,
        name: str,
        state: MapState,
        system: SystemContext,
        path: str,
        visit: int,
    ) -> RunBranches:
        items = require(state.items_path, self._document(run, name, system), state=name)
        if not isinstance(items, list):
            raise _InvalidValueError(
                f"itemsPath {state.items_path!r} of state {name!r} is a "
                f"{type(items).__name__}, expected an array"
            )
        parent = run.data.get("state", {})
        data = [
            {"input": run.data.get("input"), "state": {**parent, "index": i, state.item_name: item}}
            for i, item in enumerate(items)
        ]
        return RunBranches(
            state=name,
            path=path,
            visit=visit,
            branches=[state.branch] * len(items),
            branch_data=data,
            branch_paths=[branch_path(path, visit, i) for i in range(len(items))],
            fail_fast=True,
            max_concurrency=state.max_concurrency,
        )

    def _compensations(
        self, run: RunState, name: str, only: list[str] | None, system: SystemContext
    ) -> RunCompensations:
        chosen = [c for c in run.completed if only is None or c.state in only]
        steps = []
        for done in reversed(chosen):
            key = step_key(self.definition_hash, compensation_path(done.path), done.visit)
            steps.append(
                CompensationStep(
                    state=done.state,
                    path=done.path,
                    visit=done.visit,
                    activity=done.activity,
                    input=done.input,
                    step_key=key,
                    idempotency_key=default_idempotency_key(system.run_id, key),
                )
            )
        return RunCompensations(
            state=name, path=self._path(name), visit=self._visit(run, name), steps=steps
        )

    # --- outcomes -------------------------------------------------------------------------------

    def _apply_task(
        self,
        run: RunState,
        name: str,
        state: TaskState,
        outcome: Outcome,
        system: SystemContext,
    ) -> tuple[RunState, str | None]:
        if isinstance(outcome, TaskFailed):
            return self._fail_state(run, name, state, outcome.error, outcome.cause)
        if not isinstance(outcome, TaskSucceeded):
            raise _mismatch(name, "task", outcome)
        run = _store(run, state.result_path, name, outcome.result)
        if state.compensate is not None:
            try:
                undo_input = resolve_template(
                    state.compensate.input, self._document(run, name, system), state=name
                )
            except (RuntimeWorkflowError, ExpressionError) as exc:
                cause = f"compensate input: {exc}"
                return self._fail_state(run, name, state, _error_name(exc), cause)
            done = CompletedTask(
                state=name,
                path=self._path(name),
                visit=self._visit(run, name),
                activity=state.compensate.activity,
                input=undo_input,
            )
            run = run.model_copy(update={"completed": [*run.completed, done]})
        run = self._trail(run, name, "task", "succeeded")
        return self._transition(run, state.next)

    def _apply_wait(
        self, run: RunState, name: str, state: WaitState, outcome: Outcome
    ) -> tuple[RunState, str | None]:
        event = state.event
        if event is None:
            if not isinstance(outcome, WaitElapsed):
                raise _mismatch(name, "timer wait", outcome)
            return self._transition(self._trail(run, name, "wait", "elapsed"), state.next)
        if isinstance(outcome, EventReceived):
            run = _store(run, event.result_path, name, outcome.payload)
            return self._transition(self._trail(run, name, "wait", "event"), state.next)
        if not isinstance(outcome, EventTimedOut):
            raise _mismatch(name, "event wait", outcome)
        run = self._trail(run, name, "wait", "timeout")
        if event.timeout_next is not None:
            return run, event.timeout_next
        cause = f"event {event.name!r} did not arrive in state {name!r}"
        return self._uncaught(run, name, None, TIMEOUT, cause), None

    def _apply_branches(
        self, run: RunState, name: str, state: ParallelState | MapState, outcome: Outcome
    ) -> tuple[RunState, str | None]:
        if isinstance(outcome, BranchesFailed):
            return self._fail_state(run, name, state, outcome.error, outcome.cause)
        if not isinstance(outcome, BranchesSucceeded):
            raise _mismatch(name, state.type, outcome)
        run = _store(run, state.result_path, name, outcome.results)
        run = self._trail(run, name, state.type, "succeeded")
        return self._transition(run, state.next)

    def _apply_compensation(
        self,
        run: RunState,
        name: str,
        state: CompensationState,
        outcome: Outcome,
        system: SystemContext,
    ) -> tuple[RunState, str | None]:
        if not isinstance(outcome, CompensationsRan):
            raise _mismatch(name, "compensation", outcome)
        run = self._compensated(run, name, state.states, outcome, system)
        if state.next is not None:
            return run, state.next
        return _ended(run, "failed", error=state.error, cause=state.cause), None

    def _after_failure_compensation(
        self, run: RunState, name: str, outcome: CompensationsRan, system: SystemContext
    ) -> RunState:
        run = self._compensated(run, name, None, outcome, system, "on failure: ")
        error, cause = run.pending_failure or ("States.Runtime", "")
        run = run.model_copy(update={"pending_failure": None})
        return _ended(run, "failed", error=error, cause=cause)

    def _compensated(
        self,
        run: RunState,
        name: str,
        only: list[str] | None,
        outcome: CompensationsRan,
        system: SystemContext,
        reason: str = "",
    ) -> RunState:
        """Drop the compensated tasks (they are never undone twice) and record the outcome."""
        ran = {(s.path, s.visit) for s in self._compensations(run, name, only, system).steps}
        remaining = [c for c in run.completed if (c.path, c.visit) not in ran]
        text = f"{reason}compensated {len(ran)}"
        if outcome.failures:
            text += f", {len(outcome.failures)} failed: " + "; ".join(outcome.failures)
        run = run.model_copy(update={"completed": remaining})
        return self._trail(run, name, "compensation", text)

    # --- transitions and failures ---------------------------------------------------------------

    def _transition(self, run: RunState, target: str | None) -> tuple[RunState, str | None]:
        """Go to ``target``; without one the run ends successfully with its default output."""
        if target is not None:
            return run, target
        return _ended(run, "succeeded", output=self._default_output(run)), None

    def _fail_state(
        self, run: RunState, name: str, state: _Actionable, error: str, cause: str
    ) -> tuple[RunState, str | None]:
        """A state failed: follow its first matching catch rule, else the uncaught rule."""
        run = self._trail(run, name, state.type, f"failed: {error}")
        rules: list[CatchRule] = getattr(state, "catch", [])
        rule = match_catch(rules, error)
        if rule is None:
            return self._uncaught(run, name, None, error, cause), None
        if rule.error_path is not None:
            caught = {"error": error, "cause": cause}
            run = _with_state(run, assign(run.data.get("state", {}), rule.error_path, caught))
        return run, rule.next

    def _uncaught(
        self, run: RunState, name: str, trail_type: str | None, error: str, cause: str
    ) -> RunState:
        """End the run Failed, or first compensate (``onFailure: compensate``)."""
        if trail_type is not None:
            run = self._trail(run, name, trail_type, f"failed: {error}")
        if self._config.on_failure == "compensate" and run.completed:
            return run.model_copy(update={"current": name, "pending_failure": (error, cause)})
        return _ended(run, "failed", error=error, cause=cause)

    def _trail(self, run: RunState, name: str, type_: str, outcome: str) -> RunState:
        entry = TrailEntry(
            state=name,
            path=self._path(name),
            visit=self._visit(run, name),
            type=type_,
            outcome=outcome,
            at=run.timestamp,
        )
        return run.model_copy(update={"trail": [*run.trail, entry]})


# --- helpers ------------------------------------------------------------------------------------


class _InvalidValueError(RuntimeWorkflowError):
    """A value of the run has the wrong shape for where it is used (engine-internal)."""

    error_name = INVALID_VALUE


def _error_name(exc: Exception) -> str:
    if isinstance(exc, RuntimeWorkflowError):
        return exc.error_name
    return INVALID_VALUE  # an ExpressionError raised by run data (e.g. a malformed $path object)


def _store(run: RunState, result_path: str | None, name: str, value: Any) -> RunState:
    """Store ``value`` at ``result_path``, by default at ``$.state.<state name>``."""
    state: dict[str, Any] = run.data.get("state", {})
    if result_path is None:
        return _with_state(run, {**state, name: value})
    return _with_state(run, assign(state, result_path, value))


def _with_state(run: RunState, state: dict[str, Any]) -> RunState:
    return run.model_copy(update={"data": {**run.data, "state": state}})


def _ended(
    run: RunState,
    status: str,
    *,
    output: Any = None,
    error: str | None = None,
    cause: str | None = None,
) -> RunState:
    return run.model_copy(
        update={
            "status": status,
            "current": None,
            "output": output,
            "error": error,
            "cause": cause,
            "pending_failure": None,
        }
    )


def _mismatch(name: str, what: str, outcome: Outcome) -> ValueError:
    return ValueError(f"state {name!r} is a {what}; {type(outcome).__name__} does not apply to it")
