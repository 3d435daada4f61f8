"""Transient failures of our own bookkeeping, and the bounded retry a run gives them.

``is_transient(exc)`` is the one place that says whether trying the same call again later can
succeed because the failure was the connection's, not the call's. It reads the whole exception
chain (``__cause__``/``__context__``, and every member of an exception group) and answers True for:

- a lost or refused database connection: SQLSTATE class ``08`` (connection exception), ``57P01``
  admin shutdown (``pg_terminate_backend``), ``57P02`` crash shutdown, ``57P03`` cannot connect
  now (starting up), ``53300`` too many connections, and ``40001``/``40P01`` (serialization
  failure, deadlock: PostgreSQL asks the client to try again); asyncpg's
  ``ConnectionDoesNotExistError``, an ``InterfaceError`` about a closed connection and its
  ``InternalClientError`` (the server's termination notice arrived mid-protocol); a socket
  error (``ConnectionError``, ``TimeoutError``, any ``OSError`` that is not about a file);
- SQLAlchemy's ``DBAPIError`` with ``connection_invalidated`` and its pool's ``TimeoutError``
  (every pooled connection busy); SQLite's ``database is locked``;
- the Prefect API unreachable or overloaded: an httpx ``TransportError`` (connect, read, write,
  pool, protocol, timeouts) or an HTTP status 5xx or 429.

Anything else (a constraint violation, a syntax error, a missing file, a 4xx answer) is not
transient: the call fails at once.

``retry_transient(what, call)`` runs ``call`` and runs it again after a transient failure, with
exponential backoff and full jitter (0.1 s doubling up to 5 s) for at most ``budget_seconds``
(default 60 s), logging one WARNING line per retry; then it raises the last failure. The called
operation must be safe to repeat (idempotent), which every caller states.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from operations.chain import exception_chain

__all__ = ["DEFAULT_BUDGET_SECONDS", "is_transient", "retry_transient"]

logger = logging.getLogger("store.transient")

T = TypeVar("T")

DEFAULT_BUDGET_SECONDS = 60.0
FIRST_DELAY_SECONDS = 0.1
MAX_DELAY_SECONDS = 5.0

#: SQLSTATEs whose statement can succeed on a new attempt (see the module docstring).
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
_TRANSIENT_SQLSTATE_CLASSES = ("08",)
#: Driver exceptions (by name: no driver is imported) that mean the connection is gone.
_CONNECTION_GONE = frozenset(
    {
        "ConnectionDoesNotExistError",
        "ConnectionFailureError",
        # asyncpg, when pg_terminate_backend's FATAL notice lands between two protocol states
        # ("cannot switch to state 11; another operation is in progress"): the connection is dead.
        "InternalClientError",
    }
)
#: ``OSError`` subclasses that are about files, not sockets: a missing definition is no retry.
_FILE_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)
_FILE_ERRNOS = frozenset({errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR, errno.EACCES})
_SQLITE_BUSY = ("database is locked", "database table is locked")


def _names(exc: BaseException) -> set[str]:
    return {klass.__name__ for klass in type(exc).__mro__}


def _sqlstate(exc: BaseException) -> str:
    for attribute in ("sqlstate", "pgcode"):
        value = getattr(exc, attribute, None)
        if isinstance(value, str) and value:
            return value
    return ""


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _one_is_transient(exc: BaseException) -> bool:
    names = _names(exc)
    sqlstate = _sqlstate(exc)
    if sqlstate in _TRANSIENT_SQLSTATES or sqlstate.startswith(_TRANSIENT_SQLSTATE_CLASSES):
        return True
    if names & _CONNECTION_GONE:
        return True
    if getattr(exc, "connection_invalidated", False) is True:  # SQLAlchemy's DBAPIError
        return True
    module = type(exc).__module__
    if module.startswith("sqlalchemy") and "TimeoutError" in names:  # pool exhausted
        return True
    if "InterfaceError" in names and "closed" in str(exc).lower():
        return True
    if "OperationalError" in names and any(text in str(exc).lower() for text in _SQLITE_BUSY):
        return True
    if isinstance(exc, OSError):
        return not isinstance(exc, _FILE_ERRORS) and exc.errno not in _FILE_ERRNOS
    if "TransportError" in names:  # httpx
        return True
    if "HTTPStatusError" in names:
        status = _http_status(exc)
        return status is not None and (status >= 500 or status == 429)
    return False


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a failure of the connection, not of the call."""
    if isinstance(exc, asyncio.CancelledError):
        return False
    return any(_one_is_transient(link) for link in exception_chain(exc))


def _summary(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


async def retry_transient(
    what: str,
    call: Callable[[], Awaitable[T]],
    *,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    retry_if: Callable[[BaseException], bool] = is_transient,
) -> T:
    """``await call()``, called again after each transient failure until ``budget_seconds``.

    ``what`` names the operation in the log line of each retry (``journal step``, ``event
    claim``). ``retry_if`` narrows what is retried (default ``is_transient``).
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except Exception as exc:
            if not retry_if(exc):
                raise
            ceiling = min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** (attempt - 1))
            delay = random.uniform(ceiling / 2, ceiling)
            spent = time.monotonic() - started
            if spent + delay > budget_seconds:
                logger.warning(
                    "%s: giving up after %d attempts in %.1fs: %s",
                    what,
                    attempt,
                    spent,
                    _summary(exc),
                )
                raise
            logger.warning(
                "%s: transient failure (%s); attempt %d in %.2fs",
                what,
                _summary(exc),
                attempt + 1,
                delay,
            )
            await asyncio.sleep(delay)
