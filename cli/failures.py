"""Known failures of any command as one ``error:`` line with its exit code, never a traceback.

``cli.main.main`` runs the app under ``answer_known_failures()``. A failure the user can act on is
named with what failed and where, and the process exits with:

- 2 (usage) for a malformed setting: ``invalid setting ORCH_DB_POOL_SIZE: Input should be a valid
  integer``. The value itself is never printed (``ORCH_API_API_KEYS`` holds keys, ``ORCH_DB_URL``
  a password), only the variable and what was expected.
- 1 for a service that cannot be reached: ``cannot reach the database postgresql+asyncpg://
  app:***@db:5432/app: [Errno 111] Connect call failed ...``, ``cannot reach the Prefect API at
  http://...: All connection attempts failed`` or ``cannot reach Service Bus at sb://...: ...``.

Anything else is a bug and keeps its traceback. Which service failed is read from the exception
chain: a connection error raised inside the database drivers is the database's, one raised by
httpx is Prefect's (the only HTTP service a command calls outside an activity).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import typer

from cli.output import EXIT_FAILURE, EXIT_USAGE
from operations.chain import exception_chain

__all__ = ["answer_known_failures", "describe_failure", "validation_summary"]

_DATABASE_MODULES = ("asyncpg", "sqlalchemy", "aiosqlite", "sqlite3", "store.")
#: Driver errors that mean "could not connect / log in / find the database", not a query's bug.
_DATABASE_CONNECT_ERRORS = frozenset(
    {
        "OperationalError",
        "InterfaceError",
        "InvalidCatalogNameError",
        "InvalidPasswordError",
        "InvalidAuthorizationSpecificationError",
        "CannotConnectNowError",
        "ConnectionDoesNotExistError",
        "TooManyConnectionsError",
        "ClientConfigurationError",
    }
)
_SERVICEBUS_CONNECT_ERRORS = frozenset(
    {
        "ServiceBusConnectionError",
        "ServiceBusCommunicationError",
        "ServiceBusAuthenticationError",
        "ServiceBusAuthorizationError",
    }
)
_FIELD_IN_SETTINGS_ERROR = re.compile(r'error parsing value for field "([^"]+)"')


def _modules(tb: TracebackType | None) -> Iterator[str]:
    while tb is not None:
        yield str(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next


def _class_names(exc: BaseException) -> set[str]:
    return {klass.__name__ for klass in type(exc).__mro__}


def _settings_classes() -> list[type[Any]]:
    from pydantic_settings import BaseSettings

    found: list[type[Any]] = []
    pending: list[type[Any]] = list(BaseSettings.__subclasses__())
    while pending:
        klass = pending.pop()
        found.append(klass)
        pending.extend(klass.__subclasses__())
    return found


def _env_name(klass: type[Any], field: str) -> str:
    prefix = str(klass.model_config.get("env_prefix") or "")
    return f"{prefix}{field}".upper()


def validation_summary(exc: Any, settings: type[Any], *, option: bool = False) -> str:
    """``NAME: what was expected; ...`` for a pydantic ``ValidationError``, without the input.

    The names are the settings' environment variables (``ORCH_DB_POOL_SIZE``); with ``option``
    the command's option too, for a command whose options override the environment
    (``--threshold-hours / ORCH_ALERTS_THRESHOLD_HOURS``)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        where = _env_name(settings, field) if field else settings.__name__
        if option and field:
            where = f"--{field.replace('_', '-')} / {where}"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _invalid_setting(exc: BaseException) -> str | None:
    """The one line for a settings model that did not validate (the value is never shown)."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if isinstance(exc, ValidationError):
        owners = [k for k in _settings_classes() if k.__name__ == exc.title]
        if not owners:
            return None
        return "invalid setting " + validation_summary(exc, owners[0])
    if isinstance(exc, SettingsError):
        match = _FIELD_IN_SETTINGS_ERROR.search(str(exc))
        field = match.group(1) if match else ""
        names = sorted(
            {_env_name(k, field) for k in _settings_classes() if field in k.model_fields}
        )
        named = [name for name in names if name in {key.upper() for key in os.environ}]
        where = " or ".join(named or names) or "a setting"
        cause = exc.__cause__
        why = (
            f'not valid JSON ({cause.msg}); a list is written as JSON, e.g. \'["a", "b"]\''
            if isinstance(cause, json.JSONDecodeError)
            else "cannot be parsed"
        )
        return f"invalid setting {where}: {why}"
    return None


def _database_url() -> str:
    try:
        from store.db import normalize_url
        from store.settings import DatabaseSettings

        shown: str = normalize_url(DatabaseSettings().url).render_as_string(hide_password=True)
    except Exception:  # the URL is only decoration of the message; never fail on it
        return "(ORCH_DB_URL)"
    return shown


def _prefect_url() -> str:
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    if "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return str(PREFECT_API_URL.value() or "(PREFECT_API_URL)")
    return "(PREFECT_API_URL)"


def _unreachable(exc: BaseException) -> str | None:
    """The one line for a database or Prefect server that cannot be reached."""
    chain = exception_chain(exc, every_member=False)
    modules = [module for link in chain for module in _modules(link.__traceback__)]
    root = chain[-1]
    detail = f"{type(root).__name__}: {root}" if str(root) else type(root).__name__
    in_database = any(module.startswith(_DATABASE_MODULES) for module in modules)
    connect_error = any(
        isinstance(link, OSError) or _class_names(link) & _DATABASE_CONNECT_ERRORS for link in chain
    )
    if in_database and connect_error:
        return f"cannot reach the database {_database_url()}: {detail}"
    if any("TransportError" in _class_names(link) for link in chain):
        return f"cannot reach the Prefect API at {_prefect_url()}: {detail}"
    if any(_class_names(link) & _SERVICEBUS_CONNECT_ERRORS for link in chain):
        first = next(link for link in chain if _class_names(link) & _SERVICEBUS_CONNECT_ERRORS)
        return f"cannot reach Service Bus at {_servicebus_where()}: {type(first).__name__}: {first}"
    return None


def _servicebus_where() -> str:
    """The namespace, from ``ORCH_SB_FULLY_QUALIFIED_NAMESPACE`` or the connection string's
    ``Endpoint`` (the key stays out)."""
    try:
        from listeners.settings import ServiceBusSettings

        settings = ServiceBusSettings()
    except Exception:  # decoration of the message only
        return "(ORCH_SB_*)"
    if settings.fully_qualified_namespace:
        return settings.fully_qualified_namespace
    if settings.connection_string is not None:
        for part in settings.connection_string.get_secret_value().split(";"):
            name, _, value = part.partition("=")
            if name.strip().lower() == "endpoint":
                return value.strip()
    return "(ORCH_SB_*)"


def describe_failure(exc: BaseException) -> tuple[str, int] | None:
    """``(message, exit code)`` for a known failure, None for anything else (a bug)."""
    invalid = _invalid_setting(exc)
    if invalid is not None:
        return invalid, EXIT_USAGE
    unreachable = _unreachable(exc)
    if unreachable is not None:
        return unreachable, EXIT_FAILURE
    return None


@contextlib.contextmanager
def answer_known_failures() -> Iterator[None]:
    """Turn a known failure escaping a command into one ``error:`` line and its exit code."""
    try:
        yield
    except Exception as exc:
        known = describe_failure(exc)
        if known is None:
            raise
        message, code = known
        typer.secho(f"error: {_one_line(message)}", fg=typer.colors.RED, err=True)
        raise SystemExit(code) from None


def _one_line(text: str) -> str:
    from operations.logtext import escape_controls

    return escape_controls(text)
