"""Helpers for the engine tests: build definitions tersely, a fixed system context and clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from interpreter.engine import Engine
from interpreter.models import WorkflowDefinition
from interpreter.runtime import Action, Outcome, RunState, SystemContext

T0 = datetime(2025, 1, 1, tzinfo=UTC)
HASH = "0123456789abcdef" * 4


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


SYSTEM = SystemContext(
    run_id="run-1",
    workflow="wf",
    version="1",
    definition_hash=HASH,
    device_id="dev-1",
    started_at=T0,
)


def definition(
    states: dict[str, Any], start_at: str | None = None, **extra: Any
) -> WorkflowDefinition:
    return WorkflowDefinition.model_validate(
        {"name": "wf", "version": "1", "startAt": start_at or next(iter(states)), "states": states}
        | extra
    )


def engine(states: dict[str, Any], start_at: str | None = None, **extra: Any) -> Engine:
    return Engine(definition(states, start_at, **extra), definition_hash=HASH)


def task(activity: str = "act", **fields: Any) -> dict[str, Any]:
    return {"type": "task", "activity": activity} | fields


def step(eng: Engine, run: RunState, outcome: Outcome) -> tuple[RunState, Action]:
    run = eng.apply(run, outcome, SYSTEM)
    return run, eng.next_action(run, SYSTEM)


def when(variable: str, value: Any, next_: str, op: str = "equals") -> dict[str, Any]:
    """A choice rule ``variable <op> value -> next_``."""
    return {"condition": {"op": op, "variable": variable, "value": value}, "next": next_}
