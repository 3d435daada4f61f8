"""``store.transient``: which real failures are transient, and the bounded retry of them.

Every exception here is produced by the real thing: a PostgreSQL connection terminated by
``pg_terminate_backend``, a connect to a closed port, a database's connection limit, a real
constraint violation, a real HTTP server answering 503 and 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information
import httpx
import pytest
from sqlalchemy import text

from store.db import Database
from store.transient import is_transient, retry_transient
from tests.support.postgres import PostgresServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def transient_db(postgres: PostgresServer) -> str:
    return postgres.create_database("transient")


async def _terminate(admin_dsn: str, pid: int) -> None:
    admin = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


async def _raised(call: object) -> BaseException:
    try:
        await call  # type: ignore[misc]
    except Exception as exc:
        return exc
    raise AssertionError("expected a failure")


async def test_a_terminated_asyncpg_connection_is_transient(
    postgres: PostgresServer, transient_db: str
) -> None:
    connection = await asyncpg.connect(postgres.asyncpg_dsn(transient_db), timeout=10)
    try:
        await _terminate(postgres.admin_dsn, connection.get_server_pid())
        first = await _raised(connection.fetchval("SELECT 1"))
        assert is_transient(first), repr(first)
        again = await _raised(connection.fetchval("SELECT 1"))  # the closed connection, reused
        assert is_transient(again), repr(again)
    finally:
        connection.terminate()


async def test_a_terminated_sqlalchemy_connection_is_transient(
    postgres: PostgresServer, transient_db: str
) -> None:
    database = await Database.connect(postgres.sqlalchemy_url(transient_db), migrate=False)
    try:
        async with database.transaction() as connection:
            pid = await connection.scalar(text("SELECT pg_backend_pid()"))
            await _terminate(postgres.admin_dsn, int(pid))
            await connection.execute(text("SELECT 1"))
    except Exception as exc:  # raised through the transaction, as in every store
        failure: BaseException = exc
    else:
        raise AssertionError("the terminated connection answered")
    finally:
        await database.close()
    assert is_transient(failure), repr(failure)


async def test_a_refused_connection_is_transient() -> None:
    port = free_port()
    raw = await _raised(asyncpg.connect(f"postgresql://postgres@127.0.0.1:{port}/x", timeout=5))
    assert is_transient(raw), repr(raw)
    database = await _raised(Database.connect(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x"))
    assert is_transient(database), repr(database)
    async with httpx.AsyncClient() as client:
        http = await _raised(client.get(f"http://127.0.0.1:{port}/api/health"))
    assert is_transient(http), repr(http)


async def test_too_many_connections_is_transient(
    postgres: PostgresServer, transient_db: str
) -> None:
    role = f"orch_limited_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(postgres.admin_dsn, timeout=10)
    await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    host = postgres.host_part.split("@", 1)[1]
    dsn = f"postgresql://{role}@{host}/{transient_db}"
    held = await asyncpg.connect(dsn, timeout=10)
    try:
        failure = await _raised(asyncpg.connect(dsn, timeout=10))
    finally:
        await held.close()
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()
    assert getattr(failure, "sqlstate", None) == "53300", repr(failure)
    assert is_transient(failure)


async def test_the_calls_own_errors_are_not_transient(
    postgres: PostgresServer, transient_db: str, tmp_path: Path
) -> None:
    connection = await asyncpg.connect(postgres.asyncpg_dsn(transient_db), timeout=10)
    try:
        await connection.execute("CREATE TEMP TABLE once_only (k int PRIMARY KEY)")
        await connection.execute("INSERT INTO once_only VALUES (1)")
        duplicate = await _raised(connection.execute("INSERT INTO once_only VALUES (1)"))
        syntax = await _raised(connection.execute("SELEC 1"))
    finally:
        await connection.close()
    assert not is_transient(duplicate), repr(duplicate)
    assert not is_transient(syntax), repr(syntax)
    missing = await _raised(asyncio.to_thread((tmp_path / "missing.json").read_text))
    assert not is_transient(missing), repr(missing)
    assert not is_transient(asyncio.CancelledError())


@contextlib.asynccontextmanager
async def _http_server() -> AsyncIterator[str]:
    """A real HTTP server: ``/busy`` answers 503, anything else 404."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        status = b"503 Service Unavailable" if b" /busy " in request else b"404 Not Found"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def _status_error(response: httpx.Response) -> httpx.HTTPStatusError:
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        return exc
    raise AssertionError(f"{response.status_code} raised nothing")


async def test_http_5xx_is_transient_and_4xx_is_not() -> None:
    async with _http_server() as base, httpx.AsyncClient(base_url=base) as client:
        busy = await client.get("/busy")
        missing = await client.get("/nothing")
    overloaded = _status_error(busy)
    assert is_transient(overloaded), repr(overloaded)
    not_found = _status_error(missing)
    assert not is_transient(not_found), repr(not_found)


async def test_retry_gets_through_a_terminated_connection_and_not_a_bug(
    postgres: PostgresServer, transient_db: str
) -> None:
    dsn = postgres.asyncpg_dsn(transient_db)
    doomed = await asyncpg.connect(dsn, timeout=10)
    await _terminate(postgres.admin_dsn, doomed.get_server_pid())
    calls: list[str] = []

    async def query() -> int:
        calls.append("call")
        if len(calls) == 1:
            return int(await doomed.fetchval("SELECT 1"))  # the dropped connection
        fresh = await asyncpg.connect(dsn, timeout=10)
        try:
            return int(await fresh.fetchval("SELECT 2"))
        finally:
            await fresh.close()

    try:
        assert await retry_transient("test query", query, budget_seconds=10) == 2
    finally:
        doomed.terminate()
    assert len(calls) == 2

    bugs: list[str] = []

    async def broken() -> int:
        bugs.append("call")
        connection = await asyncpg.connect(dsn, timeout=10)
        try:
            return int(await connection.fetchval("SELEC 1"))
        finally:
            await connection.close()

    with pytest.raises(asyncpg.PostgresSyntaxError):
        await retry_transient("test query", broken, budget_seconds=10)
    assert bugs == ["call"]  # not transient: failed at once
