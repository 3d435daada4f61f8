"""Management API configuration (env prefix ``ORCH_API_``), read by the composition root only."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ApiSettings"]


class ApiSettings(BaseSettings):
    """Where the API listens, who may call it and how much it accepts.

    ``ORCH_API_API_KEYS='["key-1","key-2"]'`` (JSON list; several keys allow rotation). With no key
    configured every request except ``/health`` and the docs is refused, unless
    ``ORCH_API_ALLOW_ANONYMOUS=true`` (a developer's own machine).
    """

    model_config = SettingsConfigDict(env_prefix="ORCH_API_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    api_keys: list[SecretStr] = Field(default_factory=list)
    allow_anonymous: bool = False
    #: Largest request body accepted (413 beyond it); device events are far smaller.
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    #: Longest a client may take to send its request body, in seconds (408 and the connection
    #: closed beyond it): a client that declares more than it sends does not hold a connection.
    body_timeout: float = Field(default=10.0, gt=0)
    #: ``<flow name>/<deployment name>`` of the workflow flow; default: the ingress setting.
    deployment: str | None = None
    #: Deadline of one call to Prefect (503 beyond it).
    prefect_timeout: float = Field(default=10.0, gt=0)
