"""Settings of the built-in activities: HTTP, notifications, where definitions come from.

One pydantic-settings model per concern, each with its env prefix. Only a composition root (the CLI,
the API, a flow entry point) reads them from the environment with ``HttpSettings()``; code below it
receives them in its ``ActivityContext``. ``embedded()`` gives the built-in defaults without reading
the environment.
"""

from __future__ import annotations

from typing import TypeVar, cast

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DefinitionSettings", "HttpSettings", "NotifySettings"]

MIB = 1024 * 1024


S = TypeVar("S", bound="_Embedded")


class _Embedded(BaseSettings):
    @classmethod
    def embedded(cls: type[S]) -> S:
        """The embedded defaults alone, without reading the environment.

        ``model_construct`` skips validation, which the defaults need not: they are valid by
        construction (a test pins that they equal a validated instance).
        """
        # cast: the pydantic mypy plugin types model_construct as returning the defining class.
        return cast(S, cls.model_construct())


class HttpSettings(_Embedded):
    """``http.request``: which hosts it may call and how much it may read (``ORCH_HTTP_*``).

    ``allowed_hosts`` holds exact host names or IP addresses, ``*.example.com`` for the subdomains
    of a domain, or ``*`` for any host; each may end in ``:port`` to allow that port only
    (``api.example.com:8443``, ``[2001:db8::1]:443``), else every port of the host is allowed.
    A redirect never leaves the port it came from (but for http on 80 up to https on 443).
    Whatever the list says, addresses that are loopback, private, link-local (cloud metadata such
    as 169.254.169.254 and Azure's 168.63.129.16), unspecified, multicast or reserved are refused;
    ``allow_loopback`` lets loopback through (local development and tests only).
    """

    model_config = SettingsConfigDict(env_prefix="ORCH_HTTP_", extra="ignore")

    allowed_hosts: list[str] = Field(default_factory=list)
    allow_loopback: bool = False
    max_response_bytes: int = Field(default=MIB, gt=0)
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_redirects: int = Field(default=3, ge=0, le=10)


class NotifySettings(_Embedded):
    """``notify.send`` (``ORCH_NOTIFY_*``): POST to ``webhook_url`` when set, else log and record.

    The webhook URL often carries a token (Slack, Teams): it is a secret, never logged or returned.
    """

    model_config = SettingsConfigDict(env_prefix="ORCH_NOTIFY_", extra="ignore")

    webhook_url: SecretStr | None = None
    default_channel: str = "log"
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)


class DefinitionSettings(_Embedded):
    """``definitions.load`` (``ORCH_DEFINITIONS_*``): a directory, or an Azure Blob container.

    With ``azure_container`` and either ``azure_block_name`` (a saved prefect-azure
    ``AzureBlobStorageCredentials`` block) or ``azure_account_url`` (credentials from
    ``DefaultAzureCredential``), definitions are read from the container; otherwise from
    ``directory``.
    """

    model_config = SettingsConfigDict(env_prefix="ORCH_DEFINITIONS_", extra="ignore")

    directory: str = "definitions"
    azure_container: str | None = None
    azure_account_url: str | None = None
    azure_block_name: str | None = None

    @property
    def uses_azure(self) -> bool:
        return bool(self.azure_container and (self.azure_block_name or self.azure_account_url))
