"""The flow's guards on a real Prefect server (PostgreSQL): a task run that breaks fails the run
instead of inventing an outcome, and each event loop gets its own database resources."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from flows import steps
from flows.runtime import Resources
from tests.integration.test_flow_harness import (
    FlowSystem,
    flow_database_url,
    flow_system,
)

__all__ = ["flow_database_url", "flow_system"]

pytestmark = pytest.mark.integration


async def test_a_task_run_that_crashed_fails_the_run_naming_its_state(
    flow_system: FlowSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.states import Crashed

    def broken_activity_task(**_options: Any) -> Any:
        async def call(*_args: Any, **_kwargs: Any) -> Any:
            return Crashed(message="the worker lost it")

        return call

    # The executor runs in this process: its next activity's task run "crashes".
    monkeypatch.setattr(steps, "activity_task", broken_activity_task)
    run_id = await flow_system.start("one-task.json", {"name": "crash"})
    flow_run = await flow_system.final(run_id)

    assert flow_run.state.is_failed()
    assert (
        "the task run of state 'Echo' ended Crashed (the worker lost it), not Completed"
        in flow_run.state.message
    ), flow_run.state.message


def test_each_event_loop_gets_its_own_resources(flow_system: FlowSystem) -> None:
    from flows import runtime

    async def use() -> tuple[Resources, int]:
        resources = await runtime.get_resources()
        async with resources.db.transaction() as connection:
            value = await connection.scalar(text("SELECT 1"))
        await resources.db.close()  # as a CLI command ends its loop
        return resources, int(value or 0)

    # CPython reuses the id of a freed loop: resources keyed by id would hand the second
    # ``asyncio.run`` the first one's (bound to a closed loop).
    first, _ = asyncio.run(use())
    second, value = asyncio.run(use())

    assert second is not first
    assert value == 1
