"""``ORCH_LOG_FORMAT=json``: every log line of a CLI process is one JSON object, Prefect's and
uvicorn's own handlers included; ``text`` (the default) keeps the escaped plain lines.

Real subprocesses: Prefect configures its logging (a rich console handler on the root, a debug
handler on ``prefect._internal``, console handlers on ``uvicorn`` and ``fastapi``) at import, as
in every command, and the command's own ``configure_plain_logging`` has to route all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from operations.logtext import log_format

REPO = Path(__file__).resolve().parents[2]
DEADLINE_SECONDS = 60
_CLEARED = ("ORCH_DB_URL", "ORCH_EMBEDDED", "ORCH_LOG_FORMAT", "PREFECT_API_URL")

#: Logs once through each logger Prefect gives a console handler, then a traceback and a newline.
_SCRIPT = """
import logging
import prefect  # noqa: F401  (configures Prefect's logging, as every command does)
from operations.logtext import configure_plain_logging

configure_plain_logging()
logging.getLogger("listeners.ingress").info("device=dev-1\\nERROR forged")
logging.getLogger("prefect.client").warning("prefect client")
logging.getLogger("prefect._internal").error("prefect internal")
logging.getLogger("uvicorn.error").warning("uvicorn error")
logging.getLogger("fastapi").warning("fastapi")
try:
    raise RuntimeError("boom")
except RuntimeError:
    logging.getLogger("flows.executor").exception("run failed")
"""
MESSAGES = [
    "device=dev-1\nERROR forged",
    "prefect client",
    "prefect internal",
    "uvicorn error",
    "fastapi",
    "run failed",
]


def _environ(**env: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    environ.update({"ORCH_OTEL_EXPORTER": "none", **env})
    return environ


def _python(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=_environ(**env),
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )


def _json_lines(stderr: str) -> list[dict[str, object]]:
    records = []
    for line in stderr.splitlines():
        record = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(record, dict) and isinstance(record["message"], str), line
        records.append(record)
    return records


def test_json_format_routes_every_handler_prefect_and_uvicorn_install() -> None:
    done = _python(_SCRIPT, ORCH_LOG_FORMAT="json")

    assert done.returncode == 0, done.stderr
    records = _json_lines(done.stderr)
    assert [r["message"] for r in records] == MESSAGES  # each once: no handler doubled a line
    assert "RuntimeError: boom" in str(records[-1]["exception"])


def test_text_format_is_plain_and_the_default() -> None:
    for env in ({"ORCH_LOG_FORMAT": "text"}, {}):
        done = _python(_SCRIPT, **env)

        assert done.returncode == 0, done.stderr
        lines = done.stderr.splitlines()
        assert not any(line.startswith("{") for line in lines), done.stderr
        assert any("INFO listeners.ingress device=dev-1\\nERROR forged" in x for x in lines)
        assert any("uvicorn error" in line for line in lines), done.stderr


def test_send_event_logs_json_lines(tmp_path: Path) -> None:
    # No definitions in the working directory: the router logs an error and the ingress a
    # warning; the command's own answer is its `error:` line (a result, not a log record).
    environ = _environ(
        ORCH_LOG_FORMAT="json",
        ORCH_DB_URL=f"sqlite+aiosqlite:///{tmp_path / 'events.db'}",
        PREFECT_API_URL="http://127.0.0.1:9/api",  # unreachable: never needed here
    )
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "send-event", "dev-1", "boot", "--output", "json"],
        cwd=tmp_path,
        env={**environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )

    assert done.returncode == 1, done.stderr
    *logs, answer = done.stderr.splitlines()
    assert answer.startswith("error: event refused: WorkflowDefinitionInvalid"), done.stderr
    records = _json_lines("\n".join(logs))
    assert {r["logger"] for r in records} == {"listeners.router", "listeners.ingress"}, records


@pytest.mark.parametrize(
    ("value", "chosen"), [("json", "json"), (" JSON ", "json"), ("", "text"), ("text", "text")]
)
def test_log_format_reads_the_setting(value: str, chosen: str) -> None:
    assert log_format({"ORCH_LOG_FORMAT": value}) == chosen


def test_an_unknown_log_format_is_said_and_logs_stay_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert log_format({"ORCH_LOG_FORMAT": "yaml\n"}) == "text"
    said = capsys.readouterr().err.splitlines()
    assert said == ["warning: ORCH_LOG_FORMAT='yaml\\\\n' is not one of text, json; logging text"]


def test_serve_api_log_is_json_lines_only(tmp_path: Path) -> None:
    # The API against an unreachable Prefect (it answers /health 503): startup, access lines, a
    # 401, a 404 and the calls that fail to reach Prefect all go through the one JSON handler.
    import httpx

    from tests.support.api_process import serve_api

    with (
        serve_api(
            tmp_path,
            deployment="run-workflow/none",
            env={"PREFECT_API_URL": "http://127.0.0.1:9/api"},
            ready_statuses=(503,),
        ) as api,
        httpx.Client(base_url=api.base_url, timeout=60) as http,
    ):
        run = "/workflows/00000000-0000-0000-0000-000000000000"
        assert http.get(run).status_code == 401
        headers = {"X-API-Key": api.key}
        assert http.get("/no-such-path", headers=headers).status_code == 404
        http.get(run, headers=headers)  # Prefect out of reach: whatever it answers
        http.post(
            "/workflows", json={"workflow": "device-onboarding", "input": {}}, headers=headers
        )
        http.get("/docs")
    lines = api.log_text().splitlines()

    assert lines, "the API logged nothing"
    records = _json_lines("\n".join(lines))
    assert any(str(r["logger"]).startswith("uvicorn") for r in records), records
