"""The fault drills (``drills/``): the framework's own checks, and the drills that pass today,
each on real processes (PostgreSQL, the session's Prefect server, the fake Service Bus broker,
``orchestration worker`` and ``orchestration listen`` as subprocesses, the side-effect sink).

Drills that fail today (they found a bug that is being fixed elsewhere) are not run here; the
README's Reliability section lists them. ``./dev drills`` runs them all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from drills.__main__ import run_one
from drills.catalog import DRILLS
from drills.env import Platform
from drills.observe import Expect, Letter, Snapshot
from drills.report import Row, render_json, render_table
from tests.support.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]

#: The drills that pass on today's code and take under two minutes each.
PASSING = [
    "selfcheck",
    "duplicates",
    "listener-routed",
    "listener-pair",
    "worker-restart",
    "worker-survivor",
    "pg-terminate",
    "pg-restart",
    "lock-loss",
]


def snapshot(**overrides: Any) -> Snapshot:
    values: dict[str, Any] = {
        "stored": {("d1", "e1"): 1, ("d1", "e2"): 1},
        "runs": {"d1": ["COMPLETED"]},
        "keys": {"d1": Counter({"k1": 1, "k2": 1})},
        "outbox_pending": 0,
        "letters": [],
    }
    values.update(overrides)
    return Snapshot(**values)


def expect() -> Expect:
    wanted = Expect()
    wanted.add("d1", "e1", "e2")
    return wanted


def test_a_settled_system_has_no_problems() -> None:
    assert snapshot().problems(expect()) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"stored": {("d1", "e1"): 1}}, "1 events lost"),
        ({"stored": {("d1", "e1"): 2, ("d1", "e2"): 1}}, "1 events stored twice"),
        ({"stored": {("d1", "e1"): 1, ("d1", "e2"): 1, ("d1", "x"): 1}}, "unexpected events"),
        ({"runs": {"d1": ["COMPLETED", "COMPLETED"]}}, "d1: 2 runs, expected 1"),
        ({"runs": {"d1": ["RUNNING"]}}, "d1: run is RUNNING"),
        ({"keys": {"d1": Counter({"k1": 2, "k2": 1})}}, "key k1 seen 2 times"),
        ({"keys": {"d1": Counter({"k1": 1})}}, "1 idempotency keys, expected 2"),
        ({"outbox_pending": 3}, "3 outbox entries pending"),
        ({"letters": [Letter("m", None, None)]}, "a dead letter without a reason"),
    ],
)
def test_every_departure_is_a_problem(change: dict[str, Any], problem: str) -> None:
    problems = snapshot(**change).problems(expect())
    assert any(problem in p for p in problems), problems


def test_a_step_in_flight_at_a_kill_may_run_once_more_with_the_same_key() -> None:
    wanted = expect()
    wanted.extra_per_key = 1
    assert snapshot(keys={"d1": Counter({"k1": 2, "k2": 1})}).problems(wanted) == []
    assert snapshot(keys={"d1": Counter({"k1": 3, "k2": 1})}).problems(wanted) != []


def test_the_table_and_the_json_carry_every_row_and_the_verdict() -> None:
    good = Row("good", "nothing", "all fine").fill(snapshot(), expect(), sent=2, heal=1.5)
    bad = Row("bad", "a kill", "all fine").fill(snapshot(outbox_pending=1), expect(), 2, None)
    table = render_table([good, bad])
    assert "good" in table and "PASS" in table and "FAIL" in table and "1/2 drills passed" in table
    document = json.loads(render_json([good, bad]))
    assert [d["passed"] for d in document["drills"]] == [True, False]
    assert document["passed"] is False
    assert document["drills"][1]["problems"] == ["1 outbox entries pending"]


def test_a_skipped_drill_says_why_and_counts_as_passed() -> None:
    row = Row("pg-restart", "a restart", "all fine").skip("no PostgreSQL binaries")
    table = render_table([row])
    assert "SKIP" in table and "no PostgreSQL binaries" in table and "1/1 drills passed" in table
    assert json.loads(render_json([row]))["drills"][0]["skipped"] is True


def drills_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "drills", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_command_lists_its_drills_and_refuses_an_unknown_one() -> None:
    listed = drills_cli("--list")
    assert listed.returncode == 0, listed.stderr
    assert {line.split()[0] for line in listed.stdout.splitlines()} == set(DRILLS)
    unknown = drills_cli("no-such-drill")
    assert unknown.returncode == 2
    assert "no-such-drill" in unknown.stderr


@pytest.mark.integration
@pytest.mark.postgres
@pytest.mark.servicebus
@pytest.mark.slow
@pytest.mark.parametrize("name", PASSING)
async def test_drill_passes(
    name: str, postgres: PostgresServer, prefect_server: Any, shared_dir: Path
) -> None:
    # The session's server and PostgreSQL, not closed here; the logs outlive pytest's tmp dirs.
    workdir = Path(tempfile.mkdtemp(prefix="orch-drills-test-"))
    platform = Platform(postgres, prefect_server, workdir)
    row = await run_one(platform, DRILLS[name])
    assert row.passed, render_table([row]) + "\n" + "\n".join(row.problems)
