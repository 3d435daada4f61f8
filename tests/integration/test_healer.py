"""``flows.leases.Healer.tick`` on a real Prefect server and real PostgreSQL.

A Running run held by a dead process is proposed Scheduled with a message naming the dead holder
and its heal counted; a final run, a run of a live holder and (within the grace) a run nobody
holds are left alone; a run nobody holds past the grace is taken back; a run taken back more than
``max_heals`` times is marked Crashed with the reason; a healer whose own renewals have not settled
takes nothing; a run that reaches a final state between the healer's read and its proposal keeps
it; a healed run claimed again is not taken back before its claimer holds it; a dead holder's run
is found among more Running runs than one read returns. Each test deploys a trivial flow of its
own and restricts the healer to that deployment, so no other test's runs are touched. Nothing
executes the runs: the test sets their states.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest
from prefect import flow, get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.responses import OrchestrationResult
from prefect.results import ResultStore
from prefect.states import Cancelled, Completed, Failed, Pending, Running

from flows.leases import Healer, Keeper, LeaseSettings
from store.db import Database
from store.leases import LeaseStore

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

TTL = timedelta(minutes=1)


@flow(name="healer-probe")
def healer_probe() -> None:
    """Never executed: the tests only need runs of a deployment of their own."""


@pytest.fixture
async def client(prefect_server: object) -> AsyncIterator[PrefectClient]:
    async with get_client() as prefect:
        yield prefect


@pytest.fixture
async def deployment_id(client: PrefectClient) -> UUID:
    flow_id = await client.create_flow(healer_probe)
    created: UUID = await client.create_deployment(
        flow_id=flow_id, name=f"healer-{uuid.uuid4().hex[:8]}"
    )
    return created


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[LeaseStore]:
    db = await Database.connect(pg_url)
    try:
        yield LeaseStore(db)
    finally:
        await db.close()


def healer(store: LeaseStore, deployment_id: UUID, **settings: Any) -> Healer:
    values: dict[str, Any] = {"settle_seconds": 0, "grace_seconds": 0}
    values.update(settings)
    return Healer([deployment_id], Keeper(store, LeaseSettings(**values)))


async def new_run(client: PrefectClient, deployment_id: UUID, state: State[Any]) -> FlowRun:
    run = await client.create_flow_run_from_deployment(deployment_id)
    await client.set_flow_run_state(run.id, state, force=True)
    return await client.read_flow_run(run.id)


async def state_of(client: PrefectClient, run: FlowRun) -> State[Any]:
    state = (await client.read_flow_run(run.id)).state
    assert state is not None
    return state


async def dead_holder(store: LeaseStore, name: str = "host:1:killed") -> str:
    await store.renew_process(name, TTL, host="host", pid=1)
    await store.expire_process(name)
    return name


async def test_a_run_of_a_dead_holder_is_rescheduled_naming_the_holder(
    client: PrefectClient, deployment_id: UUID, store: LeaseStore
) -> None:
    run = await new_run(client, deployment_id, Running())
    holder = await dead_holder(store)
    await store.hold_run(str(run.id), holder)
    healing = healer(store, deployment_id)

    taken = await healing.tick(client)

    state = await state_of(client, run)
    assert taken == 1 and healing.healed == 1
    assert state.type == StateType.SCHEDULED
    assert state.message is not None
    assert holder in state.message and "(heal 1)" in state.message
    assert healing.keeper.holder in state.message
    lease = (await store.find_runs([str(run.id)]))[str(run.id)]
    assert (lease.holder, lease.heals) == (f"heal:{healing.keeper.holder}", 1)
    # Scheduled is not Running or Pending: the next look leaves it to the executors.
    assert await healing.tick(client) == 0


async def test_final_runs_and_runs_of_live_holders_are_left_alone(
    client: PrefectClient, deployment_id: UUID, store: LeaseStore
) -> None:
    completed = await new_run(client, deployment_id, Completed())
    live_run = await new_run(client, deployment_id, Running())
    await store.hold_run(str(completed.id), await dead_holder(store))
    await store.renew_process("host:2:alive", TTL, host="host", pid=2)
    await store.hold_run(str(live_run.id), "host:2:alive")
    healing = healer(store, deployment_id)

    assert await healing.tick(client) == 0

    assert (await state_of(client, completed)).type == StateType.COMPLETED
    assert (await state_of(client, live_run)).type == StateType.RUNNING
    leases = await store.find_runs([str(completed.id), str(live_run.id)])
    assert {run_id: (lease.holder, lease.heals) for run_id, lease in leases.items()} == {
        str(completed.id): ("host:1:killed", 0),
        str(live_run.id): ("host:2:alive", 0),
    }


async def test_a_run_nobody_holds_is_taken_back_only_after_the_grace(
    client: PrefectClient, deployment_id: UUID, store: LeaseStore
) -> None:
    running = await new_run(client, deployment_id, Running())
    pending = await new_run(client, deployment_id, Pending())

    assert await healer(store, deployment_id, grace_seconds=3600).tick(client) == 0
    assert (await state_of(client, running)).type == StateType.RUNNING
    assert (await state_of(client, pending)).type == StateType.PENDING
    assert await store.find_runs([str(running.id), str(pending.id)]) == {}

    assert await healer(store, deployment_id, grace_seconds=0).tick(client) == 2
    for run, was in ((running, "Running"), (pending, "Pending")):
        state = await state_of(client, run)
        assert state.type == StateType.SCHEDULED
        assert state.message is not None
        assert "nobody has executed it" in state.message and f"({was})" in state.message
    leases = await store.find_runs([str(running.id), str(pending.id)])
    assert sorted(lease.heals for lease in leases.values()) == [1, 1]


async def test_a_run_taken_back_more_than_max_heals_times_is_crashed(
    client: PrefectClient, deployment_id: UUID, store: LeaseStore
) -> None:
    run = await new_run(client, deployment_id, Running())
    healing = healer(store, deployment_id, max_heals=2)

    for attempt in (1, 2, 3):
        # An executor claims it again, and dies again.
        holder = await dead_holder(store, f"host:{attempt}:killed")
        await store.hold_run(str(run.id), holder)
        await client.set_flow_run_state(run.id, Running(), force=True)
        await healing.tick(client)

    state = await state_of(client, run)
    assert (healing.healed, healing.crashed) == (2, 1)
    assert state.type == StateType.CRASHED
    assert state.message is not None
    assert "taken back 2 times and every executing process died" in state.message
    assert "host:3:killed" in state.message
    assert (await store.find_runs([str(run.id)]))[str(run.id)].heals == 3
    # Crashed is final: nothing more to take back.
    assert await healing.tick(client) == 0


async def test_a_healed_run_claimed_again_is_not_taken_back_before_its_claimer_holds_it(
    client: PrefectClient, deployment_id: UUID, store: LeaseStore
) -> None:
    run = await new_run(client, deployment_id, Running())
    await store.hold_run(str(run.id), await dead_holder(store))
    assert await healer(store, deployment_id).tick(client) == 1
    # A claimer takes the rescheduled run (a Prefect worker: Pending now, and its flow process
    # holds the run's lease only once it has started; the executor holds it just after).
    claimed: OrchestrationResult[Any] = await client.set_flow_run_state(run.id, Pending())
    assert str(claimed.status.value).upper() == "ACCEPT"

    # The next look, with the claimer well within the grace.
    taken = await healer(store, deployment_id, grace_seconds=3600).tick(client)

    state = await state_of(client, run)
    assert (taken, state.type) == (0, StateType.PENDING), state.message
    assert (await store.find_runs([str(run.id)]))[str(run.id)].heals == 1


async def test_a_dead_holders_run_is_found_among_more_running_runs_than_one_read(
    client: PrefectClient, deployment_id: UUID, store: LeaseStore
) -> None:
    # A fleet at full concurrency: 5 workers x 50 runs each are Running at once.
    limit = asyncio.Semaphore(20)

    async def running() -> FlowRun:
        async with limit:
            return await new_run(client, deployment_id, Running())

    runs = await asyncio.gather(*(running() for _ in range(250)))
    # The run that sorts last by id (the server's default order is by id, descending).
    dead_run = min(runs, key=lambda run: run.id)
    await store.renew_process("host:2:alive", TTL, host="host", pid=2)
    for run in runs:
        if run is not dead_run:
            await store.hold_run(str(run.id), "host:2:alive")
    await store.hold_run(str(dead_run.id), await dead_holder(store))

    taken = await healer(store, deployment_id).tick(client)

    assert (taken, (await state_of(client, dead_run)).type) == (1, StateType.SCHEDULED)


async def test_a_healer_whose_renewals_have_not_settled_takes_nothing(
    client: PrefectClient, deployment_id: UUID, store: LeaseStore
) -> None:
    dead_run = await new_run(client, deployment_id, Running())
    orphan = await new_run(client, deployment_id, Running())
    await store.hold_run(str(dead_run.id), await dead_holder(store))
    keeper = Keeper(store, LeaseSettings(settle_seconds=3600, grace_seconds=0))
    await keeper.start(persistent=True)  # renewing, but not for an hour yet
    try:
        healing = Healer([deployment_id], keeper)
        assert keeper.healthy_seconds > 0
        assert await healing.tick(client) == 0
    finally:
        await keeper.stop()

    assert (await state_of(client, dead_run)).type == StateType.RUNNING
    assert (await state_of(client, orphan)).type == StateType.RUNNING
    leases = await store.find_runs([str(dead_run.id), str(orphan.id)])
    assert {run_id: lease.heals for run_id, lease in leases.items()} == {str(dead_run.id): 0}


class FinishesAfterTheRead:
    """A real client whose ``read_flow_runs`` lets ``finish`` happen after it has answered: the
    run reaches a final state between the healer's look and its proposal."""

    def __init__(self, client: PrefectClient, finish: Callable[[], Awaitable[object]]) -> None:
        self._client = client
        self._finish = finish

    async def read_flow_runs(self, **kwargs: Any) -> list[FlowRun]:
        runs = await self._client.read_flow_runs(**kwargs)
        await self._finish()
        return runs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


async def completed_with_its_result() -> State[Any]:
    """Completed as the workflow flow ends (``persist_result=True``): with a persisted result."""
    results = ResultStore()
    record = results.create_result_record("done")
    await results.apersist_result_record(record)
    return Completed(message=ENDED, data=record)


async def completed_without_a_result() -> State[Any]:
    return Completed(message=ENDED)


async def failed() -> State[Any]:
    return Failed(message=ENDED)


async def cancelled() -> State[Any]:
    return Cancelled(message=ENDED)


ENDED = "ended by its executor"


@pytest.mark.parametrize(
    "final",
    [
        pytest.param(completed_with_its_result, id="completed"),
        pytest.param(
            completed_without_a_result,
            id="completed-unpersisted",
        ),
        pytest.param(
            failed,
            id="failed",
        ),
        pytest.param(
            cancelled,
            id="cancelled",
        ),
    ],
)
async def test_a_run_that_ends_while_the_healer_looks_keeps_its_final_state(
    client: PrefectClient,
    deployment_id: UUID,
    store: LeaseStore,
    final: Callable[[], Awaitable[State[Any]]],
) -> None:
    run = await new_run(client, deployment_id, Running())
    await store.hold_run(str(run.id), await dead_holder(store))
    healing = healer(store, deployment_id)
    ended = await final()

    async def finish() -> None:
        await client.set_flow_run_state(run.id, ended, force=True)

    taken = await healing.tick(FinishesAfterTheRead(client, finish))

    state = await state_of(client, run)
    assert (state.type, state.message) == (ended.type, ENDED)
    assert taken == 0 and healing.healed == 0
