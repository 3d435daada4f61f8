"""Compile a definition once for the engine: conditions, wait time literals, paths, transitions.

Every condition is compiled, every wait's ``seconds``/``duration``/literal ``timestamp`` turned
into a ``timedelta``/``datetime``, every path of a mapping and every result path checked, and every
transition target looked up, so a bad definition fails when the engine is built, not mid-run.
Keys of the tables are ``id()`` of the definition's own model objects (the engine keeps the
definition alive, and frozen models with dict fields are not hashable).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from interpreter.conditions import CompiledCondition, compile_condition
from interpreter.durations import parse_duration, parse_timestamp
from interpreter.errors import AuthoringError, ExpressionError
from interpreter.models import (
    ChoiceState,
    MapState,
    ParallelState,
    State,
    SucceedState,
    TaskState,
    WaitState,
)
from interpreter.paths import assign, compile_path, is_path, template_paths

__all__ = ["Compiled", "compile_states"]


@dataclass
class Compiled:
    """What the constructor compiled, shared by the engine and all its branch engines."""

    conditions: dict[int, CompiledCondition] = field(default_factory=dict)  # id(ChoiceRule)
    delays: dict[int, timedelta] = field(default_factory=dict)  # id(WaitState): seconds/duration
    instants: dict[int, datetime] = field(default_factory=dict)  # id(WaitState): literal timestamp


def compile_states(
    states: Mapping[str, State], start_at: str, compiled: Compiled, pointer: str = "/states"
) -> None:
    """Compile every path, condition and time literal; check every transition target exists.

    Iterative over nested branches. Raises ``ExpressionError`` / ``AuthoringError`` naming where.
    """
    pending: list[tuple[Mapping[str, State], str, str]] = [(states, start_at, pointer)]
    while pending:
        scope, start, where = pending.pop()
        targets: list[tuple[str, str | None]] = [("startAt", start)]
        for name, state in scope.items():
            here = f"{where}/{name}"
            paths: list[str] = []
            if isinstance(state, TaskState):
                paths += template_paths(state.input)
                if state.compensate is not None:
                    paths += template_paths(state.compensate.input)
                if state.idempotency_key is not None and is_path(state.idempotency_key):
                    paths.append(state.idempotency_key)
            elif isinstance(state, ChoiceState):
                for rule in state.choices:
                    compiled.conditions[id(rule)] = compile_condition(rule.condition)
                    targets.append((here, rule.next))
                targets.append((here, state.default))
            elif isinstance(state, WaitState):
                _compile_wait(state, compiled, here, paths)
                if state.event is not None:
                    targets.append((here, state.event.timeout_next))
            elif isinstance(state, ParallelState):
                for i, branch in enumerate(state.branches):
                    pending.append((branch.states, branch.start_at, f"{here}/branches/{i}/states"))
            elif isinstance(state, MapState):
                paths.append(state.items_path)
                pending.append((state.branch.states, state.branch.start_at, f"{here}/branch"))
            elif isinstance(state, SucceedState) and state.output is not None:
                paths += template_paths(state.output)
            for result_path in _result_paths(state):
                assign({}, result_path, None)  # raises ExpressionError for a bad result path
            for path in paths:
                compile_path(path)
            targets.append((here, getattr(state, "next", None)))
            targets += [(here, rule.next) for rule in getattr(state, "catch", [])]
        for origin, target in targets:
            if target is not None and target not in scope:
                raise AuthoringError(
                    f"{origin}: transition to {target!r}, which is not a state here"
                )


def _compile_wait(state: WaitState, compiled: Compiled, where: str, paths: list[str]) -> None:
    try:
        if state.seconds is not None:
            compiled.delays[id(state)] = timedelta(seconds=state.seconds)
        elif state.duration is not None:
            compiled.delays[id(state)] = parse_duration(state.duration)
        elif state.timestamp is not None:
            if is_path(state.timestamp):
                paths.append(state.timestamp)
            else:
                compiled.instants[id(state)] = parse_timestamp(state.timestamp)
    except ExpressionError as exc:
        raise ExpressionError(f"{where}: {exc}", exc.expression) from exc


def _result_paths(state: State) -> list[str]:
    found = [getattr(state, "result_path", None)]
    if isinstance(state, WaitState) and state.event is not None:
        found.append(state.event.result_path)
    found += [rule.error_path for rule in getattr(state, "catch", [])]
    return [p for p in found if p is not None]
