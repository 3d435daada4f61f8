"""Healing: a run whose executing process died is taken back and finished by a live executor.

Every process that executes runs keeps a process lease in the app database (``store.leases``),
renewed every ``renew_seconds`` by a ``Keeper`` on its event loop; each run it executes is held
in its name (the executor holds a run when it claims it; a run executed by a Prefect worker's
flow process holds itself when its flow starts). A killed process stops renewing, and its lease
expires ``ttl_seconds`` later.

The ``Healer`` runs in every ``orchestration worker`` (beside the poll loop). Every
``tick_seconds`` it reads the runs of its deployments that Prefect has Running or Pending and
takes back each one that

- is held by a process whose lease has expired (killed mid-run), or
- is held by nobody and has been in that state longer than ``grace_seconds`` (its claimer died
  between the claim and the start, or a Prefect worker left it Pending/Submitting),

by a compare-and-set on the run's lease (of two healers, one wins; the run is then held by
``heal:<healer>`` until a claimer holds it, and taken back again only after another grace) and
proposing ``Scheduled``, unforced, after reading the run again (Prefect accepts an unforced
``Scheduled`` from Failed, Cancelled and Crashed: a run that ended since the list was read is left
as it is; what remains is the milliseconds between that read and the proposal). A live executor
then claims it like any due run. The new execution replays from the top: completed steps come back
from the journal, the step in flight runs again with the same idempotency key (a claim its dead
holder left ``pending`` is taken over at once, ``store.idempotency``). A run taken back more than
``max_heals`` times (it kills every process that executes it) is marked Crashed instead, with the
reason.

False deaths: a healer acts only after its own lease renewals have succeeded for
``settle_seconds`` in a row, so after a database outage (nobody could renew) the live processes
renew before anyone judges them. A live process that cannot renew for ``ttl_seconds`` (its
event loop blocked that long) may have its runs taken back while it still executes them; keep
``ttl_seconds`` well above any stall.

Settings: ``ORCH_LEASE_*`` (``LeaseSettings``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import time
import weakref
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from store.leases import LeaseStore, RunLease, process_holder

__all__ = ["Healer", "Keeper", "LeaseSettings", "executor_managed", "keeper"]

logger = logging.getLogger("flows.leases")

#: A taken-back run's holder until a claimer holds it: ``heal:<the healer's holder>``.
HEALING = "heal:"
#: Runs read per request (the server's maximum) and at most this many pages per look.
PAGE = 200
MAX_PAGES = 50

#: Set in the executor's run tasks: the executor holds and releases the run around the engine.
executor_managed: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "orchestration_executor_managed", default=False
)


class LeaseSettings(BaseSettings):
    """How quickly a dead executor's runs are taken back (``ORCH_LEASE_*``)."""

    model_config = SettingsConfigDict(env_prefix="ORCH_LEASE_", extra="ignore", frozen=True)

    #: A process that has not renewed its lease for this long is taken for dead.
    ttl_seconds: float = Field(default=20.0, gt=0)
    #: How often a process renews its lease.
    renew_seconds: float = Field(default=4.0, gt=0)
    #: How often a worker looks for runs to take back.
    tick_seconds: float = Field(default=5.0, gt=0)
    #: A Running/Pending run that nobody holds is taken back after this long in that state.
    grace_seconds: float = Field(default=30.0, ge=0)
    #: A healer acts only after its own renewals have worked this long without a failure.
    settle_seconds: float = Field(default=12.0, ge=0)
    #: A run taken back more often than this is marked Crashed instead.
    max_heals: int = Field(default=3, ge=1)


class Keeper:
    """This process's lease on one event loop, and the runs it holds (see the module doc)."""

    def __init__(self, store: LeaseStore, settings: LeaseSettings) -> None:
        self.store = store
        self.settings = settings
        self.holder = process_holder()
        self.held: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._persistent = False
        self._healthy_since: float | None = None
        self._failing_since: float | None = None

    @property
    def healthy_seconds(self) -> float:
        """How long the renewals have worked without a failure (0 when they fail now)."""
        if self._healthy_since is None:
            return 0.0
        return time.monotonic() - self._healthy_since

    async def start(self, *, persistent: bool) -> None:
        """Renew now, then keep renewing (``persistent``: until ``stop``; otherwise while runs
        are held)."""
        self._persistent = self._persistent or persistent
        if self._task is not None and not self._task.done():
            return
        await self._renew()
        self._task = asyncio.create_task(self._renew_loop(), name="lease-keeper")

    async def stop(self) -> None:
        """Stop renewing and end the lease now (what this process held is taken back at once)."""
        self._persistent = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.store.expire_process(self.holder)

    async def hold(self, flow_run_id: UUID | str) -> None:
        """Record that this process executes ``flow_run_id`` (starts renewing if needed)."""
        run_id = str(flow_run_id)
        self.held.add(run_id)
        await self.start(persistent=False)
        await self.store.hold_run(run_id, self.holder)

    async def release(self, flow_run_id: UUID | str) -> None:
        """This process no longer executes ``flow_run_id``."""
        run_id = str(flow_run_id)
        self.held.discard(run_id)
        await self.store.release_run(run_id, self.holder)

    async def _renew_loop(self) -> None:
        while self._persistent or self.held:
            await asyncio.sleep(self.settings.renew_seconds)
            await self._renew()

    async def _renew(self) -> None:
        try:
            await self.store.renew_process(
                self.holder,
                timedelta(seconds=self.settings.ttl_seconds),
                host=socket.gethostname(),
                pid=os.getpid(),
            )
        except Exception as exc:  # the database is down: try again next time, say so once
            self._healthy_since = None
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                logger.warning(
                    "renewing this process's lease failed (%s); trying again every %g s",
                    type(exc).__name__,
                    self.settings.renew_seconds,
                )
            return
        if self._failing_since is not None:
            logger.info(
                "renewing this process's lease works again after %.1f s",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
        if self._healthy_since is None:
            self._healthy_since = time.monotonic()


_keepers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Keeper] = weakref.WeakKeyDictionary()


async def keeper() -> Keeper:
    """The keeper of this process on the running event loop (built on first use)."""
    from flows.runtime import get_resources

    loop = asyncio.get_running_loop()
    resources = await get_resources()
    found = _keepers.get(loop)
    if found is None or found.store.db is not resources.db:
        # First use on this loop, or the resources were configured anew (a new database).
        found = Keeper(LeaseStore(resources.db), LeaseSettings())
        _keepers[loop] = found
    return found


class Healer:
    """Takes back the runs of dead processes for ``deployment_ids`` (see the module doc)."""

    def __init__(self, deployment_ids: list[UUID], keeper: Keeper) -> None:
        self.deployment_ids = deployment_ids
        self.keeper = keeper
        self.settings = keeper.settings
        self.healed = 0
        self.crashed = 0

    async def run(self, client: Any, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set; a failed tick is logged and the next one tries again."""
        failing = False
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.tick_seconds)
            if stop.is_set():
                return
            try:
                await self.tick(client)
            except Exception as exc:
                if not failing:
                    logger.warning("looking for runs to take back failed (%s)", exc)
                failing = True
            else:
                failing = False

    async def tick(self, client: Any) -> int:
        """One look; returns how many runs were taken back."""
        if self.keeper.healthy_seconds < self.settings.settle_seconds:
            return 0
        runs = await self._active_runs(client)
        if not runs:
            return 0
        leases = await self.keeper.store.find_runs(str(run.id) for run in runs)
        taken = 0
        for run in runs:
            run_id = str(run.id)
            decision = self._judge(run, leases.get(run_id))
            if decision is None:
                continue
            why, expected = decision
            heals = await self.keeper.store.take_back(run_id, expected, self.taker)
            if heals is None:
                continue  # another healer got there first, or its holder came back
            if await self._reschedule(client, run, why, heals):
                taken += 1
        return taken

    @property
    def taker(self) -> str:
        """The holder a taken-back run names until a claimer holds it (``HEALING`` prefix)."""
        return f"{HEALING}{self.keeper.holder}"

    def _judge(self, run: Any, lease: RunLease | None) -> tuple[str, str | None] | None:
        """``(why, the holder to take it from)`` when ``run`` is to be taken back, else None."""
        run_id = str(run.id)
        if run_id in self.keeper.held:
            return None
        now = datetime.now(UTC)
        grace = timedelta(seconds=self.settings.grace_seconds)
        since = run.state.timestamp if run.state is not None else None
        state_name = run.state.name if run.state is not None else "?"
        if lease is not None and not lease.holder.startswith(HEALING):
            if lease.holder_alive or lease.holder == self.keeper.holder:
                return None
            return f"its process {lease.holder} stopped renewing its lease", lease.holder
        # Held by nobody, or taken back and not held by a claimer yet: after the grace only,
        # counted from the later of the state's start and the take-back.
        if lease is not None and (since is None or lease.held_at > since):
            since = lease.held_at
        if since is None or since > now - grace:
            return None
        why = f"nobody has executed it for {self.settings.grace_seconds:g} s ({state_name})"
        return why, None if lease is None else lease.holder

    async def _active_runs(self, client: Any) -> list[Any]:
        """Every Running or Pending run of the deployments, page by page (oldest state first
        would need a sort Prefect lacks; paging reads them all)."""
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        found: list[Any] = []
        for page in range(MAX_PAGES):
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                    )
                ),
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=self.deployment_ids)),
                limit=PAGE,
                offset=page * PAGE,
            )
            found.extend(runs)
            if len(runs) < PAGE:
                break
        return found

    async def _reschedule(self, client: Any, run: Any, why: str, heals: int) -> bool:
        from prefect.states import Crashed, Scheduled

        name = run.name
        if heals > self.settings.max_heals:
            message = (
                f"taken back {heals - 1} times and every executing process died: not again ({why})"
            )
            await client.set_flow_run_state(run.id, Crashed(message=message), force=False)
            self.crashed += 1
            logger.error("run %s (%s) marked Crashed: %s", run.id, name, message)
            return False
        message = f"taken back by {self.keeper.holder}: {why} (heal {heals})"
        # Read again right before proposing: Prefect accepts an unforced Scheduled from Failed,
        # Cancelled and Crashed, so a run that ended since the list was read must not get one.
        current = await client.read_flow_run(run.id)
        if current.state is None or current.state.type.value not in ("RUNNING", "PENDING"):
            await self.keeper.store.release_run(str(run.id), self.taker)
            return False
        result = await client.set_flow_run_state(
            run.id, Scheduled(scheduled_time=datetime.now(UTC), message=message), force=False
        )
        accepted = getattr(result, "status", None)
        if accepted is not None and str(getattr(accepted, "value", accepted)).upper() != "ACCEPT":
            logger.info("run %s (%s) not taken back: Prefect answered %s", run.id, name, accepted)
            await self.keeper.store.release_run(str(run.id), self.taker)
            return False
        self.healed += 1
        logger.warning("run %s (%s) rescheduled: %s", run.id, name, message)
        return True
