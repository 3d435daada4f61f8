"""Where a drill runs: real processes on this machine.

- ``Platform`` (one per ``./dev drills`` invocation): PostgreSQL (the machine's, else a throwaway
  cluster, as the tests find it) and a Prefect server on its own PostgreSQL database.
- ``Stage`` (one per drill): a fresh application database, a fresh fake Service Bus broker
  (``../shared/tools/fake-servicebus``), the side-effect sink, a definitions directory holding the
  drill's definition, and the ``ORCH_*`` environment with which it starts ``orchestration worker``
  and ``orchestration listen`` as subprocesses.

The launchers are the tests' own (``tests.support``): one way to start each part on this machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from drills.procs import REPO, Process
from drills.sink import Sink
from tests.support.fake_servicebus import Broker, start_broker
from tests.support.postgres import PostgresServer, start_postgres
from tests.support.prefect_server import PrefectServer, start_prefect_server

__all__ = ["WORKFLOW", "DrillSetupError", "Platform", "Stage", "definition"]

SHARED_DIR = Path(os.environ.get("ORCH_SHARED_DIR", REPO.parent / "shared"))
WORKFLOW = "drill-sink"
BIN = Path(sys.executable).parent


class DrillSetupError(RuntimeError):
    """The environment could not be built (no PostgreSQL, no ../shared, a part did not start)."""


def definition(sink_url: str, version: str = "1", timer: float | None = None) -> dict[str, Any]:
    """One device episode: announce (a side effect), wait for ``device.ready``, finish (another).

    Both steps post to the sink with the step's idempotency key; retries ride out a sink or worker
    hiccup without a new key. Versions other than 1 post to ``<step>-v<version>``, so the sink
    tells which version ran a step. With ``timer`` the run waits that many seconds instead of
    waiting for ``device.ready``.
    """
    suffix = "" if version == "1" else f"-v{version}"

    def post(step: str) -> dict[str, Any]:
        return {
            "type": "task",
            "activity": "http.request",
            "input": {
                "method": "POST",
                "url": f"{sink_url}/{step}{suffix}",
                "json": {"device": "$.system.deviceId", "step": step},
            },
            "retry": {"maxAttempts": 10, "intervalSeconds": 1, "backoffRate": 1},
            "resultPath": f"$.state.{step}",
        }

    late = {"Late": {"type": "fail", "error": "DrillTimeout", "cause": "no device.ready"}}
    return {
        "name": WORKFLOW,
        "version": version,
        "configuration": {"onFailure": "fail"},
        "startAt": "Announce",
        "states": {
            "Announce": {**post("announce"), "next": "WaitReady"},
            "WaitReady": (
                {"type": "wait", "seconds": timer, "next": "Finish"}
                if timer is not None
                else {
                    "type": "wait",
                    "event": {"name": "device.ready", "timeoutSeconds": 600, "timeoutNext": "Late"},
                    "next": "Finish",
                }
            ),
            "Finish": {**post("finish"), "end": True},
            **({} if timer is not None else late),
        },
    }


@dataclass
class Platform:
    """PostgreSQL and the Prefect server, shared by the drills of one invocation."""

    postgres: PostgresServer
    prefect: PrefectServer
    workdir: Path
    _prefect_env: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def start(cls) -> Platform:
        if not (SHARED_DIR / "tools" / "fake-servicebus" / "fake_servicebus.py").exists():
            raise DrillSetupError(f"{SHARED_DIR}: ../shared/tools/fake-servicebus is missing")
        postgres = start_postgres()
        if isinstance(postgres, str):
            raise DrillSetupError(postgres)
        try:
            prefect = start_prefect_server(postgres)
        except RuntimeError as exc:
            postgres.close()
            raise DrillSetupError(str(exc)) from exc
        return cls(postgres, prefect, Path(tempfile.mkdtemp(prefix="orch-drills-")))

    def stop_prefect(self) -> None:
        """Stop the Prefect server (SIGTERM), keeping what ``start_prefect`` needs to bring it
        back on the same port with the same database: its command and its own environment."""
        process = self.prefect.process
        environ = Path(f"/proc/{process.pid}/environ").read_bytes()
        self._prefect_env = dict(
            item.split("=", 1) for item in environ.decode().split("\0") if "=" in item
        )
        self.prefect.stop()

    async def start_prefect(self, deadline: float = 120.0) -> None:
        """Start the stopped server again, as it was; returns once it answers its health check."""
        process = await asyncio.to_thread(self._spawn_prefect)
        end = time.monotonic() + deadline
        async with httpx.AsyncClient(timeout=2) as client:
            while time.monotonic() < end:
                if process.poll() is not None:
                    raise DrillSetupError(f"prefect server exited:\n{self.prefect.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.prefect.api_url}/health")).status_code == 200:
                        return
                await asyncio.sleep(0.3)
        raise DrillSetupError(f"prefect server not healthy again within {deadline:g}s")

    def _spawn_prefect(self) -> subprocess.Popen[bytes]:
        with self.prefect.log_path.open("ab") as log:
            self.prefect.process = subprocess.Popen(  # noqa: S603 - the same command as before
                list(self.prefect.process.args),  # type: ignore[arg-type]
                env=self._prefect_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.prefect.process

    def close(self) -> None:
        self.prefect.stop()
        self.postgres.close()


@dataclass
class Stage:
    """One drill's parts; ``close`` stops every process it started."""

    platform: Platform
    name: str
    sink: Sink
    broker: Broker
    app_db: str
    directory: Path
    listener_bytes: int = 4096
    processes: list[Process] = field(default_factory=list)

    @classmethod
    def open(cls, platform: Platform, name: str, **broker_options: Any) -> Stage:
        directory = platform.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        (directory / "definitions").mkdir(parents=True)
        sink = Sink().__enter__()
        try:
            broker = start_broker(SHARED_DIR, directory, **broker_options)
        except RuntimeError as exc:
            sink.__exit__()
            raise DrillSetupError(str(exc)) from exc
        app_db = platform.postgres.create_database("drill")
        stage = cls(platform, name, sink, broker, app_db, directory)
        stage.write_definition(definition(sink.url))
        return stage

    @property
    def app_dsn(self) -> str:
        """asyncpg DSN of the application database (for the drill's own counters)."""
        return self.platform.postgres.asyncpg_dsn(self.app_db)

    def write_definition(self, document: dict[str, Any]) -> None:
        path = self.directory / "definitions" / f"{document['name']}.json"
        path.write_text(json.dumps(document, indent=2))

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every system process of this drill."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCH_", "PREFECT_"))}
        env.update(self.platform.prefect.env)
        env.update(
            {
                "PYTHONPATH": str(REPO),
                "PREFECT_LOGGING_LEVEL": "WARNING",
                "ORCH_DB_URL": self.platform.postgres.sqlalchemy_url(self.app_db),
                "ORCH_DB_POOL_SIZE": "3",
                "ORCH_DB_MAX_OVERFLOW": "3",
                "ORCH_DEFINITIONS_DIRECTORY": str(self.directory / "definitions"),
                "ORCH_FLOW_DEFINITIONS_DIR": str(self.directory / "pinned"),
                "ORCH_HTTP_ALLOWED_HOSTS": '["127.0.0.1"]',
                "ORCH_HTTP_ALLOW_LOOPBACK": "true",
                "ORCH_INGRESS_WORKFLOW": WORKFLOW,
                "ORCH_INGRESS_RECONCILE_INTERVAL": "1",
                "ORCH_INGRESS_PREFECT_TIMEOUT": "5",
                "ORCH_SB_CONNECTION_STRING": self.broker.connection_string,
                "ORCH_SB_QUEUE_NAME": self.broker.queue,
                "ORCH_SB_MAX_WAIT_TIME": "1",
                "ORCH_SB_MAX_CONCURRENT_SESSIONS": "4",
                "ORCH_SB_MAX_MESSAGE_BYTES": str(self.listener_bytes),
                "ORCH_SB_OPERATION_TIMEOUT": "10",
                "ORCH_OTEL_EXPORTER": "none",
            }
        )
        env.update(extra)
        return env

    def process(self, name: str, argv: list[str], **extra: str) -> Process:
        process = Process(name, argv, self.env(**extra), self.directory)
        self.processes.append(process)
        return process

    def worker(self, name: str = "worker", concurrency: int = 30) -> Process:
        argv = [str(BIN / "orchestration"), "worker", "--concurrency", str(concurrency)]
        return self.process(name, argv)

    def listener(self, name: str = "listener", **extra: str) -> Process:
        return self.process(name, [str(BIN / "orchestration"), "listen"], **extra)

    def migrate(self) -> None:
        """The schema before anything counts rows (every process also migrates on start)."""
        done = subprocess.run(  # noqa: S603 - our own venv's program, fixed arguments
            [str(BIN / "orchestration"), "db", "migrate"],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise DrillSetupError(f"db migrate failed: {done.stdout!r} {done.stderr!r}")

    async def start_system(self, workers: int = 1, listeners: int = 1) -> None:
        """Migrate, start the workers (the first creates the deployment), then the listeners;
        returns once each says it is executing or listening."""
        self.migrate()
        for n in range(workers):
            worker = self.worker(f"worker{n + 1}" if workers > 1 else "worker").start()
            await worker.wait_for_output("executing runs of deployment", 120)
        for n in range(listeners):
            listener = self.listener(f"listener{n + 1}" if listeners > 1 else "listener").start()
            await listener.wait_for_output("listening on queue", 120)

    async def sink_wait(self, seconds: float) -> None:
        """A pause between two polls of a condition (never a wait for a result by itself)."""
        await asyncio.sleep(seconds)

    def dump_stacks(self) -> None:
        """Ask every live worker for its stacks (SIGUSR1: threads and asyncio tasks, written to
        its log), and give them a moment to write."""
        workers = [p for p in self.processes if p.alive and p.name.startswith("worker")]
        for process in workers:
            process.signal(signal.SIGUSR1)
        if workers:
            time.sleep(2.0)

    def close(self) -> None:
        for process in self.processes:
            process.kill()
        self.broker.stop()
        self.sink.__exit__()
