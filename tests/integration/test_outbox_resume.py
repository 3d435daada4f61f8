"""Outbox resumes of a run that is not ready yet, on a real Prefect server and PostgreSQL.

A run suspends in two requests: it proposes ``Suspended`` (with the keys of its input), then
saves the schema its input must fit. A resume between the two is answered ``REJECT`` ("Run input
schema not found"), and a resume before the first is answered ``ABORT`` (not paused). Neither
means the resume is unwanted: the outbox keeps it and retries with backoff until the run accepts
it, or until the run is over (then it is done, and the reason is kept).

The runs belong to a deployment nothing executes, and the tests put them into the states a real
run passes through (``Running``, then ``Suspended`` without and then with its schema).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from listeners.router import RouteAction
from store.columns import utc_now
from store.db import Database
from store.waits import WaitStore
from tests.integration.test_router import (  # noqa: F401 - module fixtures used by name
    app_db_url,
    device,
    idle_deployment,
    run_state,
    runtime,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

WAIT_KEY = "wait-approve"


@pytest.fixture
async def waits(app_db_url: str) -> AsyncIterator[WaitStore]:  # noqa: F811 - the fixture
    db = await Database.connect(app_db_url)
    try:
        yield WaitStore(db)
    finally:
        await db.close()


async def _force(run_id: str, state: Any) -> None:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.set_flow_run_state(uuid.UUID(run_id), state, force=True)


def _suspended() -> Any:
    """``Suspended`` as ``suspend_flow_run(wait_for_input=...)`` proposes it (keys, no schema)."""
    from prefect.input.run_input import keyset_from_paused_state
    from prefect.states import Suspended

    state = Suspended(timeout_seconds=600, pause_key=WAIT_KEY)
    state.state_details.run_input_keyset = keyset_from_paused_state(state)
    return state


async def _save_schema(run_id: str, state: Any) -> None:
    """The second half of suspending: the run saves the schema of its input."""
    from flows.wake import WakeInput

    await WakeInput.asave(state.state_details.run_input_keyset, flow_run_id=uuid.UUID(run_id))


async def _started(rt: Any, dev: str) -> str:
    outcome = await rt.local.send(dev, "hello", event_id="start")
    assert outcome.result is not None and outcome.result.run_id is not None
    run_id: str = outcome.result.run_id
    return run_id


async def test_a_resume_waits_in_the_outbox_until_the_run_has_suspended_and_registered_its_input(
    app_db_url: str,  # noqa: F811 - the fixture
    idle_deployment: str,  # noqa: F811 - the fixture
    waits: WaitStore,
) -> None:
    from prefect.states import Running

    dev = device()
    async with runtime(app_db_url, idle_deployment) as rt:
        run_id = await _started(rt, dev)
        # The run is busy, has registered its wait, and has not suspended yet.
        await _force(run_id, Running())
        await waits.register(run_id, WAIT_KEY, dev, "approve", None)
        approve = await rt.local.send(dev, "approve", {"ok": True}, event_id="approve-1")
        assert approve.result is not None and approve.result.action is RouteAction.DEFERRED
        (entry,) = await rt.ledger.outstanding(dev)
        assert (entry.action, entry.event_id) == ("resume", "approve-1")

        # Suspended, but its input schema is not saved yet: REJECT "Run input schema not found".
        state = _suspended()
        await _force(run_id, state)
        await rt.reconciler.run_once(now=utc_now() + timedelta(minutes=1))
        (entry,) = await rt.ledger.outstanding(dev)
        assert entry.attempts >= 1
        assert "schema" in (entry.last_error or ""), entry.last_error
        assert entry.next_attempt_at > utc_now(), "retried with a backoff"
        still = await run_state(run_id)
        assert still is not None and still.type.value == "PAUSED"

        await _save_schema(run_id, state)
        report = await rt.reconciler.run_once(now=utc_now() + timedelta(minutes=10))
        assert report.resumed == 1, report
        assert await rt.ledger.outstanding(dev) == []
        resumed = await run_state(run_id)
        assert resumed is not None and resumed.name == "Resuming"


async def test_the_router_defers_a_resume_the_run_cannot_take_yet(
    app_db_url: str,  # noqa: F811 - the fixture
    idle_deployment: str,  # noqa: F811 - the fixture
    waits: WaitStore,
) -> None:
    """The event arrives between the two halves of the suspend: not dropped, deferred."""
    dev = device()
    async with runtime(app_db_url, idle_deployment) as rt:
        run_id = await _started(rt, dev)
        await waits.register(run_id, WAIT_KEY, dev, "approve", None)
        state = _suspended()
        await _force(run_id, state)
        approve = await rt.local.send(dev, "approve", event_id="approve-1")
        assert approve.result is not None
        assert approve.result.action is RouteAction.DEFERRED, approve.result
        assert [e.action for e in await rt.ledger.outstanding(dev)] == ["resume"]

        await _save_schema(run_id, state)
        report = await rt.reconciler.run_once(now=utc_now() + timedelta(minutes=1))
        assert report.resumed == 1, report
        assert await rt.ledger.outstanding(dev) == []


async def test_a_resume_of_a_run_that_ended_is_done_with_the_reason(
    app_db_url: str,  # noqa: F811 - the fixture
    idle_deployment: str,  # noqa: F811 - the fixture
    waits: WaitStore,
) -> None:
    from prefect.states import Cancelled

    dev = device()
    async with runtime(app_db_url, idle_deployment) as rt:
        run_id = await _started(rt, dev)
        await waits.register(run_id, WAIT_KEY, dev, "approve", None)
        await _force(run_id, _suspended())
        await rt.local.send(dev, "approve", event_id="approve-1")
        await rt.reconciler.run_once(now=utc_now() + timedelta(minutes=1))
        (entry,) = await rt.ledger.outstanding(dev)  # not ready yet: kept

        await _force(run_id, Cancelled())
        await rt.reconciler.run_once(now=utc_now() + timedelta(minutes=10))
        assert await rt.ledger.outstanding(dev) == []
        done = await rt.ledger.entry(entry.id)
        assert done is not None and done.status == "done"
        assert "CANCELLED" in (done.last_error or ""), done.last_error


async def test_a_resume_another_resumer_won_is_not_a_refusal(
    app_db_url: str,  # noqa: F811 - the fixture
    idle_deployment: str,  # noqa: F811 - the fixture
    waits: WaitStore,
) -> None:
    """Prefect answers 409 when another resume's input was stored first (the resumer won the
    race): that is "not paused any more", queued like any resume the run did not take."""
    from prefect.client.orchestration import get_client

    dev = device()
    async with runtime(app_db_url, idle_deployment) as rt:
        run_id = await _started(rt, dev)
        await waits.register(run_id, WAIT_KEY, dev, "approve", None)
        state = _suspended()
        await _force(run_id, state)
        await _save_schema(run_id, state)
        async with get_client() as client:
            keyset = state.state_details.run_input_keyset
            await client.create_flow_run_input(uuid.UUID(run_id), keyset["response"], "{}")
        approve = await rt.local.send(dev, "approve", event_id="approve-1")
        assert approve.result is not None
        assert approve.result.action is RouteAction.DEFERRED
        assert "another resume won" in approve.result.detail, approve.result.detail
