"""Database configuration: one pydantic-settings model, read only by the composition root."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_DATABASE_URL", "DatabaseSettings"]

#: The embedded default: a SQLite file under the working directory, no configuration needed.
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.orchestration/orchestration.db"

_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*(@)")


class DatabaseSettings(BaseSettings):
    """Where the orchestration database lives and how the connection pool behaves.

    Production sets ``ORCH_DB_URL=postgresql+asyncpg://user@host:5432/db``; the pool settings apply
    to both dialects (SQLite uses a small queue pool of file connections).

    The URL may carry a password: ``repr``/``str`` show it as ``***``. It stays a ``str`` (not a
    ``SecretStr``) because every caller hands it to SQLAlchemy as it is; the repr is where it
    leaked (a settings object in a log line or a traceback's locals).
    """

    model_config = SettingsConfigDict(env_prefix="ORCH_DB_", extra="ignore", frozen=True)

    url: str = DEFAULT_DATABASE_URL
    pool_size: int = Field(default=5, ge=1)
    max_overflow: int = Field(default=10, ge=0)
    pool_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Recycle connections older than this (PostgreSQL behind load balancers drops idle ones).
    pool_recycle_seconds: int = Field(default=1800, ge=-1)
    #: How long a SQLite writer waits for the file lock before failing with "database is locked".
    sqlite_busy_timeout_ms: int = Field(default=30_000, ge=0)
    #: Run the migrations to head when connecting (the CLI's ``db upgrade`` runs them explicitly).
    migrate_on_connect: bool = True

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            if name == "url" and isinstance(value, str):
                yield name, _URL_PASSWORD.sub(r"\1***\2", value)
            else:
                yield name, value
