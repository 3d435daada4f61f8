"""``python -m bench [compare|throughput|suspended|all] [--reps N] [--runs N]``, and
``python -m bench ingress [--devices N --events N ...]`` (the ingress load test, bench/ingress.py),
``python -m bench validate [--repeat N]`` (worst validate time under the limits, bench/validate.py),
``python -m bench load [--devices N --events N --paced N --stock [N]]`` (the load test end to end on
real processes, bench/load.py), ``python -m bench scale [--executors 1 2 --api-processes 1 2]``
(the load test's phases for several executors and Prefect API processes, bench/scale.py).

- compare: the same 10-state workflow as a JSON definition through the interpreter and written by
  hand as a Prefect flow (same activity, same server, same in-process executor), several
  repetitions each, interleaved; prints both times (run duration as Prefect records it, and
  create-to-completed wall time) and the ratio.
- throughput: N runs of a 3-task definition through the in-process executor vs ``flow.serve`` in a
  subprocess (a new Python process per run, what Prefect's stock workers do).
- suspended: N runs suspend at an event wait; prints what one suspended run holds (executor tasks
  in flight, process memory), the resume latency (event recorded -> the run leaves Paused, its
  event is claimed, the run completes) and how many suspended runs per second are resumed
  and completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

# Before Prefect configures its logging: the bench prints its own lines.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

from prefect import flow, task  # after the logging setting above
from prefect.client.orchestration import PrefectClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEN = {
    "name": "bench-ten",
    "version": "1",
    "configuration": {"onFailure": "fail"},
    "startAt": "S1",
    "states": {
        f"S{i}": {
            "type": "task",
            "activity": "events.get",
            "input": {"deviceId": "bench-device"},
            "resultPath": f"$.state.s{i}",
            **({"next": f"S{i + 1}"} if i < 10 else {"end": True}),
        }
        for i in range(1, 11)
    },
}
THREE = {**TEN, "name": "bench-three", "states": {}}
THREE["states"] = {
    f"S{i}": {
        "type": "task",
        "activity": "events.get",
        "input": {"deviceId": "bench-device"},
        **({"next": f"S{i + 1}"} if i < 3 else {"end": True}),
    }
    for i in range(1, 4)
}
WAITING = {
    "name": "bench-wait",
    "version": "1",
    "configuration": {"onFailure": "fail"},
    "startAt": "Wait",
    "states": {
        "Wait": {
            "type": "wait",
            "event": {"name": "go", "timeoutSeconds": 3600, "timeoutNext": "Late"},
            "next": "Step",
        },
        "Step": {
            "type": "task",
            "activity": "events.get",
            "input": {"deviceId": "bench-device"},
            "end": True,
        },
        "Late": {"type": "fail", "error": "Bench.Late"},
    },
}


@task(persist_result=True, task_run_name="S{index}")
async def hand_step(index: int) -> dict[str, Any]:
    from flows.runtime import get_resources

    resources = await get_resources()
    ctx = resources.activity_context.for_call(idempotency_key=None, state=f"S{index}")
    return await resources.registry.call("events.get", ctx, {"deviceId": "bench-device"})


@flow(name="bench-hand-written", persist_result=True)
async def hand_written() -> dict[str, Any]:
    """The 10-state workflow written by hand: ten tasks in sequence, results kept."""
    state: dict[str, Any] = {}
    for index in range(1, 11):
        state[f"s{index}"] = await hand_step(index)
    return state


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def _p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Bench:
    def __init__(self, app_url: str, definitions: Path) -> None:
        self.app_url = app_url
        self.definitions = definitions
        self.ids: dict[str, uuid.UUID] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Bench:
        from prefect.client.orchestration import get_client

        from flows import runtime
        from flows.executor import Executor, deploy
        from flows.workflow import run_workflow
        from operations.observability import configure_metrics

        # Metrics are recorded as in production (their cost is part of the run); the export is
        # off so the console exporter does not print into the results.
        configure_metrics(exporter=os.environ.get("ORCH_OTEL_EXPORTER") or "none")
        runtime.configure(database_url=self.app_url)
        await runtime.get_resources()
        self.ids["interp"] = await deploy(run_workflow, "bench")
        self.ids["hand"] = await deploy(hand_written, "bench")
        self.executor = Executor(
            {self.ids["interp"]: run_workflow, self.ids["hand"]: hand_written},
            concurrency=200,
            poll_seconds=0.1,
            resumer_tick_seconds=0.2,
        )
        self.task = asyncio.create_task(self.executor.run())
        # One client for the bench's own calls: a new one builds an SSL context (~30 ms of CPU
        # on the loop the runs share).
        self.client = await self._stack.enter_async_context(get_client())
        return self

    @contextlib.asynccontextmanager
    async def api(self) -> AsyncIterator[PrefectClient]:
        """The bench's shared Prefect client (a new one outside ``async with Bench``)."""
        shared = getattr(self, "client", None)
        if shared is not None:
            yield shared
            return
        from prefect.client.orchestration import get_client

        async with get_client() as client:
            yield client

    async def __aexit__(self, *_: object) -> None:
        from flows import runtime

        await self._stack.aclose()
        self.executor.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await runtime.reset()

    async def create(self, kind: str, parameters: dict[str, Any] | None = None) -> uuid.UUID:
        """Create a run named and tagged at creation, as the CLI and the router do."""
        from flows.workflow import run_name, run_tags

        parameters = parameters or {}
        options: dict[str, Any] = {}
        if kind == "interp":
            name = Path(parameters["workflow"]).stem
            device = parameters.get("device_id")
            version = "1"
            options = {
                "name": run_name(name, device, uuid.uuid4().hex),
                "tags": run_tags(name, device, version),
            }
        async with self.api() as client:
            flow_run = await client.create_flow_run_from_deployment(
                self.ids[kind], parameters=parameters, **options
            )
        return flow_run.id

    async def workflow(self, document: dict[str, Any], **extra: Any) -> dict[str, Any]:
        """Parameters of a run of ``document``, pinned by hash as the CLI creates runs."""
        from flows.definitions import pin
        from interpreter.loader import load_definition

        path = self.definitions / f"{document['name']}.json"
        if not path.exists():
            path.write_text(json.dumps(document))
        digest = await pin(load_definition(json.dumps(document)))
        return {"workflow": str(path), "input": {}, "definition_hash": digest, **extra}

    async def wait_final(self, run_ids: list[uuid.UUID], deadline: float = 600) -> list[Any]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        end = time.monotonic() + deadline
        async with self.api() as client:
            while time.monotonic() < end:
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)),
                    limit=len(run_ids),
                )
                if len(runs) == len(run_ids) and all(r.state and r.state.is_final() for r in runs):
                    bad = [r for r in runs if r.state is None or not r.state.is_completed()]
                    if bad:
                        raise RuntimeError(f"{len(bad)} runs did not complete: {bad[0].state}")
                    return runs
                await asyncio.sleep(0.1)
        raise TimeoutError("runs did not finish in time")

    async def wait_paused(self, run_ids: list[uuid.UUID], deadline: float = 600) -> None:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        end = time.monotonic() + deadline
        async with self.api() as client:
            while time.monotonic() < end:
                runs = await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids)),
                    limit=len(run_ids),
                )
                if len(runs) == len(run_ids) and all(r.state and r.state.is_paused() for r in runs):
                    return
                await asyncio.sleep(0.2)
        raise TimeoutError("runs did not suspend in time")

    # --- the benchmarks ---------------------------------------------------------------------

    async def compare(self, reps: int) -> None:
        kinds = ("interp", "hand")
        durations: dict[str, list[float]] = {kind: [] for kind in kinds}
        walls: dict[str, list[float]] = {kind: [] for kind in kinds}
        held: dict[str, list[float]] = {kind: [] for kind in kinds}
        params = {"interp": await self.workflow(TEN), "hand": {}}
        for kind in kinds:  # warm-up: imports, caches, first deployment reads
            await self.wait_final([await self.create(kind, params[kind])])
        for _ in range(reps):
            for kind in kinds:
                started = time.perf_counter()
                run_id = await self.create(kind, params[kind])
                (run,) = await self.wait_final([run_id])
                walls[kind].append(time.perf_counter() - started)
                durations[kind].append(run.total_run_time.total_seconds())
                held[kind].append(await self.held(run_id))
        print(f"compare: 10-state workflow, {reps} repetitions each (interleaved)")
        print(
            "                          interpreter p50/p90     hand-written p50/p90   ratio p50/p90"
        )
        for label, values in (
            ("run time (Prefect)", durations),
            ("held by executor", held),
            ("create->completed", walls),
        ):
            i50, i90 = _p50(values["interp"]), _p90(values["interp"])
            h50, h90 = _p50(values["hand"]), _p90(values["hand"])
            print(
                f"  {label:<22} {i50 * 1000:7.1f} / {i90 * 1000:7.1f} ms   "
                f"{h50 * 1000:7.1f} / {h90 * 1000:7.1f} ms   {i50 / h50:.2f}x / {i90 / h90:.2f}x"
            )
        print("  target: interpreter within 1.10x of the hand-written flow")
        print(
            "  (run time: Running -> Completed as the server records it; held: claim -> the engine"
            " returns, post-run hooks such as the trail artifact included)"
        )

    async def held(self, run_id: uuid.UUID, deadline: float = 30) -> float:
        """How long the executor held the run (recorded once ``run_flow`` returns)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            seconds = self.executor.stats.held_seconds.get(run_id)
            if seconds is not None:
                return seconds
            await asyncio.sleep(0.01)
        raise TimeoutError(f"the executor did not finish run {run_id}")

    async def taken(
        self, run_id: uuid.UUID, device_id: str, since: float, deadline: float = 30
    ) -> tuple[float, float]:
        """When (epoch seconds) the run left Paused after ``since`` (as the server recorded it),
        and when it claimed the device's event (``consumed_at`` in the accumulator: the resumed
        run's claim step wrote it)."""
        from flows.runtime import get_resources

        async with self.api() as client:
            states = await client.read_flow_run_states(run_id)
        left = min(
            (
                s.timestamp.timestamp()
                for s in states
                if s.timestamp.timestamp() >= since and not s.is_paused()
            ),
            default=float("nan"),
        )
        resources = await get_resources()
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            claimed = [
                event.consumed_at.timestamp()
                for event in await resources.events.list(device_id)
                if event.consumed_at is not None
            ]
            if claimed:
                return left, min(claimed)
            await asyncio.sleep(0.2)
        return left, float("nan")

    async def throughput(self, runs: int) -> float:
        params = await self.workflow(THREE)
        await self.wait_final([await self.create("interp", params)])
        started = time.perf_counter()
        ids = [await self.create("interp", params) for _ in range(runs)]
        await self.wait_final(ids)
        rate = runs / (time.perf_counter() - started)
        print(f"throughput: {runs} runs of a 3-task definition")
        print(f"  in-process executor     {rate:6.2f} runs/s")
        return rate

    async def suspended(self, runs: int) -> None:
        from flows.runtime import get_resources
        from store.events import DeviceEvent

        resources = await get_resources()
        devices = [f"bench-{uuid.uuid4().hex[:10]}" for _ in range(runs)]
        params = [await self.workflow(WAITING, device_id=device) for device in devices]
        before = rss_mb()
        ids = [await self.create("interp", p) for p in params]
        await self.wait_paused(ids)
        print(f"suspended: {runs} runs waiting for an event")
        print(
            f"  held while waiting: {self.executor.in_flight} executor tasks, no process; "
            f"executor max RSS {rss_mb():.0f} MB (+{rss_mb() - before:.0f} MB over the batch)"
        )
        # Latency of one: record its event; from then until the run takes it (its state leaves
        # Paused as the server recorded it; it claims the event in the accumulator), and until it
        # has completed its next step.
        started = time.perf_counter()
        await resources.events.record(
            DeviceEvent(device_id=devices[0], event_id=uuid.uuid4().hex, name="go")
        )
        recorded = time.time()
        await self.wait_final(ids[:1])
        completed = time.perf_counter() - started
        left, claimed = await self.taken(ids[0], devices[0], recorded)
        print("  resume latency, from the event recorded:")
        print(f"    -> run leaves Paused (Resuming)  {left - recorded:.2f} s")
        print(f"    -> run claimed the event        {claimed - recorded:.2f} s")
        print(f"    -> run completed                 {completed:.2f} s")
        started = time.perf_counter()
        for device in devices[1:]:
            await resources.events.record(
                DeviceEvent(device_id=device, event_id=uuid.uuid4().hex, name="go")
            )
        await self.wait_final(ids[1:])
        rate = (runs - 1) / (time.perf_counter() - started)
        print(f"  resumed and completed   {rate:6.2f} runs/s")


async def serve_throughput(runs: int, definitions: Path, app_url: str, env: dict[str, str]) -> None:
    """The stock path: ``flow.serve`` in a subprocess, a new Python process per run."""
    from prefect.client.orchestration import get_client

    path = definitions / "bench-three.json"
    code = (
        "from flows.workflow import run_workflow\n"
        f"run_workflow.serve(name='bench-serve', limit={runs})\n"
    )
    child_env = {**os.environ, **env, "ORCH_DB_URL": app_url, "PYTHONPATH": str(ROOT)}
    child_env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
        [sys.executable, "-c", code], env=child_env, cwd=ROOT, start_new_session=True
    )
    try:
        async with get_client() as client:
            deployment = None
            end = time.monotonic() + 120
            while deployment is None and time.monotonic() < end:
                with contextlib.suppress(Exception):
                    deployment = await client.read_deployment_by_name("run-workflow/bench-serve")
                if deployment is None:
                    await asyncio.sleep(0.5)
            if deployment is None:
                raise TimeoutError("serve did not register its deployment")
            params = {"workflow": str(path), "input": {}}
            started = time.perf_counter()
            ids = []
            for _ in range(runs):
                flow_run = await client.create_flow_run_from_deployment(
                    deployment.id, parameters=params
                )
                ids.append(flow_run.id)
        bench = Bench.__new__(Bench)
        await bench.wait_final(ids)
        rate = runs / (time.perf_counter() - started)
        print(f"  flow.serve (process/run) {rate:6.2f} runs/s")
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)


def main() -> None:
    if sys.argv[1:2] == ["ingress"]:
        # The ingress load test has its own options (python -m bench ingress --help).
        from bench import ingress

        ingress_parser = argparse.ArgumentParser(
            prog="python -m bench ingress", description=ingress.__doc__
        )
        ingress.add_arguments(ingress_parser)
        asyncio.run(ingress.main(ingress_parser.parse_args(sys.argv[2:])))
        return
    if sys.argv[1:2] == ["load"]:
        # The end-to-end load test on real processes (bench/load.py).
        from bench import load

        raise SystemExit(load.run(sys.argv[2:]))
    if sys.argv[1:2] == ["scale"]:
        # Runs/s for 1 and 2 executors and API processes (bench/scale.py).
        from bench import scale

        raise SystemExit(scale.run(sys.argv[2:]))
    if sys.argv[1:2] == ["validate"]:
        # Pure: the worst validate time of documents under the limits (bench/validate.py).
        from bench import validate

        validate.main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "which", nargs="?", default="all", choices=["compare", "throughput", "suspended", "all"]
    )
    parser.add_argument("--reps", type=int, default=15, help="repetitions for compare")
    parser.add_argument("--runs", type=int, default=30, help="runs for throughput/suspended")
    args = parser.parse_args()

    from tests.support.postgres import start_postgres
    from tests.support.prefect_server import start_prefect_server

    postgres = start_postgres()
    if isinstance(postgres, str):
        raise SystemExit(f"bench needs PostgreSQL: {postgres}")
    server = start_prefect_server(postgres)
    os.environ.update(server.env)
    os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"
    app_url = postgres.sqlalchemy_url(postgres.create_database("benchapp"))
    definitions = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    # Runs read definition paths only inside the working directory or this one (the serve
    # subprocess reads bench-three.json by path, with no pinned hash).
    os.environ["ORCH_DEFINITIONS_DIRECTORY"] = str(definitions)

    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    async def run() -> None:
        async with Bench(app_url, definitions) as bench:
            if args.which in ("compare", "all"):
                await bench.compare(args.reps)
            if args.which in ("throughput", "all"):
                await bench.throughput(args.runs)
            if args.which in ("suspended", "all"):
                await bench.suspended(args.runs)
        if args.which in ("throughput", "all"):
            await serve_throughput(args.runs, definitions, app_url, server.env)

    try:
        with temporary_settings(
            updates={
                PREFECT_API_URL: server.api_url,
                PREFECT_HOME: server.home,
                PREFECT_LOCAL_STORAGE_PATH: server.home / "results",
                PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
            }
        ):
            asyncio.run(run())
    finally:
        server.stop()
        postgres.close()


if __name__ == "__main__":
    main()
