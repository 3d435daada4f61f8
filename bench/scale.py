"""How runs/s grows with more executors and more Prefect API processes: ``python -m bench.scale``.

For each layout of ``--executors`` x ``--api-processes`` (default 1 and 2 of each: four layouts),
on fresh databases every time, the first phases of the load bench (``bench/load.py``, whose parts
this reuses): N devices' first events start N runs, all Suspended; E - 1 more events per device;
``device.ready`` for every device at once, all Completed; every run's output counted (verify).

- one API process: ``prefect server start`` as the tests start it (in-memory messaging, services
  in the same process).
- more: the layout of docs/OPERATIONS.md ("Scaling out"), started by
  ``tests/integration/test_server_redis.py``: ``--workers N`` on Redis (databases 7 and 8, flushed
  first), a services process, the schema migrated once. ``--redis-always`` uses it for one API
  process too (to tell Redis's cost from the second process's gain).
- executors: ``orchestration worker`` processes on the same deployment, the first started alone.

Every server process gets the same database pool (``--server-pool``) and every executor
``ORCH_DB_POOL_SIZE`` 4 (+4): PostgreSQL's 100 connections are shared with the machine's other
work. Per layout and phase: runs/s, p50/p99 latency, CPU-s per run of all server processes,
all executors and PostgreSQL, and the seconds per run they waited for a CPU (the machine's other
work); what the runs added to the Prefect and the app database (``pg_database_size``, KB per
run). Progress on stderr; the table, or ``--output json``, on stdout. Exit 1 if a layout's runs
did not all complete with every event counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import (
    BIN,
    EXECUTOR_DEPLOYMENT,
    ROOT,
    WORKFLOW,
    Child,
    Measure,
    Meter,
    ServerWatch,
    Side,
    definition,
    descendants,
    environment,
    run_side,
    say,
    spawn,
    verify,
)

__all__ = ["Layout", "main", "run"]

PHASES = ("start -> Suspended", "events recorded", "ready burst -> Completed")


@dataclass(frozen=True)
class Layout:
    executors: int
    api_processes: int
    redis: bool

    @property
    def label(self) -> str:
        server = f"{self.api_processes} API" + (" + services, Redis" if self.redis else "")
        return f"{self.executors} executor(s), {server}"


@dataclass
class Server:
    """What a layout's Prefect server is, however it was started."""

    api_url: str
    home: Path
    database: str
    log_path: Path
    env: dict[str, str]
    pids: dict[str, int]
    stop: Any


def _start_server(postgres: Any, layout: Layout, pool: tuple[int, int]) -> Server:
    from tests.support.prefect_server import client_env, start_prefect_server

    logging = {"PREFECT_SERVER_LOGGING_LEVEL": "INFO"}  # the access log: requests per run
    if not layout.redis:
        with environment(
            **logging,
            PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=None,
            PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE=str(pool[0]),
            PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW=str(pool[1]),
        ):
            single = start_prefect_server(postgres)
        environ = Path(f"/proc/{single.process.pid}/environ").read_bytes().decode()
        server_env = dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)
        database = server_env["PREFECT_API_DATABASE_CONNECTION_URL"].rsplit("/", 1)[1]
        return Server(
            single.api_url,
            single.home,
            database,
            single.log_path,
            single.env,
            {"server": single.process.pid},
            single.stop,
        )
    from tests.integration.test_server_redis import flush_redis, start_redis_prefect

    reason = flush_redis()
    if reason is not None:
        raise SystemExit(f"bench scale needs Redis for this layout: {reason}")
    multi = start_redis_prefect(postgres, layout.api_processes, pool=pool, extra_env=logging)
    # The API's master and its worker processes, and the services process: all are the server.
    pids = {"server": multi.api.pid, "services": multi.services.pid}
    for n, pid in enumerate(descendants(multi.api.pid)):
        pids[f"server-{n + 1}"] = pid
    for n, pid in enumerate(descendants(multi.services.pid)):
        pids[f"services-{n + 1}"] = pid
    env = client_env(multi.api_url, multi.home)
    return Server(multi.api_url, multi.home, multi.database, multi.log_path, env, pids, multi.stop)


def _summary(layout: Layout, phase: dict[str, Any], runs: int) -> dict[str, Any]:
    """One row: the phase's rate and latency, CPU-s per run (``runs``: the devices) summed over
    the server's processes and over the executors."""
    cpu: dict[str, float] = phase["cpuSeconds"]

    def share(prefixes: tuple[str, ...], runqueue: bool) -> float:
        total: float = sum(
            v
            for k, v in cpu.items()
            if k.startswith(prefixes) and k.endswith("-runqueue") == runqueue
        )
        return round(total / runs, 3)

    return {
        "layout": layout.label,
        "executors": layout.executors,
        "apiProcesses": layout.api_processes,
        "redis": layout.redis,
        "phase": phase["phase"],
        "count": phase["count"],
        "unit": phase["unit"],
        "wallSeconds": phase["wallSeconds"],
        "perSecond": phase["perSecond"],
        "p50Seconds": phase["p50Seconds"],
        "p99Seconds": phase["p99Seconds"],
        "cpuPerRun": {
            "server": share(("server", "services"), False),
            "executors": share(("executor",), False),
            "pg": round(cpu.get("pg", 0.0) / runs, 3),
            "pgCluster": round(cpu.get("pg-cluster", 0.0) / runs, 3),
        },
        "waitedForCpuPerRun": {
            "server": share(("server", "services"), True),
            "executors": share(("executor",), True),
        },
        "apiRequestsPerRun": phase["apiRequestsPerRun"],
        "serverEventsPerRun": phase["serverEventsPerRun"],
    }


async def database_sizes(admin_dsn: str, names: list[str]) -> list[int]:
    """``pg_database_size`` of each database, in bytes."""
    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

    connection = await asyncpg.connect(admin_dsn)
    try:
        return [int(await connection.fetchval("SELECT pg_database_size($1)", n)) for n in names]
    finally:
        await connection.close()


async def measure_layout(args: argparse.Namespace, layout: Layout) -> dict[str, Any]:
    """One layout on fresh databases: its phases and its verification."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    from flows.definitions import DefinitionPinner
    from listeners.local import open_ingress
    from listeners.settings import IngressSettings
    from store.settings import DatabaseSettings
    from tests.support.postgres import start_postgres

    postgres = await asyncio.to_thread(start_postgres)
    if isinstance(postgres, str):
        raise SystemExit(f"bench scale needs PostgreSQL: {postgres}")
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-scale-"))
    children: list[Child] = []
    say(f"layout: {layout.label}")
    server = await asyncio.to_thread(_start_server, postgres, layout, tuple(args.server_pool))
    saved_environ = dict(os.environ)
    try:
        app_db = await asyncio.to_thread(postgres.create_database, "benchscale")
        app_url = postgres.sqlalchemy_url(app_db)
        definitions = workdir / "definitions"
        definitions.mkdir()
        (definitions / f"{WORKFLOW}.json").write_text(json.dumps(definition(), indent=2))
        orch_env = {
            "ORCH_DB_URL": app_url,
            "ORCH_DB_POOL_SIZE": "4",
            "ORCH_DB_MAX_OVERFLOW": "4",
            "ORCH_DEFINITIONS_DIRECTORY": str(definitions),
            "ORCH_FLOW_DEFINITIONS_DIR": str(workdir / "pinned"),
            "ORCH_INGRESS_WORKFLOW": WORKFLOW,
            "ORCH_OTEL_EXPORTER": "none",
        }
        os.environ.update(orch_env)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(server.env)
        env.update({"PYTHONPATH": str(ROOT), **orch_env})
        argv = [str(BIN / "orchestration"), "worker", "--concurrency", str(args.concurrency)]
        for n in range(layout.executors):
            # The first alone: it migrates the app database and creates the deployment.
            child = spawn(f"executor{n + 1}", argv, env, workdir)
            children.append(child)
            if n == 0:
                await child.wait_for("executing runs of deployment", 180)
        for child in children[1:]:
            await child.wait_for("executing runs of deployment", 180)

        with temporary_settings(
            updates={
                PREFECT_API_URL: server.api_url,
                PREFECT_HOME: server.home,
                PREFECT_LOCAL_STORAGE_PATH: server.home / "results",
                PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
            }
        ):
            from prefect.client.orchestration import get_client

            async with get_client() as client:
                deployment = f"run-workflow/{EXECUTOR_DEPLOYMENT}"
                executor_id = str((await client.read_deployment_by_name(deployment)).id)
            meter = Meter(postgres.admin_dsn, [server.database, app_db])
            meter.pids.update(server.pids)
            for n, child in enumerate(children):
                meter.pids[f"executor{n + 1}"] = child.process.pid
            pool = DatabaseSettings(url=app_url, pool_size=4, max_overflow=4)
            databases = [server.database, app_db]
            sizes_before = await database_sizes(postgres.admin_dsn, databases)
            async with (
                meter,
                ServerWatch(server.log_path, postgres.asyncpg_dsn(server.database)) as watch,
            ):
                async with open_ingress(
                    database_url=app_url,
                    settings=IngressSettings(workflow=WORKFLOW, deployment=deployment),
                    database_settings=pool,
                    definitions=DefinitionPinner.from_environment(),
                ) as rt:
                    side = Side(
                        "executor",
                        "sc-",
                        args.devices,
                        args.events,
                        0,
                        0.0,
                        executor_id,
                        rt.local.send_many,
                    )
                    phases = await run_side(side, Measure(meter, watch), watch)
                    checked = await verify(side, watch, postgres.asyncpg_dsn(app_db))
                queue_full = watch.queue_full()
            sizes_after = await database_sizes(postgres.admin_dsn, databases)
        say(f"{layout.label}: verify {checked}")
        grown = [after - before for before, after in zip(sizes_before, sizes_after, strict=True)]
        return {
            "layout": layout.label,
            "rows": [_summary(layout, p.as_dict(), args.devices) for p in phases],
            "verify": checked,
            "subscriptionQueueFull": queue_full,
            # What the runs added to each database (after a VACUUM-free run: an upper bound).
            "kbPerRun": {
                "prefect": round(grown[0] / 1024 / args.devices, 1),
                "app": round(grown[1] / 1024 / args.devices, 1),
            },
            "loadAverage": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        for child in reversed(children):
            await asyncio.to_thread(child.stop)
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(postgres.close)
        os.environ.clear()
        os.environ.update(saved_environ)
        if os.environ.get("ORCH_BENCH_KEEP_LOGS") is None:
            shutil.rmtree(workdir, ignore_errors=True)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    layouts = [
        Layout(executors, api, redis=api > 1 or args.redis_always)
        for api in args.api_processes
        for executors in args.executors
    ]
    results: dict[str, Any] = {"layouts": []}
    for layout in layouts:
        results["layouts"].append(await measure_layout(args, layout))
    results["conditions"] = {
        "devices": args.devices,
        "events": args.events,
        "executorConcurrency": args.concurrency,
        "serverPool": args.server_pool,
        "cores": os.cpu_count(),
    }
    results["ok"] = all(layout["verify"]["ok"] for layout in results["layouts"])
    return results


def render(results: dict[str, Any]) -> str:
    lines = [
        "| layout | phase | n | wall s | rate | p50 / p99 s | CPU-s/run server / executors / pg"
        " | waited for CPU s/run server / executors | load avg |",
        "|" + "---|" * 9,
    ]
    for layout in results["layouts"]:
        for row in layout["rows"]:
            cpu, waited = row["cpuPerRun"], row["waitedForCpuPerRun"]
            latency = (
                f"{row['p50Seconds']:.2f} / {row['p99Seconds']:.2f}"
                if row["p50Seconds"] is not None
                else "-"
            )
            lines.append(
                f"| {row['layout']} | {row['phase']} | {row['count']} | {row['wallSeconds']}"
                f" | {row['perSecond']} {row['unit']}/s | {latency}"
                f" | {cpu['server']:.3f} / {cpu['executors']:.3f} / {cpu['pg']:.3f}"
                f" | {waited['server']:.3f} / {waited['executors']:.3f}"
                f" | {layout['loadAverage'][0]} |"
            )
    lines.append("")
    for layout in results["layouts"]:
        data = layout["verify"]
        lines.append(
            f"{layout['layout']}: {data['completed']}/{data['runs']} Completed, events stored"
            f" {data['eventsStored']}/{data['eventsExpected']},"
            f" queue full x {layout['subscriptionQueueFull']},"
            f" KB per run: Prefect {layout['kbPerRun']['prefect']}, app {layout['kbPerRun']['app']}"
            f" -> {'OK' if data['ok'] else 'MISMATCH'}"
        )
    lines.append(f"conditions: {json.dumps(results['conditions'])}")
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=200, help="devices (runs) per layout")
    parser.add_argument("--events", type=int, default=20, help="telemetry events per device")
    parser.add_argument(
        "--executors", type=int, nargs="+", default=[1, 2], help="executor counts to measure"
    )
    parser.add_argument(
        "--api-processes",
        type=int,
        nargs="+",
        default=[1, 2],
        help="Prefect API process counts to measure (above 1: Redis)",
    )
    parser.add_argument(
        "--redis-always", action="store_true", help="Redis and a services process for 1 too"
    )
    parser.add_argument(
        "--server-pool",
        type=int,
        nargs=2,
        default=[4, 6],
        metavar=("SIZE", "OVERFLOW"),
        help="each server process's database pool",
    )
    parser.add_argument("--concurrency", type=int, default=100, help="each executor's runs")
    parser.add_argument("--output", choices=["text", "json"], default="text")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.events < 1 or min(args.executors + args.api_processes) < 1:
        parser.error("--devices, --events, --executors and --api-processes must be >= 1")
    results = asyncio.run(main(args))
    print(json.dumps(results, indent=2) if args.output == "json" else render(results))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    # Before Prefect configures its logging: the bench prints its own lines.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    sys.exit(run(sys.argv[1:]))
