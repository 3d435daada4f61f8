"""One long-lived process executing many deployment runs concurrently (instead of a process each).

Prefect's stock workers start a Python process per flow run (~1 run/s on two cores). This executor
polls the server for due runs of its deployments, claims each by proposing ``Pending`` (another
executor that got there first wins; ``Abort`` or a non-pending answer means "not mine"), and runs
it as an asyncio task with ``prefect.flow_engine.run_flow`` under one shared API client. Each due
run gets its task at once, which claims it and executes it: claims run concurrently and the next
poll does not wait for them. It also runs the resumer (``flows.timers``)
so suspended runs wake up when their timer is due, and the healer (``flows.leases``): it keeps
this process's lease, holds each run it claims until the engine returns, and takes back the runs
of executors (or Prefect workers) that died mid-run.

What the 3.9.1 flow engine assumes about one run per process, and how this module handles it
(``/work/shared/PREFECT-NOTES.md``, "Many runs in one process"):

1. the per-run suspension watcher (a thread, a loop and a websocket per run) is replaced by a
   no-op: our runs suspend themselves (that path marks the request directly); a suspend requested
   from outside (UI/API) is not observed by a run in flight here, it takes effect at its next
   start. ``install_engine_patches`` does this; it touches private API, so Prefect is pinned.
2. the engine's process-wide SIGTERM capture is turned off; the executor owns SIGTERM: it stops
   claiming, lets runs in flight finish for ``drain_seconds``, then cancels the rest. The
   server's default result storage is read once per 30 s, not per run (``GET /admin/storage``
   through a new synchronous client each time).
3. cancelling one run cancels its asyncio task only.
4. heartbeats stay Prefect's setting (off by default).
5. one ``AsyncClientContext`` is entered around all runs.
6. runs are spawned from the executor's own context, which has no flow-run context.
7. ``Pause``, ``Abort``, ``TerminationSignal`` and ``SystemExit`` are caught per run.
8. the flow is async and every blocking call in it goes to a thread.
9. one environment for all runs: job variables and pull steps are not applied.
10. the engine's update of a run's flow version and retry policy at the start of every execution
    (a ``PATCH`` per execution, resumes included) is sent only when it changes what the poll
    read: a resumed run already has both.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import httpx
from prefect import Flow
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun, FlowRunPolicy, State
from prefect.context import AsyncClientContext
from prefect.exceptions import Abort, Pause, TerminationSignal
from prefect.flow_engine import run_flow
from prefect.states import Pending
from prefect.utilities.engine import propose_state

from flows.leases import Healer, Keeper, executor_managed, keeper

__all__ = ["Executor", "ExecutorStats", "deploy", "ensure_deployment", "install_engine_patches"]

logger = logging.getLogger("flows.executor")

_patched = False

#: How many per-run hold times ``ExecutorStats`` keeps (the most recent ones).
HELD_SECONDS_KEPT = 1000

#: The run an executor task executes: its id, flow version and policy as the poll read them.
_as_polled: contextvars.ContextVar[tuple[UUID, str | None, FlowRunPolicy] | None] = (
    contextvars.ContextVar("executor_as_polled", default=None)
)


def install_engine_patches() -> None:
    """Make Prefect's flow engine fit many runs in one process (items 1 and 2 of the docstring)."""
    global _patched
    if _patched:
        return
    import prefect.flow_engine as flow_engine

    @contextlib.contextmanager
    def no_observer(*_args: Any, **_kwargs: Any) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def no_sigterm_capture() -> Iterator[None]:
        yield

    # Private API of prefect 3.9.1 (pinned): one watcher thread per run halves throughput and
    # stalls the loop; the SIGTERM bridge is process-wide and would crash every run on SIGTERM.
    flow_engine.observe_flow_run_suspension = no_observer  # type: ignore[attr-defined]  # private module attribute, pinned version
    flow_engine.capture_sigterm = no_sigterm_capture  # type: ignore[attr-defined]  # private module attribute, pinned version
    _cache_server_storage_check()
    _patched = True


#: How long the server's default result storage (``GET /admin/storage``) is taken as read.
STORAGE_CHECK_SECONDS = 30.0


def _cache_server_storage_check() -> None:
    """Ask the server for its default result storage once per ``STORAGE_CHECK_SECONDS`` per API,
    not once per run and task (3.9.1 asks on every result store it builds, through a new
    synchronous client with a new SSL context each time: a third of the executor's main thread
    under load, and a request per run on the server)."""
    import prefect.results as results
    from prefect.settings import get_current_settings

    read_sync = results._read_server_default_result_storage_block_id
    read_async = results._aread_server_default_result_storage_block_id
    seen: dict[str, tuple[float, UUID | None]] = {}

    def fresh() -> tuple[str, UUID | None] | str:
        api = str(get_current_settings().api.url)
        hit = seen.get(api)
        if hit is not None and time.monotonic() - hit[0] < STORAGE_CHECK_SECONDS:
            return api, hit[1]
        return api

    def cached_sync() -> UUID | None:
        found = fresh()
        if isinstance(found, tuple):
            return found[1]
        value = read_sync()
        seen[found] = (time.monotonic(), value)
        return value

    async def cached_async() -> UUID | None:
        found = fresh()
        if isinstance(found, tuple):
            return found[1]
        value = await read_async()
        seen[found] = (time.monotonic(), value)
        return value

    # Private API of prefect 3.9.1 (pinned): module functions looked up by name at each call.
    results._read_server_default_result_storage_block_id = cached_sync  # private, pinned version
    results._aread_server_default_result_storage_block_id = cached_async  # private, pinned


def _send_only_changes(client: PrefectClient) -> None:
    """Let ``client`` skip the engine's per-execution ``update_flow_run(flow_version=...,
    empirical_policy=...)`` when both are what the poll read (item 10 of the docstring)."""
    update = client.update_flow_run

    async def update_flow_run(
        flow_run_id: UUID,
        flow_version: str | None = None,
        parameters: dict[str, Any] | None = None,
        name: str | None = None,
        tags: Iterable[str] | None = None,
        empirical_policy: FlowRunPolicy | None = None,
        infrastructure_pid: str | None = None,
        job_variables: dict[str, Any] | None = None,
    ) -> httpx.Response:
        polled = _as_polled.get()
        others = (parameters, name, tags, infrastructure_pid, job_variables)
        if (
            polled is not None
            and polled[0] == flow_run_id
            and all(value is None for value in others)
            and flow_version == polled[1]
            and empirical_policy == polled[2]
        ):
            return httpx.Response(204)  # what the server has already: nothing to send
        return await update(
            flow_run_id,
            flow_version=flow_version,
            parameters=parameters,
            name=name,
            tags=tags,
            empirical_policy=empirical_policy,
            infrastructure_pid=infrastructure_pid,
            job_variables=job_variables,
        )

    # An attribute of this client only: other clients (and the class) are untouched.
    client.update_flow_run = update_flow_run  # type: ignore[method-assign]


@dataclass
class ExecutorStats:
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    suspended: int = 0
    crashed: int = 0
    lost_claims: int = 0
    polls: int = 0
    failed_polls: int = 0
    #: Seconds each recent run held the executor (claim to the engine's return, hooks included).
    held_seconds: dict[UUID, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}

    def record_held(self, run_id: UUID, seconds: float) -> None:
        self.held_seconds[run_id] = seconds
        while len(self.held_seconds) > HELD_SECONDS_KEPT:
            del self.held_seconds[next(iter(self.held_seconds))]


@dataclass
class Executor:
    """Runs due runs of ``flows`` (deployment id -> flow) concurrently, up to ``concurrency``."""

    flows: dict[UUID, Flow[..., Any]]
    concurrency: int = 50
    poll_seconds: float = 0.5
    drain_seconds: float = 30.0
    resume_timers: bool = True
    resumer_tick_seconds: float = 1.0
    #: Keep a process lease, hold claimed runs and take back dead processes' runs
    #: (``flows.leases``).
    heal: bool = True
    stats: ExecutorStats = field(default_factory=ExecutorStats)
    _in_flight: dict[UUID, asyncio.Task[None]] = field(default_factory=dict)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _outage_since: float | None = None
    _context: contextvars.Context | None = None
    _keeper: Keeper | None = None

    def stop(self) -> None:
        """Stop claiming new runs; ``run`` drains the runs in flight and returns."""
        self._stop.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self, *, handle_signals: bool = False) -> None:
        """Poll, claim and execute until ``stop()`` (or SIGTERM/SIGINT with ``handle_signals``)."""
        install_engine_patches()
        loop = asyncio.get_running_loop()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        # Runs are spawned from this context: no flow-run context, the shared client below.
        async with AsyncClientContext.get_or_create() as client_context:
            _send_only_changes(client_context.client)
            self._context = contextvars.copy_context()
            helpers: list[asyncio.Task[None]] = []
            if self.resume_timers:
                from flows.timers import Resumer

                helpers.append(
                    asyncio.create_task(
                        Resumer(tick_seconds=self.resumer_tick_seconds).run(self._stop)
                    )
                )
            if self.heal:
                self._keeper = await self._start_keeper()
                if self._keeper is not None:
                    healer = Healer(list(self.flows), self._keeper)
                    helpers.append(
                        asyncio.create_task(healer.run(client_context.client, self._stop))
                    )
            try:
                await self._poll_loop(client_context.client)
            finally:
                await self._drain()
                for helper in helpers:
                    helper.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await helper
                if self._keeper is not None:
                    await self._keeper.stop()
                if handle_signals:
                    for sig in (signal.SIGTERM, signal.SIGINT):
                        loop.remove_signal_handler(sig)

    async def _poll_loop(self, client: PrefectClient) -> None:
        deployment_ids = list(self.flows)
        while not self._stop.is_set():
            free = self.concurrency - len(self._in_flight)
            if free > 0:
                try:
                    runs = await client.get_scheduled_flow_runs_for_deployments(
                        deployment_ids=deployment_ids,
                        scheduled_before=datetime.now(UTC),
                        limit=free,
                    )
                except Exception as exc:
                    self.stats.failed_polls += 1
                    self._poll_failed(exc)
                    runs = []
                else:
                    self.stats.polls += 1
                    self._poll_answered()
                # Each due run is a task at once that claims it, then executes it: claims go
                # concurrently and the next poll does not wait for the slowest of them (under
                # load a claim takes seconds; waiting for a batch left slots idle).
                for flow_run in [run for run in runs if run.id not in self._in_flight][:free]:
                    self._spawn(client, flow_run)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.poll_seconds)

    def _poll_failed(self, exc: Exception) -> None:
        # An outage is one WARNING when it starts and one INFO when it ends, not a traceback per
        # poll (every poll_seconds); the traceback goes to DEBUG for whoever needs it.
        if self._outage_since is not None:
            return
        self._outage_since = time.monotonic()
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        logger.warning(
            "polling for scheduled runs failed (%s); trying again every %g s",
            why[:200],
            self.poll_seconds,
        )
        logger.debug("polling failure", exc_info=exc)

    def _poll_answered(self) -> None:
        if self._outage_since is None:
            return
        logger.info(
            "polling for scheduled runs works again after %.1f s",
            time.monotonic() - self._outage_since,
        )
        self._outage_since = None

    async def _start_keeper(self) -> Keeper | None:
        try:
            found = await keeper()
            await found.start(persistent=True)
        except Exception as exc:
            logger.warning(
                "no process lease (%s): runs of dead executors are not taken back by this one",
                exc,
            )
            return None
        return found

    async def _claim(self, client: PrefectClient, flow_run: FlowRun) -> bool | None:
        """Claim ``flow_run`` (propose Pending); None when it is not ours, else whether this
        process holds its lease (``flows.leases``)."""
        try:
            state = await propose_state(client, Pending(), flow_run_id=flow_run.id)
        except Abort:
            self.stats.lost_claims += 1
            return None
        except Exception:
            logger.exception("claiming run %s failed", flow_run.id)
            return None
        if not state.is_pending():
            self.stats.lost_claims += 1
            return None
        self.stats.claimed += 1
        if self._keeper is None:
            return False
        try:
            await self._keeper.hold(flow_run.id)
        except Exception as exc:  # the run holds itself when its flow starts
            logger.warning("holding run %s failed (%s)", flow_run.id, exc)
            return False
        return True

    def _spawn(self, client: PrefectClient, flow_run: FlowRun) -> None:
        flow = self.flows[flow_run.deployment_id] if flow_run.deployment_id else None
        if flow is None:
            return
        context = (self._context or contextvars.copy_context()).copy()
        policy = flow_run.empirical_policy.model_copy(deep=True)  # the engine edits its own
        context.run(_as_polled.set, (flow_run.id, flow_run.flow_version, policy))
        task = asyncio.create_task(self._claim_and_execute(client, flow, flow_run), context=context)
        self._in_flight[flow_run.id] = task
        run_id = flow_run.id

        def forget(_task: asyncio.Task[None]) -> None:
            self._in_flight.pop(run_id, None)

        task.add_done_callback(forget)

    async def _claim_and_execute(
        self, client: PrefectClient, flow: Flow[..., Any], flow_run: FlowRun
    ) -> None:
        started = time.perf_counter()
        held = await self._claim(client, flow_run)
        if held is None:
            return  # not ours
        executor_managed.set(held)  # this task's own context
        try:
            await self._execute_one(flow, flow_run)
        finally:
            self.stats.record_held(flow_run.id, time.perf_counter() - started)
            if held and self._keeper is not None:
                # After the engine set the run's state: never a window where a Running run
                # has no holder while this process still executes it.
                try:
                    await self._keeper.release(flow_run.id)
                except Exception as exc:
                    logger.debug("releasing run %s failed: %s", flow_run.id, exc)

    async def _execute_one(self, flow: Flow[..., Any], flow_run: FlowRun) -> None:
        try:
            state = await run_flow(flow, flow_run=flow_run, return_type="state")  # type: ignore[misc]  # run_flow returns a coroutine for async flows
        except Pause:
            self.stats.suspended += 1
            return
        except (Abort, TerminationSignal, SystemExit) as exc:
            logger.warning("run %s ended by %s", flow_run.id, type(exc).__name__)
            self.stats.crashed += 1
            return
        except asyncio.CancelledError:
            self.stats.crashed += 1
            raise
        except Exception:
            logger.exception("run %s raised out of the engine", flow_run.id)
            self.stats.crashed += 1
            return
        if isinstance(state, State):
            if state.is_completed():
                self.stats.completed += 1
            elif state.is_paused():
                self.stats.suspended += 1
            elif state.is_failed():
                self.stats.failed += 1
            else:
                self.stats.crashed += 1

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        tasks = list(self._in_flight.values())
        _done, pending = await asyncio.wait(tasks, timeout=self.drain_seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)


async def deploy(flow: Flow[..., Any], name: str, *, tags: list[str] | None = None) -> UUID:
    """Register ``flow`` as deployment ``name`` (no work pool: this executor runs its runs)."""
    deployment = await flow.ato_deployment(name=name, tags=tags)
    deployment_id: UUID = await deployment.aapply()
    return deployment_id


async def ensure_deployment(flow: Flow[..., Any], name: str) -> tuple[UUID, bool]:
    """The id of deployment ``<flow name>/<name>``, created (no work pool) only when missing.

    An existing deployment is left as it is (``prefect deploy`` may have put it on a work pool
    with its own settings); returns ``(id, created)``.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            found = await client.read_deployment_by_name(f"{flow.name}/{name}")
        except ObjectNotFound:
            found = None
    if found is not None:
        return found.id, False
    return await deploy(flow, name), True
