"""Contract of ``store.leases.LeaseStore`` on SQLite and PostgreSQL.

A process lease is created, then extended; an ended lease makes its runs' holder dead; a run is
held and released only by its holder; liveness is answered for more runs than one ``IN`` chunk;
``take_back`` is a compare-and-set on the holder, so of concurrent takers exactly one wins, and it
counts the heals, which a later ``hold_run`` keeps.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from store.columns import utc_now
from store.db import Database
from store.leases import LeaseStore
from store.tables import PROCESS_LEASES, RUN_LEASES

pytestmark = pytest.mark.integration

TTL = timedelta(minutes=1)


async def process_row(database: Database, holder: str) -> dict[str, object]:
    async with database.transaction(readonly=True) as connection:
        rows = (
            (
                await connection.execute(
                    select(PROCESS_LEASES).where(PROCESS_LEASES.c.holder == holder)
                )
            )
            .mappings()
            .all()
        )
    assert len(rows) == 1, f"{len(rows)} process lease rows for {holder}"
    return dict(rows[0])


async def run_lease_count(database: Database, flow_run_id: str) -> int:
    async with database.transaction(readonly=True) as connection:
        count = (
            await connection.execute(
                select(func.count()).where(RUN_LEASES.c.flow_run_id == flow_run_id)
            )
        ).scalar_one()
    return int(count)


async def dead(store: LeaseStore, holder: str) -> str:
    """``holder`` kept a lease and ended it: a dead process."""
    await store.renew_process(holder, TTL, host="host-a", pid=11)
    await store.expire_process(holder)
    return holder


async def test_renew_process_creates_the_lease_then_extends_it(database: Database) -> None:
    store = LeaseStore(database)
    before = utc_now()

    first = await store.renew_process("h1", TTL, host="host-a", pid=42)
    created = await process_row(database, "h1")
    second = await store.renew_process("h1", TTL * 2, host="other-host", pid=43)
    extended = await process_row(database, "h1")

    assert before + TTL <= first <= utc_now() + TTL
    assert created["expires_at"] == first
    assert (created["host"], created["pid"]) == ("host-a", 42)
    assert second > first
    assert extended["expires_at"] == second
    # Renewal moves only the clock: the same row, its start and its identity kept.
    assert extended["started_at"] == created["started_at"]
    assert (extended["host"], extended["pid"]) == ("host-a", 42)
    renewed_before, renewed_after = created["renewed_at"], extended["renewed_at"]
    assert isinstance(renewed_before, type(before)) and isinstance(renewed_after, type(before))
    assert renewed_after >= renewed_before
    assert await store.process_alive("h1")
    assert not await store.process_alive("never-renewed")


async def test_an_expired_process_makes_its_runs_holder_dead(database: Database) -> None:
    store = LeaseStore(database)
    await store.renew_process("alive", TTL, host="h", pid=1)
    await store.renew_process("gone", TTL, host="h", pid=2)
    await store.hold_run("run-a", "alive")
    await store.hold_run("run-g", "gone")
    await store.hold_run("run-n", "no-lease-at-all")

    await store.expire_process("gone")
    found = await store.find_runs(["run-a", "run-g", "run-n", "run-unheld"])

    assert {run_id: lease.holder_alive for run_id, lease in found.items()} == {
        "run-a": True,
        "run-g": False,
        "run-n": False,
    }
    assert found["run-g"].holder == "gone"
    assert found["run-g"].heals == 0
    assert not await store.process_alive("gone")
    assert await store.process_alive("alive")
    # A renewal after the end brings the process back (it was not dead, only late).
    await store.renew_process("gone", TTL, host="h", pid=2)
    assert (await store.find_runs(["run-g"]))["run-g"].holder_alive


async def test_hold_and_release_only_by_the_holder(database: Database) -> None:
    store = LeaseStore(database)
    await store.renew_process("p1", TTL, host="h", pid=1)
    await store.renew_process("p2", TTL, host="h", pid=2)

    await store.hold_run("run-1", "p1")
    await store.release_run("run-1", "p2")  # not its holder: nothing happens
    kept = await store.find_runs(["run-1"])
    await store.hold_run("run-1", "p2")  # taken over: names the new holder, still one row
    moved = await store.find_runs(["run-1"])
    await store.release_run("run-1", "p1")  # the old holder's late release: nothing
    still = await store.find_runs(["run-1"])
    await store.release_run("run-1", "p2")

    assert kept["run-1"].holder == "p1"
    assert moved["run-1"].holder == "p2"
    assert moved["run-1"].held_at >= kept["run-1"].held_at
    assert still["run-1"].holder == "p2"
    assert await store.find_runs(["run-1"]) == {}
    assert await run_lease_count(database, "run-1") == 0
    assert await store.find_runs([]) == {}


async def test_find_runs_answers_for_more_runs_than_one_chunk(database: Database) -> None:
    store = LeaseStore(database)
    await store.renew_process("alive", TTL, host="h", pid=1)
    await dead(store, "gone")
    held = [f"run-{index:04d}" for index in range(1203)]
    async with database.transaction() as connection:
        now = utc_now()
        await connection.execute(
            RUN_LEASES.insert(),
            [
                {
                    "flow_run_id": run_id,
                    "holder": "alive" if index % 2 else "gone",
                    "held_at": now,
                    "heals": index % 3,
                }
                for index, run_id in enumerate(held)
            ],
        )
    asked = held + [f"unheld-{index}" for index in range(300)]

    found = await store.find_runs(reversed(asked))  # any iterable, any order

    assert sorted(found) == held
    for index, run_id in enumerate(held):
        lease = found[run_id]
        assert (lease.holder, lease.holder_alive, lease.heals) == (
            ("alive", True, index % 3) if index % 2 else ("gone", False, index % 3)
        )


async def test_of_concurrent_takers_of_a_dead_holders_run_exactly_one_wins(
    database: Database,
) -> None:
    store = LeaseStore(database)
    await dead(store, "killed")
    await store.hold_run("run-1", "killed")

    results = await asyncio.gather(
        *(store.take_back("run-1", "killed", f"healer-{index}") for index in range(6))
    )

    winners = [index for index, heals in enumerate(results) if heals is not None]
    assert len(winners) == 1, results
    assert results[winners[0]] == 1
    lease = (await store.find_runs(["run-1"]))["run-1"]
    assert (lease.holder, lease.heals) == (f"healer-{winners[0]}", 1)
    # The loser's expectation is stale now: a second take from "killed" does nothing.
    assert await store.take_back("run-1", "killed", "late-healer") is None


async def test_every_heal_counts_and_a_new_holder_keeps_the_count(database: Database) -> None:
    store = LeaseStore(database)
    await store.hold_run("run-1", "first")

    one = await store.take_back("run-1", "first", "healer")
    await store.hold_run("run-1", "second")  # the next executor claims it
    after_hold = (await store.find_runs(["run-1"]))["run-1"]
    two = await store.take_back("run-1", "second", "healer")
    three = await store.take_back("run-1", "healer", "healer-2")

    assert (one, two, three) == (1, 2, 3)
    assert (after_hold.holder, after_hold.heals) == ("second", 1)
    assert (await store.find_runs(["run-1"]))["run-1"].heals == 3
    # A release by the executor ends the lease, and with it the count.
    await store.release_run("run-1", "healer-2")
    assert await store.find_runs(["run-1"]) == {}


async def test_taking_back_a_run_nobody_holds_inserts_once(database: Database) -> None:
    store = LeaseStore(database)

    results = await asyncio.gather(
        *(store.take_back("orphan", None, f"healer-{index}") for index in range(6))
    )

    winners = [index for index, heals in enumerate(results) if heals is not None]
    assert len(winners) == 1, results
    assert results[winners[0]] == 1
    assert await run_lease_count(database, "orphan") == 1
    lease = (await store.find_runs(["orphan"]))["orphan"]
    assert (lease.holder, lease.heals) == (f"healer-{winners[0]}", 1)
    # Someone holds it now: "from nobody" no longer matches.
    assert await store.take_back("orphan", None, "late-healer") is None
    await store.hold_run("orphan", "executor")
    assert (await store.find_runs(["orphan"]))["orphan"].heals == 1
