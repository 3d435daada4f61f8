"""``orchestration run | worker | demo``: execute workflows on Prefect, embedded defaults included.

``run`` executes one definition end to end in this process. It first refuses, with every
problem, a definition ``orchestration validate`` refuses, before anything starts. With no
``PREFECT_API_URL`` it uses the local server ``orchestration server start`` keeps running
(``cli.server``) while it answers, else it starts one (SQLite, under ``.orchestration/prefect``)
and stops it at the end; the app database defaults to SQLite (``ORCH_DB_URL``). It registers the
``run-workflow`` deployment, creates the run (named and tagged), executes it with the in-process
executor and its resumer, delivers each ``--event`` once the run waits, prints the trail state by
state, the result and the run's URL in the Prefect UI. A failed run ends in one summary (state,
error, cause), not Prefect's traceback. Exit code 0 when the run succeeded, 1 when it failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.embedded import EmbeddedOption, require_database_url
from cli.output import EXIT_FAILURE, OutputFormat, OutputOption, emit_json, fail
from cli.runlogs import failure_fields, run_logs_off_console
from cli.server import LOCAL_PREFECT_HOME, answering_server, answers, launch, use_server

if TYPE_CHECKING:
    from interpreter.models import WorkflowDefinition

__all__ = ["register"]

SERVER_DEADLINE_SECONDS = 120
DEMO_DEFINITION = Path("definitions/device-onboarding.json")
DEMO_DEVICE_PREFIX = "demo-device-"


# --- embedded Prefect server -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def prefect_api(quiet: bool = False) -> Iterator[str]:
    """The configured Prefect API, else the one ``orchestration server start`` keeps running
    (while it answers), else a local server (SQLite) started for the block's duration."""
    # Our own progress lines say what happens; Prefect's console lines would repeat them (the
    # run's logs still reach the Prefect API and the UI).
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    configured = os.environ.get("PREFECT_API_URL")
    if configured:
        yield configured
        return
    recorded = answering_server()
    if recorded is not None:
        with use_server(recorded, quiet=quiet) as reused:
            yield reused
        return
    home = LOCAL_PREFECT_HOME.resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = (home / "server.log").open("ab")
    if not quiet:
        typer.echo(f"starting a local Prefect server on {api_url} (log: {home / 'server.log'})")
    process = launch(home, port, log)
    try:
        _wait_healthy(api_url, process)
        os.environ.update(
            {
                "PREFECT_API_URL": api_url,
                "PREFECT_HOME": str(home),
                "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
                "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            }
        )
        yield api_url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _wait_healthy(api_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            fail("the local Prefect server exited while starting; see its log")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:  # noqa: S310 - local URL we built
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    fail(f"the local Prefect server was not healthy within {SERVER_DEADLINE_SECONDS}s")


def _settings(api_url: str) -> Any:
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_CLIENT_RETRY_EXTRA_CODES,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    updates: dict[Any, Any] = {PREFECT_API_URL: api_url, PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}
    if "PREFECT_CLIENT_RETRY_EXTRA_CODES" not in os.environ:
        # A Prefect API whose own database restarts answers 500 for a few seconds: Prefect's
        # client retries 429/502/503/408 only, so an engine call (set_state) failed and the
        # run raised out of the engine (drill pg-restart-all). Retried like the others now.
        updates[PREFECT_CLIENT_RETRY_EXTRA_CODES] = {500, 504}
    if os.environ.get("PREFECT_HOME"):
        home = Path(os.environ["PREFECT_HOME"])
        updates[PREFECT_HOME] = home
        updates[PREFECT_LOCAL_STORAGE_PATH] = Path(
            os.environ.get("PREFECT_LOCAL_STORAGE_PATH", str(home / "results"))
        )
    return temporary_settings(updates=updates)


def _quiet_metrics() -> None:
    """One-shot commands export metrics only when asked (``ORCH_OTEL_EXPORTER`` or Azure's
    connection string): the default console exporter would print onto ``--output json``."""
    from operations.observability import AZURE_CONNECTION_ENV, configure_metrics

    if not os.environ.get("ORCH_OTEL_EXPORTER") and not os.environ.get(AZURE_CONNECTION_ENV):
        configure_metrics(exporter="none")


def ui_url(api_url: str, run_id: str) -> str:
    base = os.environ.get("PREFECT_UI_URL") or api_url.removesuffix("/api")
    return f"{base}/runs/flow-run/{run_id}"


# --- one run -----------------------------------------------------------------------------------


def _parse_events(events: list[str]) -> list[tuple[str, Any]]:
    parsed = []
    for item in events:
        name, sep, payload = item.partition("=")
        if not sep or not name:
            fail(f"--event must be NAME=JSON, got {item!r}", code=2)
        try:
            parsed.append((name, json.loads(payload) if payload else None))
        except json.JSONDecodeError as exc:
            fail(f"--event {name}: payload is not JSON: {exc}", code=2)
    return parsed


async def execute_run(
    definition: Path,
    input: dict[str, Any],
    *,
    device_id: str | None,
    events: list[tuple[str, Any]],
    api_url: str,
    show_progress: bool,
) -> dict[str, Any]:
    """Deploy, create, execute and follow one run; returns the summary printed by the CLI."""
    from prefect.client.orchestration import get_client

    from flows import runtime
    from flows.executor import Executor, deploy
    from flows.wake import event_subject
    from flows.workflow import (
        add_transition_listener,
        remove_transition_listener,
        run_name,
        run_tags,
        run_workflow,
    )
    from interpreter.runtime import TrailEntry

    seen: set[tuple[str, int, str]] = set()
    trail: list[dict[str, Any]] = []

    def progress(entry: TrailEntry) -> None:
        key = (entry.path, entry.visit, entry.outcome)
        if key in seen:
            return  # a replay after a suspend reports the same entries again
        seen.add(key)
        trail.append(entry.model_dump(mode="json"))
        if show_progress:
            typer.echo(f"  {entry.path:<40} {entry.type:<12} {entry.outcome}")

    text = await asyncio.to_thread(definition.read_text, encoding="utf-8")
    workflow = json.loads(text).get("name", definition.stem)
    digest = await _pin(text)
    add_transition_listener(progress)
    # Its own deployment, deleted at the end: nothing is left behind, and another `run` on the
    # same server never has its deployment deleted under it.
    deployment_name = f"local-{os.urandom(4).hex()}"
    deployment_id = await deploy(run_workflow, deployment_name)
    executor = Executor({deployment_id: run_workflow}, poll_seconds=0.2, resumer_tick_seconds=0.5)
    # Prefect's own lines for the run (its traceback of a failure included) would repeat ours.
    run_logs = contextlib.ExitStack()
    logs = run_logs.enter_context(run_logs_off_console())
    runner = asyncio.create_task(executor.run())
    try:
        async with get_client() as client:
            flow_run = await client.create_flow_run_from_deployment(
                deployment_id,
                parameters={
                    "workflow": str(definition),
                    "input": input,
                    "device_id": device_id,
                    "definition_hash": digest,
                },
                name=run_name(workflow, device_id, os.urandom(4).hex()),
                tags=run_tags(workflow, device_id, None),
            )
            run_id = str(flow_run.id)
            if show_progress:
                typer.echo(f"run {flow_run.name} ({run_id})")
                typer.echo(f"  {ui_url(api_url, run_id)}")
            subject = event_subject(device_id, run_id)
            pending = list(events)
            resources = await runtime.get_resources()
            while True:
                current = await client.read_flow_run(flow_run.id)
                state = current.state
                if state is not None and state.is_final():
                    break
                if state is not None and state.is_paused() and pending:
                    name, payload = pending.pop(0)
                    await _deliver(resources, client, flow_run.id, subject, name, payload)
                    if show_progress:
                        typer.echo(f"  -> event {name} delivered")
                    await _wait_not_paused(client, flow_run.id)
                await asyncio.sleep(0.3)
        summary: dict[str, Any] = {
            "runId": run_id,
            "name": current.name,
            "url": ui_url(api_url, run_id),
            "trail": trail,
        }
        if state is not None and state.is_completed():
            summary.update(status="succeeded", result=await state.aresult())
        else:
            message = state.message if state else None
            summary.update(status="failed", **failure_fields(logs.exceptions.get(run_id), message))
        return summary
    finally:
        remove_transition_listener(progress)
        executor.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await runtime.reset()
        await _delete_deployment(deployment_id, deployment_name)
        from prefect.logging.handlers import APILogHandler

        await APILogHandler.aflush()  # before the local server stops
        # Last: the engine logs the run's end (and its traceback) after the final state is set.
        run_logs.close()


async def _delete_deployment(deployment_id: Any, name: str) -> None:
    """Delete the run's own deployment; its runs stay (Prefect keeps them, unlinked)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        async with get_client() as client:
            await client.delete_deployment(deployment_id)
    except ObjectNotFound:
        return
    except Exception as exc:  # the run's outcome matters more than this cleanup
        typer.echo(f"note: deployment run-workflow/{name} not deleted: {exc}", err=True)


async def _pin(text: str) -> str | None:
    """Pin the definition by content hash (the run reads it from there, replays included).

    A definition that does not load is not pinned: the run reports why it cannot start."""
    from flows.definitions import pin
    from interpreter.errors import OrchestrationError
    from interpreter.loader import load_definition

    try:
        definition = load_definition(text)
    except OrchestrationError:
        return None
    return await pin(definition)


async def _deliver(
    resources: Any, client: Any, run_id: Any, subject: str, name: str, payload: Any
) -> None:
    """Record the event as the ingress does, then wake the run (it claims the event itself)."""
    import uuid
    from datetime import UTC, datetime

    from store.events import DeviceEvent

    await resources.events.record(
        DeviceEvent(device_id=subject, event_id=uuid.uuid4().hex, name=name, payload=payload)
    )
    await client.resume_flow_run(
        run_id, run_input={"kind": "event", "at": datetime.now(UTC).isoformat()}
    )


async def _wait_not_paused(client: Any, run_id: Any, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        current = await client.read_flow_run(run_id)
        if current.state is None or not current.state.is_paused():
            return
        await asyncio.sleep(0.2)


def _server_stopped(summary: dict[str, Any]) -> None:
    """The embedded server has stopped, so its links no longer answer: say how to see the run."""
    summary["url"] = None
    summary["view"] = (
        f"orchestration server start --port 4200 (or PREFECT_HOME={LOCAL_PREFECT_HOME} "
        "prefect server start), then open "
        f"http://127.0.0.1:4200/runs/flow-run/{summary['runId']}"
    )


def _print_summary(summary: dict[str, Any], output: OutputFormat) -> None:
    if output == OutputFormat.json:
        emit_json(summary)
    elif summary["status"] == "succeeded":
        typer.secho("succeeded", fg=typer.colors.GREEN)
        typer.echo(json.dumps(summary["result"], indent=2, default=str))
        _print_view(summary)
    else:
        where = f" at {summary['state']}" if summary.get("state") else ""
        cause = f": {summary['cause']}" if summary.get("cause") else ""
        line = f"failed{where}: {summary['error']}{cause}"
        typer.secho(line, fg=typer.colors.RED, err=True)
        plain = f"{summary.get('state')}: {summary['error']}{cause}"
        if summary.get("message") and summary["message"] != plain:
            typer.echo(f"  {summary['message']}", err=True)  # compensation, the first failure
        _print_view(summary)


def _print_view(summary: dict[str, Any]) -> None:
    if summary.get("url"):
        typer.echo(f"view: {summary['url']}")
    else:
        typer.echo(f"the local Prefect server has stopped; to see this run: {summary['view']}")


def _require_json_object(path: Path) -> bytes:
    """Refuse, before any server starts, a file that is no JSON object (``/etc/passwd``, a FIFO,
    ``/dev/zero``): one line. Returns the file's bytes."""
    from cli.authoring import read_limited
    from interpreter.errors import AuthoringError
    from interpreter.loader import parse_document

    data, problem = read_limited(path)
    if data is None:
        message = problem.message if problem else "cannot be read"
        fail(message if str(path) in message else f"{path}: {message}")
    try:
        document = parse_document(data)
    except AuthoringError as exc:
        fail(f"{path} is not a JSON definition: {exc}")
    if not isinstance(document, dict):
        fail(f"{path} is not a JSON definition: the document is not a JSON object")
    return data


def _activity_names() -> Collection[str] | None:
    """The registered activity names, or None when the registry does not load (the run then
    reports an unknown activity itself; a broken registry must not hide the definition)."""
    try:
        from tasks.registry import default_registry

        return default_registry().names()
    except Exception:  # any failure only skips this one check
        return None


def _require_valid_definition(path: Path, data: bytes) -> WorkflowDefinition:
    """Refuse, before any server starts, what ``orchestration validate`` refuses: each error on
    stderr in validate's form, then one ``error:`` line (exit 1). Warnings do not stop a run."""
    from interpreter.loader import read_definition
    from interpreter.validate import validate

    result = read_definition(data)
    problems = result.problems
    if result.definition is not None:
        problems = validate(result.definition, activities=_activity_names())
    errors = [p for p in problems if p.is_error]
    if result.definition is None or errors:
        for problem in errors or problems:
            typer.echo(f"{path}:{problem}", err=True)
        count = len(errors or problems)
        fail(f"{path} is not a valid definition ({count} problem{'s' * (count != 1)}); not run")
    return result.definition


def _require_input_fits(definition: WorkflowDefinition, run_input: dict[str, Any]) -> None:
    """Refuse, before any server starts, an input the definition's input schema refuses: one
    line naming the pointer (exit 1)."""
    from interpreter.run_input import check_run_input

    problems = check_run_input(definition, run_input)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        fail(f"--input {first.pointer or '/'}: {first.message}{more}")


def run_command(
    definition: Annotated[Path, typer.Argument(help="The definition file (.json).")],
    input: Annotated[str, typer.Option("--input", "-i", help="The run's input as JSON.")] = "{}",
    device: Annotated[str | None, typer.Option("--device", help="The device id.")] = None,
    event: Annotated[
        list[str] | None,
        typer.Option("--event", "-e", help="NAME=JSON, delivered once the run waits (repeat)."),
    ] = None,
    output: OutputOption = OutputFormat.text,
) -> None:
    """Run one workflow to its end and print the trail, the result and the run's UI URL."""
    if not definition.exists():
        fail(f"no definition file at {definition}", code=2)
    loaded = _require_valid_definition(definition, _require_json_object(definition))
    try:
        data = json.loads(input)
    except json.JSONDecodeError as exc:
        fail(f"--input is not JSON: {exc}", code=2)
    if not isinstance(data, dict):
        fail("--input must be a JSON object", code=2)
    _require_input_fits(loaded, data)
    events = _parse_events(event or [])
    resolved = definition.resolve()
    if not resolved.is_relative_to(Path.cwd().resolve()):
        # The flow reads definition paths only under the working directory or the definitions
        # directory; the file named on this command line is the user's choice: allow its folder.
        os.environ.setdefault("ORCH_DEFINITIONS_DIRECTORY", str(resolved.parent))
    text = output == OutputFormat.text
    _quiet_metrics()
    embedded = not os.environ.get("PREFECT_API_URL")
    with prefect_api(quiet=not text) as api_url, _settings(api_url):
        summary = asyncio.run(
            execute_run(
                definition.resolve(),
                data,
                device_id=device,
                events=events,
                api_url=api_url,
                show_progress=text,
            )
        )
    if embedded and not answers(api_url):  # a reused server keeps answering: its link stays
        _server_stopped(summary)
    _print_summary(summary, output)
    if summary["status"] != "succeeded":
        raise typer.Exit(EXIT_FAILURE)


# --- worker ------------------------------------------------------------------------------------


DEFAULT_DEPLOYMENT = "device-workflow"


def worker_command(
    concurrency: Annotated[int, typer.Option(help="Runs executed at once.")] = 50,
    deployment: Annotated[
        str,
        typer.Option(
            help="Deployment of run-workflow to serve; created (no work pool) only if missing."
        ),
    ] = DEFAULT_DEPLOYMENT,
    embedded: EmbeddedOption = False,
) -> None:
    """Execute runs of run-workflow/device-workflow in this process (and resume due waits).

    Needs ORCH_DB_URL, or --embedded (ORCH_EMBEDDED=true) for the local SQLite file.

    The ingress, the API and the alerts start runs of run-workflow/device-workflow. If the
    deployment exists (say from `prefect deploy`, on a process work pool) it is served as it is,
    not overwritten; if it is missing it is created without a work pool. Either this executor or a
    `prefect worker` on the deployment's pool may serve it, or both at once: a run is claimed by
    proposing Pending to the server, which lets only one claimant have it, so no run executes
    twice. The executor runs many runs in one process; a worker starts a process per run.
    """
    from operations.logtext import configure_plain_logging

    require_database_url(embedded)
    with prefect_api() as api_url, _settings(api_url):
        # After Prefect set up its console handler: escaped fields, a retry is one line.
        configure_plain_logging(level=None)
        asyncio.run(_worker(concurrency, deployment))


async def _worker(concurrency: int, deployment: str) -> None:
    from flows import runtime
    from flows.executor import Executor, ensure_deployment
    from flows.workflow import FLOW_NAME, run_workflow

    deployment_id, created = await ensure_deployment(run_workflow, deployment)
    how = "created (no work pool)" if created else "existing"
    typer.echo(f"executing runs of deployment {FLOW_NAME}/{deployment} ({how}, {deployment_id})")
    executor = Executor({deployment_id: run_workflow}, concurrency=concurrency)
    loop = asyncio.get_running_loop()

    def stop(name: str) -> None:
        # Said when it happens: an operator (and the drain test) sees what the worker waits for.
        typer.echo(
            f"{name}: no new runs; draining {executor.in_flight} in flight "
            f"(up to {executor.drain_seconds:g}s)"
        )
        executor.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop, sig.name)
    loop.add_signal_handler(signal.SIGUSR1, _dump_stacks)
    try:
        # Beside the runs: the outbox reconciler (starts and resumes deferred by any ingress
        # while Prefect was down), so no device waits for a listener to come up.
        async with _reconciling():
            await executor.run()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runtime.reset()
    typer.echo(f"stopped: {executor.stats.as_dict()}")


def _dump_stacks() -> None:
    """SIGUSR1 (``kill -USR1 <pid>``): every thread's stack and every asyncio task's await
    chain to stderr, to see what a run that does not move is waiting for."""
    import faulthandler

    faulthandler.dump_traceback(all_threads=True)
    for task in asyncio.all_tasks():
        chain: list[str] = []
        awaited: Any = task.get_coro()
        while awaited is not None and len(chain) < 64:
            frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
            nxt = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
            if nxt is None and frame is None:
                chain.append(repr(awaited)[:200])
            awaited = nxt
        print(f"task {task.get_name()}:\n  " + "\n  ".join(chain), file=sys.stderr, flush=True)


def _reconciling() -> contextlib.AbstractAsyncContextManager[object]:
    """The ingress reconciler on ``ORCH_DB_URL`` and ``ORCH_INGRESS_*``, with a small pool."""
    from listeners.local import reconciling
    from listeners.settings import IngressSettings
    from store.settings import DatabaseSettings

    database = DatabaseSettings().model_copy(update={"pool_size": 2, "max_overflow": 2})
    return reconciling(
        database_url=database.url, settings=IngressSettings(), database_settings=database
    )


# --- demo --------------------------------------------------------------------------------------


class _StandIn(BaseHTTPRequestHandler):
    """The external system of the demo: accepts any JSON POST."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = json.dumps({"accepted": True}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


def demo_command(output: OutputOption = OutputFormat.text) -> None:
    """Run the device-onboarding demo end to end on embedded defaults."""
    if not DEMO_DEFINITION.is_file():
        fail(f"{DEMO_DEFINITION} not found: run the demo from the repository root", code=2)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    # The stand-in listens on loopback, which http.request refuses unless allowed: demo only.
    os.environ["ORCH_HTTP_ALLOW_LOOPBACK"] = "true"
    os.environ.setdefault("ORCH_HTTP_ALLOWED_HOSTS", '["127.0.0.1"]')
    url = f"http://127.0.0.1:{server.server_address[1]}/devices"
    text = output == OutputFormat.text
    _quiet_metrics()
    embedded = not os.environ.get("PREFECT_API_URL")
    try:
        with prefect_api(quiet=not text) as api_url, _settings(api_url):
            summary = asyncio.run(
                execute_run(
                    DEMO_DEFINITION.resolve(),
                    {"model": "TX-200", "externalSystemUrl": url},
                    device_id=DEMO_DEVICE_PREFIX + os.urandom(3).hex(),
                    events=[("device.ready", {"firmware": "1.4.2", "battery": 97})],
                    api_url=api_url,
                    show_progress=text,
                )
            )
    finally:
        server.shutdown()
    if embedded and not answers(api_url):  # a reused server keeps answering: its link stays
        _server_stopped(summary)
    _print_summary(summary, output)
    if summary["status"] != "succeeded":
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    app.command("run")(run_command)
    app.command("worker")(worker_command)
    app.command("demo")(demo_command)
