"""``orchestration server start | stop | status``: one local Prefect server kept between commands.

Without ``PREFECT_API_URL``, ``run``, ``demo``, ``send-event`` and ``worker`` used to start a
Prefect server of their own and stop it at the end (~14 s for a run of 0.4 s). ``server start``
starts the same server (SQLite, ``PREFECT_HOME`` under ``.orchestration/prefect``, on 127.0.0.1)
detached, waits until it answers and records it in ``.orchestration/server.json``: URL, pid, home,
database and log. Those commands then reuse it (``prefect_api``) while it answers, so their runs,
its UI and the app's embedded database (``.orchestration/orchestration.db``, unchanged) all hold
the same data, and a run's UI link stays valid.

A recorded server is used only while its pid is a live Prefect server and its ``/api/health``
answers. A state file whose pid is gone (or is another program now) is stale and removed by whoever
reads it; a live pid that does not answer is reported (``status`` exits 1) and left for ``stop``,
which ends it: another server started beside it would share its SQLite file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from cli.output import EXIT_FAILURE, OutputFormat, OutputOption, emit_json, fail

__all__ = [
    "LOCAL_PREFECT_HOME",
    "STATE_FILE",
    "RecordedServer",
    "answering_server",
    "answers",
    "launch",
    "register",
    "use_server",
]

#: The local state directory of the embedded defaults (relative to the working directory, as
#: the embedded app database ``.orchestration/orchestration.db`` is).
STATE_DIRECTORY = Path(".orchestration")
LOCAL_PREFECT_HOME = STATE_DIRECTORY / "prefect"
STATE_FILE = STATE_DIRECTORY / "server.json"
HOST = "127.0.0.1"
DEFAULT_PORT = 4200
START_DEADLINE_SECONDS = 120
STOP_DEADLINE_SECONDS = 30
#: What a recorded pid's command line must hold to be taken for our server (a pid is reused).
_SERVER_ARGV = (b"prefect", b"server", b"start")
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]+:)[^@]*@")


@dataclass(frozen=True)
class RecordedServer:
    """What ``.orchestration/server.json`` holds about the running server."""

    url: str
    api_url: str
    pid: int
    home: str
    database: str
    log: str
    started_at: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {
            "url": data["url"],
            "apiUrl": data["api_url"],
            "pid": data["pid"],
            "home": data["home"],
            "database": data["database"],
            "log": data["log"],
            "startedAt": data["started_at"],
        }


# --- the server process ------------------------------------------------------------------------


def launch(home: Path, port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start ``prefect server start`` on 127.0.0.1:``port`` with ``PREFECT_HOME=home`` in its own
    session (a Ctrl-C in the terminal does not reach it); output to ``log``. The one way both the
    embedded server of a command and ``server start`` are started."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the server is no client of another one
    env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    prefect_bin = str(Path(sys.executable).with_name("prefect"))
    return subprocess.Popen(  # noqa: S603 - our own venv's prefect binary, fixed arguments
        [prefect_bin, "server", "start", "--host", HOST, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def answers(api_url: str, timeout: float = 2.0) -> bool:
    """Whether a Prefect API answers its health check at ``api_url``."""
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as response:  # noqa: S310 - a local http URL we recorded
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _is_our_server(pid: int) -> bool:
    """Whether ``pid`` is alive and still a ``prefect server start`` (not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not the server we started
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no /proc (macOS): the signal check is all there is
    try:
        stat = (proc / "stat").read_text()
        argv = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] == "Z":
        return False  # exited, not yet reaped
    words = argv.split(b"\0")
    return all(any(part in word for word in words) for part in _SERVER_ARGV)


def _database(home: Path) -> str:
    """The server's database, as Prefect will choose it (a password never shown)."""
    for name in ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL"):
        if os.environ.get(name):
            return _PASSWORD_IN_URL.sub(r"\1***@", os.environ[name])
    return f"sqlite+aiosqlite:///{home / 'prefect.db'}"


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --- the state file ----------------------------------------------------------------------------


def _read_state() -> RecordedServer | None:
    """The recorded server, or None when there is no state file. An unreadable one is stale."""
    try:
        data = json.loads(STATE_FILE.read_text(encoding="utf-8"))
        return RecordedServer(
            url=str(data["url"]),
            api_url=str(data["apiUrl"]),
            pid=int(data["pid"]),
            home=str(data["home"]),
            database=str(data["database"]),
            log=str(data["log"]),
            started_at=str(data["startedAt"]),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        _remove_state()
        return None


def _write_state(server: RecordedServer) -> None:
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    partial = STATE_FILE.with_suffix(".json.tmp")
    partial.write_text(json.dumps(server.as_dict(), indent=2) + "\n", encoding="utf-8")
    partial.replace(STATE_FILE)  # a reader never sees half a file


def _remove_state() -> None:
    STATE_FILE.unlink(missing_ok=True)


def _recorded() -> tuple[RecordedServer | None, str]:
    """The recorded server and its condition: ``running``, ``not answering`` (live pid) or
    ``not running``. A state file whose pid is gone is removed here (``stale`` is then said)."""
    server = _read_state()
    if server is None:
        return None, "not running"
    if not _is_our_server(server.pid):
        _remove_state()
        return server, "stale"
    if not answers(server.api_url):
        return server, "not answering"
    return server, "running"


def answering_server() -> RecordedServer | None:
    """The recorded local server when it answers, else None (a stale state file is removed)."""
    server, condition = _recorded()
    return server if condition == "running" else None


@contextlib.contextmanager
def use_server(server: RecordedServer, *, quiet: bool) -> Iterator[str]:
    """Point this process's Prefect client at the recorded server, as an embedded one would be
    (same home, result storage and persistence); the server keeps running afterwards."""
    if not quiet:
        typer.echo(f"using the local Prefect server at {server.url} (pid {server.pid})")
    home = Path(server.home)
    os.environ.update(
        {
            "PREFECT_API_URL": server.api_url,
            "PREFECT_HOME": str(home),
            "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        }
    )
    try:
        yield server.api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)


# --- commands ----------------------------------------------------------------------------------


def _report(server: RecordedServer | None, condition: str, output: OutputFormat) -> None:
    if output == OutputFormat.json:
        data: dict[str, Any] = {"status": "not running" if condition == "stale" else condition}
        if condition == "stale":
            data["removedStale"] = True
        if server is not None:
            data.update(server.as_dict())
        emit_json(data)
        return
    if server is None:
        typer.echo("not running")
    elif condition == "running":
        typer.echo(f"running: {server.url} (pid {server.pid})")
        typer.echo(f"  home: {server.home}\n  database: {server.database}\n  log: {server.log}")
    elif condition == "stale":
        typer.echo(f"not running (removed a stale {STATE_FILE}: pid {server.pid} is gone)")
    else:
        typer.echo(
            f"not answering: pid {server.pid} is alive but {server.url} does not answer; "
            f"`orchestration server stop` ends it (log: {server.log})"
        )


def start_command(
    port: Annotated[
        int,
        typer.Option(help="Port on 127.0.0.1 (0: a free one).", min=0, max=65535),
    ] = DEFAULT_PORT,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Start the local Prefect server in the background; run, demo and send-event then reuse it.

    The server they start for themselves otherwise, kept until `orchestration server stop`."""
    server, condition = _recorded()
    if condition == "running" and server is not None:
        if output == OutputFormat.json:
            emit_json({"status": "running", "started": False, **server.as_dict()})
        else:
            typer.echo(f"already running: {server.url} (pid {server.pid})")
        return
    if condition == "not answering" and server is not None:
        fail(
            f"the recorded local Prefect server (pid {server.pid}) does not answer at "
            f"{server.url}; `orchestration server stop` ends it (log: {server.log})"
        )
    if port == 0:
        port = _free_port()
    elif not _port_is_free(port):
        fail(f"port {port} on {HOST} is in use: pass --port PORT (or --port 0 for a free one)")
    home = LOCAL_PREFECT_HOME.resolve()
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "server.log"
    url = f"http://{HOST}:{port}"
    with log_path.open("ab") as log:
        process = launch(home, port, log)
    recorded = RecordedServer(
        url=url,
        api_url=f"{url}/api",
        pid=process.pid,
        home=str(home),
        database=_database(home),
        log=str(log_path),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    # Recorded before it answers: a second `start` meanwhile sees a live pid, not a free slot.
    _write_state(recorded)
    if output == OutputFormat.text:
        typer.echo(f"starting a local Prefect server on {url} (log: {log_path})")
    problem = _wait_answering(recorded.api_url, process)
    if problem is not None:
        _end(process.pid, STOP_DEADLINE_SECONDS)
        _remove_state()
        fail(f"{problem}; see {log_path}")
    if output == OutputFormat.json:
        emit_json({"status": "running", "started": True, **recorded.as_dict()})
    else:
        typer.echo(f"running: {url} (pid {process.pid})")
        typer.echo("run, demo and send-event now use it; `orchestration server stop` stops it")
    if os.environ.get("PREFECT_API_URL"):
        typer.echo(
            "note: PREFECT_API_URL is set in this shell, so commands use that server instead",
            err=True,
        )


def _wait_answering(api_url: str, process: subprocess.Popen[bytes]) -> str | None:
    """None once the server answers; else why not (it exited, or the deadline passed)."""
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"the local Prefect server exited while starting (code {process.returncode})"
        if answers(api_url):
            return None
        time.sleep(0.3)
    return f"the local Prefect server did not answer within {START_DEADLINE_SECONDS}s"


def _end(pid: int, deadline_seconds: float) -> bool:
    """SIGTERM, wait up to the deadline, then SIGKILL. True when it stopped on SIGTERM."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        end = time.monotonic() + (deadline_seconds if sig == signal.SIGTERM else 10)
        while time.monotonic() < end:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
            if not _is_our_server(pid):
                return sig == signal.SIGTERM
            time.sleep(0.1)
    return False


def stop_command(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.", min=0)
    ] = STOP_DEADLINE_SECONDS,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Stop the local Prefect server (SIGTERM, then SIGKILL after --timeout seconds)."""
    server, condition = _recorded()
    if server is None or condition == "stale":
        _report(server, condition, output)
        return
    gentle = _end(server.pid, timeout)
    if _is_our_server(server.pid):
        fail(f"pid {server.pid} survived SIGKILL; {STATE_FILE} kept")
    _remove_state()
    how = "stopped" if gentle else f"killed (no exit within {timeout:g}s of SIGTERM)"
    if output == OutputFormat.json:
        emit_json({"status": "stopped", "gentle": gentle, **server.as_dict()})
    else:
        typer.echo(f"{how}: {server.url} (pid {server.pid})")


def status_command(output: OutputOption = OutputFormat.text) -> None:
    """Say whether the local Prefect server runs (exit 0) or not (exit 1), with URL and pid."""
    server, condition = _recorded()
    _report(server, condition, output)
    if condition != "running":
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    server = typer.Typer(
        help="A local Prefect server kept between commands (run, demo and send-event reuse it).",
        no_args_is_help=True,
    )
    server.command("start")(start_command)
    server.command("stop")(stop_command)
    server.command("status")(status_command)
    app.add_typer(server, name="server")
