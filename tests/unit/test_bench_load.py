"""The load bench's own parts (bench/load.py): its definition, what it reads from /proc and from
the server's access log, and the table it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bench.load import (
    SERVER_UNDER_LOAD,
    Phase,
    ServerWatch,
    definition,
    descendants,
    read_proc,
    render,
    server_settings,
)
from interpreter import load_definition, require_valid
from interpreter.simulate import Mocks, simulate
from tests.unit.definition_cases import BUILTIN_ACTIVITIES


def test_the_definition_waits_for_ready_then_completes_with_the_telemetry_count() -> None:
    loaded = load_definition(json.dumps(definition()))
    assert require_valid(loaded, activities=BUILTIN_ACTIVITIES) == []
    mocks = Mocks.model_validate(
        {
            "events": {"device.ready": [{}]},
            "states": {"ReadEvents": [{"output": {"events": [], "count": 7, "names": []}}]},
        }
    )
    got = simulate(loaded, mocks)
    assert (got.status, got.output) == ("succeeded", {"count": 7})
    assert simulate(loaded, Mocks.model_validate({})).error == "Bench.Late"


def test_proc_figures_of_this_process_and_its_children() -> None:
    own = read_proc(os.getpid())
    assert own is not None
    assert own.ppid == os.getppid()
    assert own.rss_mb > 1 and own.cpu > 0
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        end = time.monotonic() + 10
        while child.pid not in descendants(os.getpid()):
            assert time.monotonic() < end, "the child never showed up in /proc"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert read_proc(child.pid) is None  # reaped: gone from /proc


def test_requests_are_counted_from_the_offset_with_ids_folded(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        '12:00:00 | INFO | uvicorn.access - 1.2.3.4:1 - "GET /api/health HTTP/1.1" 200\n'
    )
    watch = ServerWatch(log, "unused")
    offset = watch.log_offset()
    run = "0b6e8f3c-1d2e-4f5a-8b9c-0d1e2f3a4b5c"
    with log.open("a") as out:
        out.write(f'x - "POST /api/flow_runs/{run}/set_state HTTP/1.1" 201\n')
        out.write(f'x - "GET /api/flow_runs/{run}?x=1 HTTP/1.1" 200\n')
        out.write(f'x - "POST /api/flow_runs/{run}/set_state HTTP/1.1" 409\n')
        out.write("12:00:01 | WARNING | Subscription queue is full, dropping message\n")
    assert watch.requests_since(offset) == Counter(
        {"POST /api/flow_runs/{id}/set_state": 2, "GET /api/flow_runs/{id}": 1}
    )
    assert watch.queue_full() == 1


def test_the_table_has_a_row_per_phase_with_per_run_figures() -> None:
    phase = Phase("executor", "start -> Suspended", 100, "runs", wall=50.0, runs=100)
    phase.latencies = [float(n) for n in range(1, 101)]
    phase.cpu = {"server": 30.0, "executor": 10.0, "pg": 5.0, "pg-cluster": 8.0, "bench": 2.0}
    phase.peak_mb = {"server": 250.0, "executor": 140.0, "pg": 120.0}
    phase.requests = Counter({"POST /api/flow_runs/{id}/set_state": 300})
    phase.server_events = 1500
    data = phase.as_dict()
    assert data["perSecond"] == 2.0
    assert (data["p50Seconds"], data["p99Seconds"]) == (50.5, 100.0)
    assert data["cpuSecondsPerRun"]["server"] == 0.3
    assert (data["apiRequestsPerRun"], data["serverEventsPerRun"]) == (3.0, 15.0)
    results = {
        "phases": [data],
        "verify": {
            "executor": {
                "runs": 100,
                "completed": 100,
                "outputCounts": {"50": 100},
                "eventsStored": 5100,
                "eventsExpected": 5100,
                "ok": True,
            }
        },
        "subscriptionQueueFull": 0,
        "conditions": {"devices": 100},
    }
    table = render(results)
    row = next(line for line in table.splitlines() if "start -> Suspended |" in line)
    assert "| 2.0 runs/s | 50.50 / 100.00 |" in row
    assert "0.300 / 0.100 / 0.050 (0.080) / 0.020" in row
    assert "| 3.0 | 15.0 |" in row
    assert "executor: 100/100 runs Completed" in table and "-> OK" in table


def test_the_server_runs_with_the_load_settings_unless_the_caller_sets_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in SERVER_UNDER_LOAD:
        monkeypatch.delenv(name, raising=False)
    assert server_settings() == {
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "20",
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "10",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "300",
    }
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE", "5")
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS", "15")
    assert server_settings() == {
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "5",
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "10",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_AFTER_SECONDS": "15",
    }
