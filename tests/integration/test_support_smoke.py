"""The test infrastructure itself: PostgreSQL and the Prefect server come up and answer."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.support.postgres import PostgresServer


def test_postgres_database_is_created_and_usable(postgres: PostgresServer) -> None:
    name = postgres.create_database("smoke")

    async def roundtrip() -> int:
        conn = await asyncpg.connect(postgres.asyncpg_dsn(name))
        try:
            return int(await conn.fetchval("SELECT 40 + 2"))
        finally:
            await conn.close()

    assert asyncio.run(roundtrip()) == 42


def test_prefect_server_answers_health(prefect_server: object) -> None:
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url == prefect_server.api_url  # type: ignore[attr-defined]
    response = httpx.get(f"{url}/health", timeout=10)
    assert response.status_code == 200
