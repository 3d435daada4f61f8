"""The load test end to end on real processes: ``python -m bench load`` (``./dev bench load``).

Parts, all on this machine: PostgreSQL (the machine's, else a throwaway cluster), a Prefect server
on a fresh database of its own (its access log on: ``PREFECT_SERVER_LOGGING_LEVEL=INFO``; its
database pool 20 + 10 and runs marked ``Late`` after 300 s, as docs/OPERATIONS.md 1.4 recommends
under load, unless the caller sets ``PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE`` /
``_MAX_OVERFLOW`` / ``PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS``; other ``PREFECT_*``
variables of the caller reach it too), a fresh app database,
``orchestration worker`` as a subprocess (the in-process executor) and, in this process, the
ingress (``LocalIngress.send_many``, the listener's pipeline after the transport). Every device runs
``bench-load``: its first event starts the run, which waits for ``device.ready``, reads the
device's accumulated ``telemetry`` events (``events.get``) and completes with their count.

Phases (``--devices N``, ``--events E`` per device, ``--paced P``):

1. start: one ``telemetry`` event per device; N runs started -> all Suspended.
2. events: the other ``E - 1`` telemetry events of every device, while the runs are suspended.
3. burst: ``device.ready`` for the ``N - P`` other devices at once -> all Completed.
4. paced: ``device.ready`` for P devices, one every ``--pace`` seconds -> Completed; latency.

Per phase: wall time, runs/s (events/s), p50/p99 latency (event recorded -> run Suspended for
start, -> run Completed for burst and paced; a batch's record+route time for events), the peak
RSS of each process (server, executor, the PSS sum of the PostgreSQL backends of the two
databases), CPU-s per run of the server, the executor, those backends (sampled every second from
``/proc/<pid>/stat``) and the whole PostgreSQL cluster (postmaster with its reaped children: other
work on the machine counts there), the API requests per run (the server's access log) and the
server events per run (rows of its ``events`` table; by name, with its flow-run states, the new
connections to its database and the rows inserted and updated there, in the lines below the
table), and how long the server and the executor
waited for a CPU (``/proc/<pid>/task/*/schedstat``: the share of the machine's other work). At the
end: every run Completed, every run's output counted all E events, the device events all stored
(else exit 1), and how often the server log says "Subscription queue is full". ``--profile FILE``
runs the executor under cProfile (its main thread, the event loop) and prints its hottest functions.

``--stock N`` runs the same phases for N more devices whose runs go to a stock Prefect process
worker (``prefect worker start`` on a process work pool: a Python process per run), so the ratio
is measured in one invocation. Progress lines go to stderr; the table (or ``--output json``) to
stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORKFLOW = "bench-load"
STOCK_POOL = "bench-stock"
STOCK_DEPLOYMENT = "bench-stock"
EXECUTOR_DEPLOYMENT = "device-workflow"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
QUEUE_FULL = "Subscription queue is full"
_REQUEST = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/\S*) HTTP/')
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def definition() -> dict[str, Any]:
    """Wait for ``device.ready``, read the device's telemetry, complete with its count."""
    return {
        "name": WORKFLOW,
        "version": "1",
        "configuration": {"onFailure": "fail"},
        "startAt": "WaitReady",
        "states": {
            "WaitReady": {
                "type": "wait",
                "event": {"name": "device.ready", "timeoutSeconds": 7200, "timeoutNext": "Late"},
                "next": "ReadEvents",
            },
            "ReadEvents": {
                "type": "task",
                "activity": "events.get",
                "input": {"name": "telemetry"},
                "resultPath": "$.state.events",
                "next": "Done",
            },
            "Done": {"type": "succeed", "output": {"count": "$.state.events.count"}},
            "Late": {"type": "fail", "error": "Bench.Late", "cause": "no device.ready"},
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=200, help="devices (runs) of the executor")
    parser.add_argument("--events", type=int, default=50, help="telemetry events per device")
    parser.add_argument("--paced", type=int, default=20, help="devices whose ready is paced")
    parser.add_argument("--pace", type=float, default=0.5, help="seconds between paced readies")
    parser.add_argument("--concurrency", type=int, default=100, help="executor --concurrency")
    parser.add_argument(
        "--stock",
        type=int,
        nargs="?",
        const=10,
        default=0,
        metavar="N",
        help="also N devices (default 10) on a stock Prefect process worker",
    )
    parser.add_argument("--output", choices=["text", "json"], default="text")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="run the executor under cProfile (main thread: its event loop), stats to FILE;"
        " its top functions by own time go to stderr at the end",
    )


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes: CPU and memory from /proc ------------------------------------------------------


@dataclass(frozen=True)
class ProcSample:
    cpu: float  # utime + stime (s)
    children_cpu: float  # cutime + cstime of reaped children (s)
    rss_mb: float
    ppid: int


def read_proc(pid: int) -> ProcSample | None:
    """``/proc/<pid>/stat`` of a live process (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid 4, utime 14, stime 15, cutime 16, cstime 17, rss 24.
    return ProcSample(
        cpu=(int(fields[11]) + int(fields[12])) / TICK,
        children_cpu=(int(fields[13]) + int(fields[14])) / TICK,
        rss_mb=int(fields[21]) * PAGE / 2**20,
        ppid=int(fields[1]),
    )


def pss_mb(pid: int) -> float:
    """Proportional set size (shared pages split among their users); 0 if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def runqueue_wait(pid: int) -> float:
    """Seconds the process's threads were runnable but waited for a CPU (``schedstat``): how
    much the machine's other work held this process back."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += int(task.read_text().split()[1])
    return total / 1e9


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (a process worker's flow-run processes)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            sample = read_proc(int(entry.name))
            if sample is not None:
                parents.setdefault(sample.ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Meter:
    """CPU seconds and peak memory per role, sampled every second.

    Roles: ``server``, ``executor``, ``stock`` (the process worker with its flow-run processes:
    live ones sampled, exited ones through the worker's reaped-children time), ``bench`` (this
    process: the ingress), ``pg`` (backends of the bench's databases, each backend's last sampled
    CPU kept after it exits) and ``pg-cluster`` (postmaster with reaped children, plus live ones).
    """

    def __init__(self, pg_dsn: str, databases: list[str]) -> None:
        self.pids: dict[str, int] = {"bench": os.getpid()}
        self.pg_dsn = pg_dsn
        self.databases = databases
        self.backend_cpu: dict[int, float] = {}
        self.postmaster: int | None = None
        self.peak: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None

    async def __aenter__(self) -> Meter:
        import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

        self._connection = await asyncpg.connect(self.pg_dsn)
        backend = await self._connection.fetchval("SELECT pg_backend_pid()")
        sample = read_proc(int(backend))
        self.postmaster = sample.ppid if sample is not None else None
        await self.sample()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._connection.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            with contextlib.suppress(Exception):
                await self.sample()

    async def sample(self) -> dict[str, float]:
        """Sample now; returns cumulative CPU seconds per role."""
        cpu: dict[str, float] = {}
        for role, pid in self.pids.items():
            sample = read_proc(pid)
            if sample is None:
                continue
            cpu[role] = sample.cpu + sample.children_cpu
            if role != "bench":
                cpu[f"{role}-runqueue"] = runqueue_wait(pid)
            rss = sample.rss_mb
            if role == "stock":
                for child in descendants(pid):
                    child_sample = read_proc(child)
                    if child_sample is not None:
                        cpu[role] += child_sample.cpu
                        rss += child_sample.rss_mb
            self.peak[role] = max(self.peak.get(role, 0.0), rss)
        rows = await self._connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])", self.databases
        )
        memory = 0.0
        for row in rows:
            sample = read_proc(int(row["pid"]))
            if sample is not None:
                self.backend_cpu[int(row["pid"])] = sample.cpu
                memory += pss_mb(int(row["pid"]))
        self.peak["pg"] = max(self.peak.get("pg", 0.0), memory)
        cpu["pg"] = sum(self.backend_cpu.values())
        if self.postmaster is not None:
            root = read_proc(self.postmaster)
            if root is not None:
                total = root.cpu + root.children_cpu
                for child in descendants(self.postmaster):
                    child_sample = read_proc(child)
                    if child_sample is not None:
                        total += child_sample.cpu
                cpu["pg-cluster"] = total
        return cpu

    def reset_peaks(self) -> None:
        self.peak.clear()


# --- the server: access log, events table, runs ------------------------------------------------


class ServerWatch:
    """What the Prefect server did, read from its log and its database."""

    def __init__(self, log_path: Path, prefect_dsn: str) -> None:
        self.log_path = log_path
        self.prefect_dsn = prefect_dsn
        self._connection: Any = None

    async def __aenter__(self) -> ServerWatch:
        import asyncpg

        self._connection = await asyncpg.connect(self.prefect_dsn)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._connection.close()

    def log_offset(self) -> int:
        return self.log_path.stat().st_size

    def requests_since(self, offset: int) -> Counter[str]:
        """Access-log requests after byte ``offset``, by method and path (ids as ``{id}``)."""
        with self.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        found: Counter[str] = Counter()
        for match in _REQUEST.finditer(text):
            path = _ID.sub("{id}", match.group(2).split("?")[0])
            found[f"{match.group(1)} {path}"] += 1
        return found

    async def tallies(self) -> Counter[str]:
        """Server events by name and flow-run states by name so far (``event <name>``,
        ``state <name>``): what one phase added is the difference of two tallies."""
        found: Counter[str] = Counter()
        for row in await self._connection.fetch("SELECT event, count(*) FROM events GROUP BY 1"):
            found[f"event {row[0]}"] = int(row[1])
        for row in await self._connection.fetch(
            "SELECT name, count(*) FROM flow_run_state GROUP BY 1"
        ):
            found[f"state {row[0]}"] = int(row[1])
        # Connections opened to the server's database (PostgreSQL 14+): a pool too small for the
        # load opens and closes one per request that finds it busy.
        # And the rows it wrote (the issue counted ~445 inserted per resumed run); PostgreSQL
        # publishes a backend's counts when its transaction ends (within ~1 s of the phase's end).
        stats = await self._connection.fetchrow(
            "SELECT sessions, tup_inserted, tup_updated FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        found["database sessions opened"] = int(stats["sessions"] or 0)
        found["database rows inserted"] = int(stats["tup_inserted"] or 0)
        found["database rows updated"] = int(stats["tup_updated"] or 0)
        return found

    def queue_full(self) -> int:
        return self.log_path.read_text(errors="replace").count(QUEUE_FULL)

    async def events(self, settle: float = 15.0) -> int:
        """Rows of the ``events`` table once the persister has flushed (stable for 1.5 s)."""
        end = time.monotonic() + settle
        last, since = -1, time.monotonic()
        while True:
            count = int(await self._connection.fetchval("SELECT count(*) FROM events"))
            if count != last:
                last, since = count, time.monotonic()
            elif time.monotonic() - since >= 1.5 or time.monotonic() > end:
                return count
            await asyncio.sleep(0.3)

    async def runs(self, deployment_id: str) -> list[dict[str, Any]]:
        """The deployment's runs: id, device, state type/name, state timestamp (epoch s)."""
        rows = await self._connection.fetch(
            "SELECT id, tags, state_type::text AS state_type, state_name, state_timestamp"
            " FROM flow_run WHERE deployment_id = $1",
            deployment_id,
        )
        runs = []
        for row in rows:
            tags = json.loads(row["tags"]) if isinstance(row["tags"], str) else row["tags"]
            device = next((t.split(":", 1)[1] for t in tags if t.startswith("device:")), None)
            stamp = row["state_timestamp"]
            runs.append(
                {
                    "id": str(row["id"]),
                    "device": device,
                    "type": row["state_type"],
                    "name": row["state_name"],
                    "at": stamp.timestamp() if stamp is not None else float("nan"),
                }
            )
        return runs


# --- phases ----------------------------------------------------------------------------------


@dataclass
class Phase:
    side: str
    name: str
    count: int
    unit: str  # "runs" or "events"
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    requests: Counter[str] = field(default_factory=Counter)
    server_events: int = 0
    #: Server events and flow-run states by name added during the phase (``ServerWatch.tallies``).
    tallies: Counter[str] = field(default_factory=Counter)
    runs: int = 0  # runs the per-run figures divide by

    def as_dict(self) -> dict[str, Any]:
        per = max(self.runs, 1)
        ordered = sorted(self.latencies)
        return {
            "side": self.side,
            "phase": self.name,
            "count": self.count,
            "unit": self.unit,
            "wallSeconds": round(self.wall, 2),
            "perSecond": round(self.count / self.wall, 2) if self.wall else 0.0,
            "p50Seconds": round(statistics.median(ordered), 3) if ordered else None,
            "p99Seconds": round(percentile(ordered, 0.99), 3) if ordered else None,
            "cpuSeconds": {k: round(v, 2) for k, v in sorted(self.cpu.items())},
            "cpuSecondsPerRun": {k: round(v / per, 3) for k, v in sorted(self.cpu.items())},
            "peakMemoryMB": {k: round(v) for k, v in sorted(self.peak_mb.items())},
            "apiRequests": sum(self.requests.values()),
            "apiRequestsPerRun": round(sum(self.requests.values()) / per, 1),
            "topRequests": dict(self.requests.most_common(8)),
            "serverEvents": self.server_events,
            "serverEventsPerRun": round(self.server_events / per, 1),
            "serverTalliesPerRun": {
                name: round(count / per, 2) for name, count in self.tallies.most_common(16)
            },
        }


def percentile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Measure:
    """Boundaries of one phase: CPU, peaks, access log and the events table."""

    def __init__(self, meter: Meter, watch: ServerWatch) -> None:
        self.meter = meter
        self.watch = watch

    @contextlib.asynccontextmanager
    async def phase(self, phase: Phase) -> AsyncIterator[Phase]:
        events_before = await self.watch.events(settle=5.0)
        tallies_before = await self.watch.tallies()
        offset = self.watch.log_offset()
        cpu_before = await self.meter.sample()
        self.meter.reset_peaks()
        started = time.perf_counter()
        say(f"{phase.side}: {phase.name}: {phase.count} {phase.unit} ...")
        yield phase
        phase.wall = time.perf_counter() - started
        cpu_after = await self.meter.sample()
        phase.cpu = {
            role: cpu_after[role] - cpu_before.get(role, 0.0)
            for role in cpu_after
            if role in cpu_before
        }
        phase.peak_mb = dict(self.meter.peak)
        phase.server_events = await self.watch.events() - events_before
        phase.tallies = await self.watch.tallies() - tallies_before
        phase.requests = self.watch.requests_since(offset)
        say(
            f"{phase.side}: {phase.name}: done in {phase.wall:.1f} s"
            f" ({phase.count / phase.wall:.2f} {phase.unit}/s)"
        )


async def wait_runs(
    watch: ServerWatch,
    deployment_id: str,
    devices: set[str],
    target: str,
    label: str,
    deadline: float,
) -> dict[str, dict[str, Any]]:
    """Until every device's run is in state type ``target``; raises on a run that ended
    otherwise or at the deadline. Returns the runs by device."""
    end = time.monotonic() + deadline
    last_said = 0.0
    while True:
        runs = {r["device"]: r for r in await watch.runs(deployment_id) if r["device"] in devices}
        done = sum(1 for r in runs.values() if r["type"] == target)
        bad = [r for r in runs.values() if r["type"] in ("FAILED", "CRASHED", "CANCELLED")]
        if bad:
            raise SystemExit(f"{label}: run {bad[0]['id']} ended {bad[0]['name']}")
        if done == len(devices):
            return runs
        if time.monotonic() - last_said > 10:
            states = Counter(str(r["name"]) for r in runs.values())
            say(f"{label}: {done}/{len(devices)} {target.lower()} ({dict(states)})")
            last_said = time.monotonic()
        if time.monotonic() > end:
            raise SystemExit(f"{label}: {done}/{len(devices)} {target.lower()} after {deadline}s")
        await asyncio.sleep(0.5)


@dataclass
class Side:
    """One population of devices and where its runs execute."""

    name: str  # "executor" or "stock"
    prefix: str
    devices: int
    events: int
    paced: int
    pace: float
    deployment_id: str
    send_many: Callable[[Sequence[Any]], Any]
    concurrency: int = 8
    batch: int = 100

    def device_ids(self) -> list[str]:
        return [f"{self.prefix}{index:05d}" for index in range(self.devices)]


async def send_batches(
    side: Side, messages_by_worker: list[list[Any]], times: dict[str, float]
) -> list[float]:
    """Send each worker's messages in order, ``side.batch`` at a time; per message, the time its
    batch took (record + route). ``times`` gets the epoch second each device's batch returned."""
    from listeners.pipeline import Disposition

    latencies: list[float] = []

    async def worker(messages: list[Any]) -> None:
        for start in range(0, len(messages), side.batch):
            batch = messages[start : start + side.batch]
            began = time.perf_counter()
            outcomes = await side.send_many(batch)
            latencies.extend([time.perf_counter() - began] * len(batch))
            now = time.time()
            for message, outcome in zip(batch, outcomes, strict=True):
                if outcome.disposition is not Disposition.COMPLETE:
                    raise SystemExit(f"event refused: {outcome.reason}: {outcome.description}")
                times[message.session_id] = now

    await asyncio.gather(*(worker(m) for m in messages_by_worker if m))
    return latencies


async def run_side(side: Side, measure: Measure, watch: ServerWatch) -> list[Phase]:
    from listeners.local import event_message

    devices = side.device_ids()
    lanes = min(side.concurrency, len(devices)) or 1
    phases: list[Phase] = []
    deadline = max(600.0, side.devices * 3.0)

    def spread(make: Callable[[str], list[Any]], owners: list[str]) -> list[list[Any]]:
        # Each lane owns a set of devices (their order kept, as Service Bus sessions do).
        per_lane: list[list[Any]] = [[] for _ in range(lanes)]
        for index, device in enumerate(owners):
            per_lane[index % lanes].extend(make(device))
        return per_lane

    def telemetry(n: int) -> Callable[[str], list[Any]]:
        return lambda d: [event_message(d, "telemetry", {"n": n}, event_id=f"{d}-t{n}")]

    # 1. start: the first event of every device starts its run; all suspend.
    first: dict[str, float] = {}
    async with measure.phase(Phase(side.name, "start -> Suspended", side.devices, "runs")) as ph:
        await send_batches(side, spread(telemetry(0), devices), first)
        runs = await wait_runs(
            watch, side.deployment_id, set(devices), "PAUSED", f"{side.name} start", deadline
        )
        ph.latencies = [runs[d]["at"] - first[d] for d in devices]
        ph.runs = side.devices
    phases.append(ph)

    # 2. events: the rest of every device's telemetry while its run waits.
    if side.events > 1:
        total = side.devices * (side.events - 1)

        def rest(d: str) -> list[Any]:
            return [
                event_message(d, "telemetry", {"n": n}, event_id=f"{d}-t{n}")
                for n in range(1, side.events)
            ]

        async with measure.phase(Phase(side.name, "events recorded", total, "events")) as ph:
            ph.latencies = await send_batches(side, spread(rest, devices), {})
            ph.runs = side.devices
        phases.append(ph)

    def ready(d: str) -> list[Any]:
        return [event_message(d, "device.ready", {}, event_id=f"{d}-ready")]

    # 3. burst: ready for all but the paced devices at once.
    paced = min(side.paced, side.devices)
    burst = devices[paced:]
    if burst:
        sent: dict[str, float] = {}
        async with measure.phase(
            Phase(side.name, "ready burst -> Completed", len(burst), "runs")
        ) as ph:
            await send_batches(side, spread(ready, burst), sent)
            runs = await wait_runs(
                watch, side.deployment_id, set(burst), "COMPLETED", f"{side.name} burst", deadline
            )
            ph.latencies = [runs[d]["at"] - sent[d] for d in burst]
            ph.runs = len(burst)
        phases.append(ph)

    # 4. paced: one ready every --pace seconds (the load's shape, not a wait for a result).
    if paced:
        sent = {}
        chosen = devices[:paced]
        async with measure.phase(Phase(side.name, "paced ready -> Completed", paced, "runs")) as ph:
            for device in chosen:
                await send_batches(side, [ready(device)], sent)
                await asyncio.sleep(side.pace)
            runs = await wait_runs(
                watch, side.deployment_id, set(chosen), "COMPLETED", f"{side.name} paced", deadline
            )
            ph.latencies = [runs[d]["at"] - sent[d] for d in chosen]
            ph.runs = paced
        phases.append(ph)
    return phases


async def verify(side: Side, watch: ServerWatch, app_dsn: str) -> dict[str, Any]:
    """Every run Completed, each output counted all of its device's telemetry, all stored."""
    import asyncpg
    from prefect.client.orchestration import get_client

    devices = set(side.device_ids())
    runs = [r for r in await watch.runs(side.deployment_id) if r["device"] in devices]
    completed = [r for r in runs if r["type"] == "COMPLETED"]
    counts: Counter[int] = Counter()
    async with get_client() as client:
        semaphore = asyncio.Semaphore(16)

        async def output(run_id: str) -> int:
            async with semaphore:
                flow_run = await client.read_flow_run(run_id)  # type: ignore[arg-type]
                assert flow_run.state is not None
                value = await flow_run.state.aresult(raise_on_failure=False)
            return int(value["count"]) if isinstance(value, dict) else -1

        for value in await asyncio.gather(*(output(r["id"]) for r in completed)):
            counts[value] += 1
    connection = await asyncpg.connect(app_dsn)
    try:
        stored = await connection.fetchval(
            "SELECT count(*) FROM device_events WHERE device_id LIKE $1", f"{side.prefix}%"
        )
    finally:
        await connection.close()
    expected = side.devices * (side.events + 1)
    ok = (
        len(runs) == side.devices
        and len(completed) == side.devices
        and counts == Counter({side.events: side.devices})
        and stored == expected
    )
    return {
        "runs": len(runs),
        "completed": len(completed),
        "outputCounts": {str(k): v for k, v in sorted(counts.items())},
        "eventsStored": int(stored),
        "eventsExpected": expected,
        "ok": ok,
    }


# --- setup -----------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for(self, text: str, deadline: float) -> None:
        end = time.monotonic() + deadline
        while text not in self.log():
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n{self.log()[-3000:]}")
            if time.monotonic() > end:
                raise SystemExit(
                    f"{self.name}: no {text!r} in {deadline:g}s:\n{self.log()[-3000:]}"
                )
            await asyncio.sleep(0.3)

    def stop(self, signals: int = 2) -> None:
        for _ in range(signals):  # prefect worker ignores the first SIGTERM more often than not
            if self.process.poll() is not None:
                return
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=20)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def spawn(name: str, argv: list[str], env: dict[str, str], workdir: Path) -> Child:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Child(name, process, log_path)


async def create_stock_deployment(env: dict[str, str], executor_deployment: str) -> str:
    """A process work pool and ``run-workflow/bench-stock`` on it, running from this checkout."""
    from prefect.client.orchestration import get_client

    done = await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "prefect"), "work-pool", "create", STOCK_POOL, "--type", "process"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"work-pool create failed: {done.stdout!r} {done.stderr!r}")
    async with get_client() as client:
        template = await client.read_deployment_by_name(executor_deployment)
        deployment_id = await client.create_deployment(
            flow_id=template.flow_id,
            name=STOCK_DEPLOYMENT,
            work_pool_name=STOCK_POOL,
            entrypoint="flows/workflow.py:run_workflow",
            path=str(ROOT),
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
            ],
            parameter_openapi_schema=template.parameter_openapi_schema,
        )
    return str(deployment_id)


def print_profile(path: Path, top: int = 25) -> None:
    """The executor's hottest functions (own time, then cumulative) on stderr."""
    import io
    import pstats

    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(str(path), stream=out).sort_stats(order).print_stats(top)
        say(f"executor profile by {order} ({path}):\n{out.getvalue()}")


@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """``os.environ`` with ``values`` set (None: removed) for the block's duration."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


#: The Prefect server's settings under load (docs/OPERATIONS.md 1.4), unless the caller sets them.
SERVER_UNDER_LOAD = {
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "10",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "300",
}


def server_settings() -> dict[str, str]:
    """``SERVER_UNDER_LOAD`` with the caller's values where it set them."""
    return {name: os.environ.get(name, value) for name, value in SERVER_UNDER_LOAD.items()}


async def main(args: argparse.Namespace) -> dict[str, Any]:
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
    from tests.support.prefect_server import start_prefect_server

    postgres = await asyncio.to_thread(start_postgres)
    if isinstance(postgres, str):
        raise SystemExit(f"bench load needs PostgreSQL: {postgres}")
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-load-"))
    children: list[Child] = []
    # The server logs every request (uvicorn's access log at INFO): the API requests per run.
    # Its database pool and late-runs threshold are the ones docs/OPERATIONS.md 1.4 recommends
    # under load unless the caller sets others (Prefect's default pool 5 + 10 opens ~1.4 new
    # connections per run here; its default 15 s marks ~90% of 1,000 runs started at once Late).
    with environment(
        PREFECT_SERVER_LOGGING_LEVEL="INFO",
        PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=None,
        **server_settings(),
    ):
        server = await asyncio.to_thread(start_prefect_server, postgres)
    try:
        environ = (
            await asyncio.to_thread(Path(f"/proc/{server.process.pid}/environ").read_bytes)
        ).decode()
        server_env = dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)
        prefect_db = server_env["PREFECT_API_DATABASE_CONNECTION_URL"].rsplit("/", 1)[1]
        app_db = await asyncio.to_thread(postgres.create_database, "benchload")
        app_url = postgres.sqlalchemy_url(app_db)
        definitions = workdir / "definitions"
        definitions.mkdir()
        (definitions / f"{WORKFLOW}.json").write_text(json.dumps(definition(), indent=2))
        orch_env = {
            "ORCH_DB_URL": app_url,
            "ORCH_DEFINITIONS_DIRECTORY": str(definitions),
            "ORCH_FLOW_DEFINITIONS_DIR": str(workdir / "pinned"),
            "ORCH_INGRESS_WORKFLOW": WORKFLOW,
            "ORCH_OTEL_EXPORTER": "none",
        }
        os.environ.update(orch_env)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(server.env)
        env.update({"PYTHONPATH": str(ROOT), **orch_env})

        executor = spawn(
            "executor",
            [
                *(
                    [sys.executable, "-m", "cProfile", "-o", str(args.profile), "-m", "cli.main"]
                    if args.profile
                    else [str(BIN / "orchestration")]
                ),
                "worker",
                "--concurrency",
                str(args.concurrency),
            ],
            env,
            workdir,
        )
        children.append(executor)
        await executor.wait_for("executing runs of deployment", 180)
        say(
            f"server pid {server.process.pid} (log {server.log_path}), executor pid"
            f" {executor.process.pid} (logs in {workdir})"
        )

        results: dict[str, Any] = {"phases": [], "verify": {}}
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
                executor_id = str(
                    (await client.read_deployment_by_name(f"run-workflow/{EXECUTOR_DEPLOYMENT}")).id
                )
            meter = Meter(postgres.admin_dsn, [prefect_db, app_db])
            meter.pids.update({"server": server.process.pid, "executor": executor.process.pid})
            pool = DatabaseSettings(url=app_url, pool_size=8, max_overflow=4)
            async with (
                meter,
                ServerWatch(server.log_path, postgres.asyncpg_dsn(prefect_db)) as watch,
            ):
                measure = Measure(meter, watch)
                async with open_ingress(
                    database_url=app_url,
                    settings=IngressSettings(
                        workflow=WORKFLOW, deployment=f"run-workflow/{EXECUTOR_DEPLOYMENT}"
                    ),
                    database_settings=pool,
                    definitions=DefinitionPinner.from_environment(),
                ) as rt:
                    side = Side(
                        "executor",
                        "ld-",
                        args.devices,
                        args.events,
                        args.paced,
                        args.pace,
                        executor_id,
                        rt.local.send_many,
                    )
                    results["phases"] += [p.as_dict() for p in await run_side(side, measure, watch)]
                    results["verify"]["executor"] = await verify(
                        side, watch, postgres.asyncpg_dsn(app_db)
                    )
                    say(f"executor: verify {results['verify']['executor']}")
                if args.stock:
                    stock_id = await create_stock_deployment(
                        env, f"run-workflow/{EXECUTOR_DEPLOYMENT}"
                    )
                    stock = spawn(
                        "stock-worker",
                        [
                            str(BIN / "prefect"),
                            "worker",
                            "start",
                            "--pool",
                            STOCK_POOL,
                            "--type",
                            "process",
                        ],
                        env,
                        workdir,
                    )
                    children.append(stock)
                    await stock.wait_for("started", 180)
                    meter.pids["stock"] = stock.process.pid
                    async with open_ingress(
                        database_url=app_url,
                        settings=IngressSettings(
                            workflow=WORKFLOW, deployment=f"run-workflow/{STOCK_DEPLOYMENT}"
                        ),
                        database_settings=pool,
                        definitions=DefinitionPinner.from_environment(),
                    ) as rt:
                        side = Side(
                            "stock",
                            "st-",
                            args.stock,
                            args.events,
                            min(args.paced, max(1, args.stock // 4)),
                            max(args.pace, 2.0),
                            stock_id,
                            rt.local.send_many,
                        )
                        results["phases"] += [
                            p.as_dict() for p in await run_side(side, measure, watch)
                        ]
                        results["verify"]["stock"] = await verify(
                            side, watch, postgres.asyncpg_dsn(app_db)
                        )
                        say(f"stock: verify {results['verify']['stock']}")
                results["subscriptionQueueFull"] = watch.queue_full()
        results["conditions"] = {
            "devices": args.devices,
            "events": args.events,
            "paced": args.paced,
            "pace": args.pace,
            "executorConcurrency": args.concurrency,
            "serverSettings": server_settings(),
            "stock": args.stock,
            "cores": os.cpu_count(),
            "loadAverage": [round(x, 2) for x in os.getloadavg()],
        }
        results["ok"] = all(v["ok"] for v in results["verify"].values())
        return results
    finally:
        for child in reversed(children):
            await asyncio.to_thread(child.stop)
        if args.profile is not None and args.profile.exists():
            print_profile(args.profile)
        await asyncio.to_thread(server.stop)
        await asyncio.to_thread(postgres.close)
        if os.environ.get("ORCH_BENCH_KEEP_LOGS") is None:
            shutil.rmtree(workdir, ignore_errors=True)


def render(results: dict[str, Any]) -> str:
    """The table, one row per side and phase."""
    head = (
        "| side | phase | n | wall s | rate | p50 / p99 s | CPU-s/run server / executor / pg"
        " (cluster) / ingress | peak MB server / executor / pg | API req/run | server events/run |"
    )
    lines = [head, "|" + "---|" * 10]
    for p in results["phases"]:
        cpu = p["cpuSecondsPerRun"]
        mem = p["peakMemoryMB"]
        worker = "stock" if p["side"] == "stock" else "executor"
        rate = f"{p['perSecond']} {p['unit']}/s"
        latency = (
            f"{p['p50Seconds']:.2f} / {p['p99Seconds']:.2f}" if p["p50Seconds"] is not None else "-"
        )
        lines.append(
            f"| {p['side']} | {p['phase']} | {p['count']} | {p['wallSeconds']} | {rate} | {latency}"
            f" | {cpu.get('server', 0):.3f} / {cpu.get(worker, 0):.3f} / {cpu.get('pg', 0):.3f}"
            f" ({cpu.get('pg-cluster', 0):.3f}) / {cpu.get('bench', 0):.3f}"
            f" | {mem.get('server', 0)} / {mem.get(worker, 0)} / {mem.get('pg', 0)}"
            f" | {p['apiRequestsPerRun']} | {p['serverEventsPerRun']} |"
        )
    lines.append("")
    for name, data in results["verify"].items():
        lines.append(
            f"{name}: {data['completed']}/{data['runs']} runs Completed, output counts"
            f" {data['outputCounts']}, events stored"
            f" {data['eventsStored']}/{data['eventsExpected']}"
            f" -> {'OK' if data['ok'] else 'MISMATCH'}"
        )
    lines.append(f'server log: "{QUEUE_FULL}" x {results["subscriptionQueueFull"]}')
    lines.append("waited for a CPU (runnable, not running; s per run) server / executor|stock:")
    for p in results["phases"]:
        cpu = p["cpuSecondsPerRun"]
        worker = "stock" if p["side"] == "stock" else "executor"
        lines.append(
            # Summed over live threads: one that exited takes its wait along (clamped at 0).
            f"  {p['side']} {p['phase']}: {max(cpu.get('server-runqueue', 0), 0):.3f}"
            f" / {max(cpu.get(f'{worker}-runqueue', 0), 0):.3f}"
        )
    lines.append("top requests per phase:")
    for p in results["phases"]:
        top = ", ".join(f"{k} {v}" for k, v in list(p["topRequests"].items())[:5])
        lines.append(f"  {p['side']} {p['phase']}: {top}")
    lines.append("server events and flow-run states per run, by name:")
    for p in results["phases"]:
        tallies = ", ".join(f"{k} {v}" for k, v in p["serverTalliesPerRun"].items())
        lines.append(f"  {p['side']} {p['phase']}: {tallies}")
    lines.append(f"conditions: {json.dumps(results['conditions'])}")
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench load",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.devices < 1 or args.events < 1 or args.paced < 0 or args.stock < 0:
        parser.error("--devices and --events must be >= 1, --paced and --stock >= 0")
    results = asyncio.run(main(args))
    if args.output == "json":
        print(json.dumps(results, indent=2))
    else:
        print(render(results))
    return 0 if results["ok"] else 1
