"""PostgreSQL for tests: the machine's server, else a throwaway cluster, else skip (fail under CI).

``ORCH_TEST_PG_DSN`` overrides the admin DSN (default: postgres@127.0.0.1:5432, trust auth).
Each test module asks for fresh databases through ``PostgresServer.create_database()``; they are
dropped when the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _can_connect(dsn: str) -> bool:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@dataclass
class PostgresServer:
    """An admin DSN plus the databases created through it (dropped by ``close``)."""

    admin_dsn: str
    _databases: list[str] = field(default_factory=list)
    _cluster_dir: Path | None = None
    _process: subprocess.Popen[bytes] | None = None

    @property
    def host_part(self) -> str:
        """``user@host:port`` of the admin DSN."""
        return self.admin_dsn.split("://", 1)[1].rsplit("/", 1)[0]

    def create_database(self, prefix: str = "orch") -> str:
        """Create an empty database; return its name."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"

        async def create() -> None:
            conn = await asyncpg.connect(self.admin_dsn, timeout=10)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        self._databases.append(name)
        return name

    def asyncpg_dsn(self, database: str) -> str:
        return f"postgresql://{self.host_part}/{database}"

    def sqlalchemy_url(self, database: str) -> str:
        return f"postgresql+asyncpg://{self.host_part}/{database}"

    def close(self) -> None:
        async def drop() -> None:
            conn = await asyncpg.connect(self.admin_dsn, timeout=10)
            try:
                for name in self._databases:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

        if self._databases:
            # The server may have gone away first; then there is nothing left to clean.
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                asyncio.run(drop())
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=30)
        if self._cluster_dir is not None:
            shutil.rmtree(self._cluster_dir, ignore_errors=True)


def _throwaway_cluster() -> PostgresServer | None:
    """Start a private cluster from the PostgreSQL binaries, if they are installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = shutil.which("initdb") or (candidates[-1] if candidates else None)
    if initdb is None:
        return None
    bindir = Path(initdb).parent
    workdir = Path(tempfile.mkdtemp(prefix="orch-pg-"))
    prefix: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root: run the cluster as the postgres user when it exists.
        if shutil.which("runuser") is None:
            return None
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(workdir, "postgres")
    data = workdir / "data"
    subprocess.run(
        [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    process = subprocess.Popen(
        [*prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if asyncio.run(_can_connect(dsn)):
            return PostgresServer(dsn, _cluster_dir=workdir, _process=process)
        time.sleep(0.2)
    process.terminate()
    return None


def start_postgres() -> PostgresServer | str:
    """The server to use, or the reason there is none."""
    dsn = os.environ.get("ORCH_TEST_PG_DSN", DEFAULT_DSN)
    if asyncio.run(_can_connect(dsn)):
        return PostgresServer(dsn)
    cluster = _throwaway_cluster()
    if cluster is not None:
        return cluster
    return f"no PostgreSQL at {dsn} and no PostgreSQL binaries to start a throwaway cluster"
