"""``orchestration run`` in the authoring loop: an invalid definition is refused with its problems
before any Prefect server starts, and a failed run ends in one summary (state, error, cause) on
stderr, not Prefect's traceback; ``--output json`` carries ``error`` and ``cause`` apart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_flow_harness import RUNTIME_DEFINITIONS
from tests.integration.test_flow_processes import _run_cli, flow_database_url

__all__ = ["flow_database_url"]

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
INVALID = REPO / "tests" / "fixtures" / "definitions" / "invalid"
#: A cold interpreter importing Prefect on a loaded machine; an embedded server would take longer.
DEADLINE_SECONDS = 120


def test_run_refuses_an_invalid_definition_before_any_server_starts(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ORCH_"))}
    environ.update({"PYTHONPATH": str(REPO), "ORCH_OTEL_EXPORTER": "none"})

    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", str(INVALID / "empty-states.json")],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "empty-states" in done.stderr
    assert "/states/P/branches/0/states" in done.stderr
    assert "Prefect server" not in done.stdout + done.stderr
    assert not (tmp_path / ".orchestration").exists()  # no embedded server was given a home


async def test_a_failed_run_prints_one_summary_not_a_traceback(
    prefect_server: Any, flow_database_url: str
) -> None:
    definition = str(RUNTIME_DEFINITIONS / "cli-fail.json")

    text = await asyncio.to_thread(_run_cli, prefect_server, flow_database_url, "run", definition)
    data = await asyncio.to_thread(
        _run_cli, prefect_server, flow_database_url, "run", definition, "--output", "json"
    )

    assert text.returncode == 1, text.stderr
    assert "Traceback" not in text.stderr, text.stderr
    assert "WorkflowFailedError" not in text.stderr, text.stderr
    assert "failed at Broken: Cli.Broken: this definition always fails" in text.stderr
    assert data.returncode == 1, data.stderr
    assert "Traceback" not in data.stderr, data.stderr
    summary = json.loads(data.stdout)
    assert (summary["status"], summary["state"]) == ("failed", "Broken")
    assert (summary["error"], summary["cause"]) == ("Cli.Broken", "this definition always fails")


async def test_run_leaves_no_deployment_behind(prefect_server: Any, flow_database_url: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    definition = str(RUNTIME_DEFINITIONS / "cli-fail.json")

    done = await asyncio.to_thread(_run_cli, prefect_server, flow_database_url, "run", definition)

    assert done.returncode == 1, done.stderr
    async with get_client() as client:
        left = await client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["run-workflow"]))
        )
    assert [d.name for d in left if d.name.startswith("local")] == []


def test_run_on_the_embedded_server_prints_no_dead_link(tmp_path: Path) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "ORCH_"))}
    environ.update({"PYTHONPATH": str(REPO), "ORCH_OTEL_EXPORTER": "none"})
    definition = REPO / "tests" / "fixtures" / "definitions" / "valid" / "succeed-output.json"

    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "run", str(definition), "-i", '{"id": 1, "a": 2}'],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    tail = done.stdout[done.stdout.index("succeeded") :]
    assert "view: http" not in tail, tail  # the server is stopped: its links no longer answer
    assert "prefect server start" in tail, tail
