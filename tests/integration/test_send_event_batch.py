"""``orchestration send-event --file``: many events from JSON lines in one process.

Real processes on a real Prefect server and PostgreSQL: the command records every valid line (in
batches, through the same pipeline as the listener), names each refused line by its number, prints
one summary, and exits 1 when any line was refused, 0 otherwise. The runs it starts belong to an
idle deployment (nobody executes them): what is checked is what the ingress stored and answered.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import pytest

from tests.integration.test_router import (  # noqa: F401 - module fixtures used by name
    app_db_url,
    device,
    idle_deployment,
)

pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROBE = {
    "name": "probe",
    "version": "1",
    "startAt": "Done",
    "states": {"Done": {"type": "succeed", "output": {}}},
}


def _env(prefect_server: Any, app_db: str, deployment: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "defs").mkdir(exist_ok=True)
    (tmp_path / "defs" / "probe.json").write_text(json.dumps(PROBE))
    env = {**os.environ, **prefect_server.env}
    env.update(
        {
            "ORCH_DB_URL": app_db,
            "ORCH_INGRESS_WORKFLOW": "probe",
            "ORCH_INGRESS_DEPLOYMENT": deployment,
            "ORCH_DEFINITIONS_DIRECTORY": str(tmp_path / "defs"),
            "ORCH_FLOW_DEFINITIONS_DIR": str(tmp_path / "pinned"),
            "PYTHONPATH": str(REPO),
            "ORCH_OTEL_EXPORTER": "none",
        }
    )
    return env


async def _send(
    args: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "cli.main", "send-event", *args],
        cwd=REPO,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def _stored(app_db: str, device_id: str) -> list[str]:
    """The event ids stored for the device, in sequence order."""
    connection = await asyncpg.connect(app_db.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows = await connection.fetch(
            "SELECT event_id FROM device_events WHERE device_id = $1 ORDER BY sequence", device_id
        )
    finally:
        await connection.close()
    return [row["event_id"] for row in rows]


async def test_a_file_with_malformed_lines_records_every_valid_line_and_names_the_others(
    prefect_server: Any,
    app_db_url: str,  # noqa: F811 - the fixture
    idle_deployment: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    one, two = device(), device()
    lines = [
        json.dumps({"device": one, "name": "hello", "eventId": "a1"}),
        json.dumps({"device": two, "name": "hello", "payload": {"n": 1}, "eventId": "b1"}),
        '{"device": "' + one + '", "name": ',  # line 3: cut short
        json.dumps({"device": one, "name": "telemetry", "payload": {"n": 2}, "eventId": "a2"}),
        "",  # blank lines are skipped
        json.dumps({"device": two, "payload": {}}),  # line 6: no name
        json.dumps({"device": one, "name": "hello", "eventId": "a1"}),  # a redelivery
        json.dumps({"device": two, "name": "x", "eventId": "b2", "colour": "red"}),  # line 8
        json.dumps({"device": two, "name": "telemetry", "eventId": "b3"}),
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    env = _env(prefect_server, app_db_url, idle_deployment, tmp_path)

    done = await _send(["--file", str(path)], env)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "line 3: MalformedLine: not JSON" in done.stderr, done.stderr
    assert "line 6: MalformedLine: name must be a non-empty string" in done.stderr, done.stderr
    assert "line 8: MalformedLine: unknown field(s) colour" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("8 events: recorded=4 duplicate=1 refused=3 (lines 3, 6, 8)"), summary
    # Nothing of the valid lines is lost, in file order per device.
    assert await _stored(app_db_url, one) == ["a1", "a2"]
    assert await _stored(app_db_url, two) == ["b1", "b3"]

    # The same file again: every valid line is a duplicate now; JSON names the refused lines.
    again = await _send(["--file", str(path), "--output", "json"], env)
    assert again.returncode == 1, again.stdout + again.stderr
    data = json.loads(again.stdout)
    assert (data["events"], data["recorded"], data["duplicate"]) == (8, 0, 5)
    assert [item["line"] for item in data["refused"]] == [3, 6, 8]
    assert {item["reason"] for item in data["refused"]} == {"MalformedLine"}


async def test_stdin_lines_are_recorded_in_batches_with_one_summary(
    prefect_server: Any,
    app_db_url: str,  # noqa: F811 - the fixture
    idle_deployment: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    devices = [device() for _ in range(3)]
    # More lines than one batch holds (cli.ingress.FILE_BATCH): order kept across batches.
    count = 150
    lines = [
        json.dumps({"device": d, "name": "telemetry", "payload": {"n": n}, "eventId": f"e{n}"})
        for n in range(count)
        for d in devices
    ]
    env = _env(prefect_server, app_db_url, idle_deployment, tmp_path)

    done = await _send(["--file", "-", "--output", "json"], env, stdin="\n".join(lines))

    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert (data["events"], data["recorded"], data["duplicate"]) == (450, 450, 0)
    assert data["refused"] == []
    # Each device's first event started its run; the others found it busy.
    assert data["actions"].get("started") == 3, data["actions"]
    for d in devices:
        assert await _stored(app_db_url, d) == [f"e{n}" for n in range(count)]


async def test_file_and_a_single_event_together_is_a_usage_error(
    prefect_server: Any,
    app_db_url: str,  # noqa: F811 - the fixture
    idle_deployment: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    env = _env(prefect_server, app_db_url, idle_deployment, tmp_path)
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"device": device(), "name": "hello"}) + "\n")

    both = await _send([device(), "hello", "--file", str(path)], env)
    assert both.returncode == 2, both.stdout + both.stderr
    assert "--file takes the events from the file" in both.stderr

    missing = await _send(["--file", str(tmp_path / "nope.jsonl")], env)
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "nope.jsonl: cannot read" in missing.stderr

    neither = await _send([], env)
    assert neither.returncode == 2, neither.stdout + neither.stderr
    assert "give DEVICE and NAME" in neither.stderr
