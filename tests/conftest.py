"""Session fixtures shared by every test package: PostgreSQL and a real Prefect server.

Services the tests need are started here and stopped at the end. Without PostgreSQL (and without the
binaries to start a throwaway cluster) those tests skip with the reason; under CI (``CI=true``) a
missing service fails instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, in_ci, start_postgres

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = Path(os.environ.get("ORCH_SHARED_DIR", REPO_ROOT.parent / "shared"))


def missing_service(reason: str) -> None:
    """Skip, or fail under CI, where a service is required."""
    if in_ci():
        pytest.fail(f"required service missing under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    if isinstance(server, str):
        missing_service(server)
        raise AssertionError("unreachable")  # missing_service always raises
    yield server
    server.close()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (the fake Service Bus and the notes); skip with a reason when absent."""
    if not (SHARED_DIR / "tools" / "fake-servicebus" / "fake_servicebus.py").exists():
        missing_service(f"{SHARED_DIR} (../shared with tools/fake-servicebus) is not present")
    return SHARED_DIR


@pytest.fixture(scope="session")
def prefect_server(postgres: PostgresServer) -> Iterator[object]:
    """A real Prefect server on PostgreSQL; this process's Prefect settings point at it."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
        temporary_settings,
    )

    from tests.support.prefect_server import start_prefect_server

    server = start_prefect_server(postgres)
    os.environ.update(server.env)
    try:
        with temporary_settings(
            updates={
                PREFECT_API_URL: server.api_url,
                PREFECT_HOME: server.home,
                PREFECT_LOCAL_STORAGE_PATH: server.home / "results",
                PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
            }
        ):
            yield server
    finally:
        server.stop()
