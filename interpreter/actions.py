"""Build the executor's action for the current state: task, wait, branches or compensations.

Each builder reads the run's document and the compiled definition and returns one ``Action`` with
its keys (``interpreter.keys``). A builder raises ``RuntimeWorkflowError``
(``States.PathNotFound``, ``States.InvalidValue``) or ``ExpressionError`` when the run's data
cannot give what the state needs; the engine turns that into the state's failure when the state
is entered.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from interpreter.durations import parse_timestamp
from interpreter.errors import ExpressionError
from interpreter.keys import (
    branch_path,
    compensation_path,
    default_idempotency_key,
    step_key,
    wait_key,
)
from interpreter.limits import MAX_MAP_ITEMS
from interpreter.models import MapState, ParallelState, TaskState, WaitState
from interpreter.paths import is_path, require, resolve_template
from interpreter.retry import effective_policy
from interpreter.runtime import (
    Action,
    CompensationStep,
    ExecuteTask,
    RunBranches,
    RunCompensations,
    RunState,
    SystemContext,
    WaitFor,
)
from interpreter.transitions import Actionable, InvalidValueError, Scope, document, visit

__all__ = ["build_action", "compensations"]


def build_action(
    scope: Scope, run: RunState, name: str, state: Actionable, system: SystemContext
) -> Action:
    """The action for ``state`` (named ``name``) on the run's current visit."""
    path, seen = scope.path(name), visit(run, name)
    if isinstance(state, TaskState):
        return _task(scope, run, name, state, system, path, seen)
    if isinstance(state, WaitState):
        return _wait(scope, run, name, state, system, path, seen)
    if isinstance(state, ParallelState):
        data = {"input": run.data.get("input"), "state": dict(run.data.get("state", {}))}
        return RunBranches(
            state=name,
            path=path,
            visit=seen,
            branches=list(state.branches),
            branch_data=[data for _ in state.branches],
            branch_paths=[branch_path(path, seen, i) for i in range(len(state.branches))],
            fail_fast=state.on_branch_failure == "failFast",
            max_concurrency=None,
        )
    if isinstance(state, MapState):
        return _map(run, name, state, system, path, seen)
    return compensations(scope, run, name, state.states, system)


def compensations(
    scope: Scope, run: RunState, name: str, only: list[str] | None, system: SystemContext
) -> RunCompensations:
    """Undo the completed tasks (those named in ``only``, else all), newest first."""
    chosen = [c for c in run.completed if only is None or c.state in only]
    steps = []
    for done in reversed(chosen):
        key = step_key(scope.definition_hash, compensation_path(done.path), done.visit)
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
    return RunCompensations(state=name, path=scope.path(name), visit=visit(run, name), steps=steps)


def _task(
    scope: Scope,
    run: RunState,
    name: str,
    state: TaskState,
    system: SystemContext,
    path: str,
    seen: int,
) -> ExecuteTask:
    config = scope.configuration
    data = document(run, name, system)
    key = step_key(scope.definition_hash, path, seen)
    return ExecuteTask(
        state=name,
        path=path,
        visit=seen,
        step_key=key,
        activity=state.activity,
        input=resolve_template(state.input, data, state=name),
        retry=effective_policy(state, config),
        timeout_seconds=state.timeout_seconds or config.default_timeout_seconds,
        idempotency_key=_idempotency_key(state, name, data, system, key),
    )


def _idempotency_key(
    state: TaskState,
    name: str,
    data: Mapping[str, Any],
    system: SystemContext,
    key: str,
) -> str:
    expression = state.idempotency_key
    if expression is None:
        return default_idempotency_key(system.run_id, key)
    if not is_path(expression):
        return expression
    value = require(expression, data, state=name)
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _wait(
    scope: Scope,
    run: RunState,
    name: str,
    state: WaitState,
    system: SystemContext,
    path: str,
    seen: int,
) -> WaitFor:
    key = wait_key(path, seen)
    if state.event is not None:
        timeout = state.event.timeout_seconds
        until = None if timeout is None else run.timestamp + timedelta(seconds=timeout)
        return WaitFor(
            state=name,
            path=path,
            visit=seen,
            wait_key=key,
            until=until,
            event=state.event.name,
        )
    delay = scope.compiled.delays.get(id(state))
    if delay is not None:
        until = run.timestamp + delay
    elif id(state) in scope.compiled.instants:
        until = scope.compiled.instants[id(state)]
    else:
        if state.timestamp is None:
            raise ValueError(f"wait state {name!r} has nothing to wait for")
        value = require(state.timestamp, document(run, name, system), state=name)
        if not isinstance(value, str):
            raise InvalidValueError(
                f"timestamp {state.timestamp!r} of state {name!r} is a "
                f"{type(value).__name__}, expected an RFC 3339 string"
            )
        try:
            until = parse_timestamp(value)
        except ExpressionError as exc:
            raise InvalidValueError(f"state {name!r}: {exc}") from exc
    return WaitFor(state=name, path=path, visit=seen, wait_key=key, until=until)


def _map(
    run: RunState,
    name: str,
    state: MapState,
    system: SystemContext,
    path: str,
    seen: int,
) -> RunBranches:
    items = require(state.items_path, document(run, name, system), state=name)
    if not isinstance(items, list):
        raise InvalidValueError(
            f"itemsPath {state.items_path!r} of state {name!r} is a "
            f"{type(items).__name__}, expected an array"
        )
    if len(items) > MAX_MAP_ITEMS:
        raise InvalidValueError(
            f"itemsPath {state.items_path!r} of state {name!r} holds {len(items)} items; "
            f"the limit is {MAX_MAP_ITEMS}"
        )
    parent = run.data.get("state", {})
    data = [
        {"input": run.data.get("input"), "state": {**parent, "index": i, state.item_name: item}}
        for i, item in enumerate(items)
    ]
    return RunBranches(
        state=name,
        path=path,
        visit=seen,
        branches=[state.branch] * len(items),
        branch_data=data,
        branch_paths=[branch_path(path, seen, i) for i in range(len(items))],
        fail_fast=True,
        max_concurrency=state.max_concurrency,
    )
