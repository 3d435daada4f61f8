"""Drill 4 (second half): PostgreSQL restarted under load. The drill runs its own PostgreSQL
cluster (``initdb``/``pg_ctl`` from the machine's PostgreSQL binaries, trust auth, a free port,
in the drills' working directory): ``pg-restart`` holds the application database there (the
Prefect server stays on the platform's PostgreSQL); ``pg-restart-all`` also the database of a
Prefect server of its own, so a restart takes both away at once, as a managed server's restart
does when both share it. While device episodes flow through the listener and the worker it
restarts the cluster (``pg_ctl restart -m fast``), then stops it for ``DOWN_SECONDS`` and starts
it again; then the system must settle on its own. Without PostgreSQL binaries the drill is
skipped, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from drills.catalog import Trial, drill, trial
from drills.env import DrillSetupError, Platform
from drills.report import Row
from tests.support.postgres import PostgresServer, free_port
from tests.support.prefect_server import start_prefect_server

DEVICES = 20
DOWN_SECONDS = 10.0
#: Between two events of the load (each device: hello, later ready).
PACE_SECONDS = 0.4

__all__ = ["Cluster", "postgres_bindir"]


def postgres_bindir() -> Path | str:
    """The newest ``/usr/lib/postgresql/*/bin`` with ``initdb`` and ``pg_ctl``, or why none."""
    for initdb in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        bindir = Path(initdb).parent
        if (bindir / "pg_ctl").exists():
            return bindir
    found = shutil.which("pg_ctl")
    if found is not None and shutil.which("initdb") is not None:
        return Path(found).parent
    return "no PostgreSQL binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin or on PATH"


@dataclass
class Cluster:
    """A private PostgreSQL cluster driven with ``pg_ctl`` (as the ``postgres`` user when the
    drills run as root: ``initdb`` refuses root)."""

    bindir: Path
    directory: Path
    port: int
    as_user: list[str]

    @classmethod
    def create(cls, bindir: Path, parent: Path) -> Cluster:
        directory = parent / f"pg-cluster-{uuid.uuid4().hex[:6]}"
        directory.mkdir()
        as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise DrillSetupError("running as root without runuser: cannot run initdb")
            as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(directory, "postgres")
            parent.chmod(0o711)  # the postgres user must reach its own directory
        cluster = cls(bindir, directory, free_port(), as_user)
        cluster._run("initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres")
        return cluster

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str, timeout: float = 120.0) -> None:
        done = subprocess.run(  # noqa: S603 - the machine's PostgreSQL programs, fixed arguments
            [*self.as_user, str(self.bindir / program), *args],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            output = (done.stdout + done.stderr).decode(errors="replace").strip()
            raise DrillSetupError(f"{program} {' '.join(args)}: exit {done.returncode}: {output}")

    def _pg_ctl(self, action: str, *args: str) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", "-o", options, *args
        )

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is cut, the server is back at once."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast")

    def close(self) -> None:
        with contextlib.suppress(DrillSetupError, subprocess.TimeoutExpired):
            self._pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(self.directory, ignore_errors=True)


async def send_load(t: Trial, devices: list[str], name: str) -> None:
    for device in devices:
        if name == "hello":
            await t.episode_start(device)
        else:
            await t.episode_end(device)
        await asyncio.sleep(PACE_SECONDS)


async def on_private_cluster(platform: Platform, row: Row, *, prefect_too: bool) -> Row:
    """Run ``restart_under_load`` with the app database (and with ``prefect_too`` a Prefect
    server's database) on a private cluster; skipped without PostgreSQL binaries."""
    bindir = postgres_bindir()
    if isinstance(bindir, str):
        return row.skip(bindir)
    cluster = await asyncio.to_thread(Cluster.create, bindir, platform.workdir)
    try:
        await asyncio.to_thread(cluster.start)
        postgres = PostgresServer(cluster.admin_dsn)
        if not prefect_too:
            own = Platform(postgres, platform.prefect, platform.workdir)
            return await restart_under_load(own, row, cluster)
        try:
            prefect = await asyncio.to_thread(start_prefect_server, postgres)
        except RuntimeError as exc:
            raise DrillSetupError(str(exc)) from exc
        try:
            own = Platform(postgres, prefect, platform.workdir)
            return await restart_under_load(own, row, cluster)
        finally:
            await asyncio.to_thread(prefect.stop)
    finally:
        await asyncio.to_thread(cluster.close)


FAULT = (
    "restarted (pg_ctl restart -m fast), later stopped {down:g} s, under load ({devices} devices)"
)
EXPECTED = "each event stored once, 1 completed run per device, each side effect once"


@drill(
    "pg-restart",
    4,
    injected="the app database's PostgreSQL (a private cluster) "
    + FAULT.format(down=DOWN_SECONDS, devices=DEVICES),
    expected=EXPECTED,
)
async def pg_restart(platform: Platform, row: Row) -> Row:
    return await on_private_cluster(platform, row, prefect_too=False)


@drill(
    "pg-restart-all",
    4,
    injected="one private PostgreSQL holding the app database and the Prefect server's "
    + FAULT.format(down=DOWN_SECONDS, devices=DEVICES),
    expected=EXPECTED,
    quick=False,
)
async def pg_restart_all(platform: Platform, row: Row) -> Row:
    return await on_private_cluster(platform, row, prefect_too=True)


async def restart_under_load(platform: Platform, row: Row, cluster: Cluster) -> Row:
    async with trial(platform, row, max_delivery=10) as t:
        await t.stage.start_system()
        devices = [t.device(n) for n in range(DEVICES)]
        half = DEVICES // 2
        # Restart while the first half's runs start and the second half's hellos arrive.
        load = asyncio.create_task(send_load(t, devices, "hello"))
        await asyncio.sleep(PACE_SECONDS * half)
        await asyncio.to_thread(cluster.restart)
        t.fault()
        await load
        # Stop for a while as the ready events (resumes) arrive, then start again.
        load = asyncio.create_task(send_load(t, devices, "ready"))
        await asyncio.sleep(PACE_SECONDS * half)
        await asyncio.to_thread(cluster.stop)
        down = time.monotonic()
        try:
            await asyncio.sleep(DOWN_SECONDS)
        finally:
            await asyncio.to_thread(cluster.start)
        t.fault()
        await load
        row.injected += f" (down {time.monotonic() - down:.1f} s)"
        return await t.settle()
