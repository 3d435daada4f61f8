"""Plain-text log lines that a value cannot forge: control characters are escaped.

A device id, a Service Bus session id or an event name comes from outside. Written raw into a
plain-text log, a newline in one of them starts a line of the attacker's choosing (a fake
``ERROR`` record, a fake "completed" line). The JSON logs (``observability.JsonFormatter``) escape
them by construction; this module does the same for the plain-text logs of ``listen``,
``deadletters process``, ``send-event`` and ``worker``:

- ``escape_controls(text)`` writes every C0/C1 control character, DEL and the Unicode line and
  paragraph separators as a visible escape (``\\n``, ``\\x1b``, ``\\u2028``), as ``repr`` would.
- ``EscapingFormatter`` escapes the message of each record and masks known secret shapes in it
  (``observability.redact``, as the JSON logs do); a traceback keeps its lines, every one
  indented, so a line that starts at column 0 is always a record of its own. A
  connection failure (``is_connection_failure``) is one line, ``message: Error: why``, not a
  traceback: a process that retries an unreachable service every second logs a line per retry.
- ``configure_plain_logging()`` is the CLI's ``logging.basicConfig`` with that formatter, and
  ``escape_handlers()`` wraps the formatters of handlers someone else installed (Prefect's console).

``ORCH_LOG_FORMAT=json`` (default ``text``) makes ``configure_plain_logging()`` write JSON lines
instead (``observability.JsonFormatter``, one event per line): every console handler of every
logger (Prefect's rich console on the root, ``prefect._internal``'s debug handler, ``uvicorn`` and
``fastapi``) is replaced by one JSON handler, so no line of the process's log is anything else.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

from operations.chain import exception_chain

__all__ = [
    "EscapingFormatter",
    "configure_plain_logging",
    "escape_controls",
    "escape_handlers",
    "is_connection_failure",
    "log_format",
    "route_to_json",
]

LOG_FORMAT_ENV = "ORCH_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: Loggers that speak at INFO about their own plumbing (connections, HTTP calls, Prefect clients).
NOISY_LOGGERS = ("azure", "uamqp", "httpx", "prefect")

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
#: Exception classes (by name, so that no driver is imported) that mean "could not reach it".
_CONNECTION_ERRORS = frozenset(
    {
        "TransportError",  # httpx: connect, read, write, pool, timeouts, protocol
        "PostgresConnectionError",  # asyncpg
        "ConnectionDoesNotExistError",
        "CannotConnectNowError",
        "InvalidCatalogNameError",
        "TooManyConnectionsError",
        "OperatorInterventionError",  # asyncpg: the server shut the connection (admin, crash)
        "InterfaceError",  # asyncpg and DB-API: the connection is closed or unusable
        "OperationalError",  # DB-API: connect failed, server gone, SQLite file locked
        "ServiceBusConnectionError",
        "OperationTimeoutError",
    }
)
#: PostgreSQL error classes of a connection lost or refused: 08 connection exception, 57
#: operator intervention (shutdown, terminated), 53 insufficient resources, 3D invalid catalog.
_CONNECTION_SQLSTATES = ("08", "57", "53", "3D")
#: What a traceback's continuation lines start with: never column 0.
_CONTINUATION = "    "


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape (one line out)."""
    return _CONTROLS.sub(_escape_one, text)


def _indented(text: str) -> str:
    """A multi-line block (a traceback) with its controls escaped line by line, every line
    indented: its lines stay readable and none can pass for a record."""
    return "\n".join(_CONTINUATION + escape_controls(line) for line in text.splitlines())


def _redact(text: str) -> str:
    """The JSON logs' secret masking (``observability.redact``), for the plain-text ones too."""
    from operations.observability import redact

    return redact(text)


def is_connection_failure(exc: BaseException) -> bool:
    """True when ``exc`` (or what caused it) is a failure to reach a service: a socket error, a
    timeout, an httpx transport error, a database driver's connection error."""
    for link in exception_chain(exc, every_member=False):
        names = {klass.__name__ for klass in type(link).__mro__}
        if isinstance(link, OSError) or names & _CONNECTION_ERRORS:
            return True
        if str(getattr(link, "sqlstate", "") or "").startswith(_CONNECTION_SQLSTATES):
            return True
    return False


def _summary(exc: BaseException) -> str:
    """``Outer: message (cause: Root: message)`` on one line."""
    root = exception_chain(exc, every_member=False)[-1]
    text = f"{type(exc).__name__}: {exc}"
    if root is not exc:
        text += f" (cause: {type(root).__name__}: {root})"
    return text


class EscapingFormatter(logging.Formatter):
    """Formats a copy of the record whose message and traceback are escaped.

    ``inner`` (default: a ``logging.Formatter`` with ``fmt``) does the layout, so a handler keeps
    its own format; the record itself is not changed, other handlers see it as it was.
    """

    def __init__(
        self, fmt: str | None = PLAIN_FORMAT, *, inner: logging.Formatter | None = None
    ) -> None:
        super().__init__(fmt)
        self.inner = inner or logging.Formatter(fmt)

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(dict(record.__dict__))
        safe.msg = _redact(escape_controls(record.getMessage()))
        safe.args = None
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_connection_failure(exc):
            # A service out of reach is retried, often every second: one line per attempt,
            # not a traceback per attempt (the cause says which service and why).
            safe.msg = f"{safe.msg}: {_redact(escape_controls(_summary(exc)))}"
            safe.exc_text = None
        elif record.exc_info:
            safe.exc_text = _indented(self.inner.formatException(record.exc_info))
        elif record.exc_text:
            safe.exc_text = _indented(record.exc_text)
        safe.exc_info = None
        if record.stack_info:
            safe.stack_info = _indented(record.stack_info)
        return self.inner.format(safe)


def escape_handlers(handlers: Iterable[logging.Handler]) -> None:
    """Wrap each handler's formatter in an ``EscapingFormatter`` (once; idempotent)."""
    for handler in handlers:
        current = handler.formatter
        if isinstance(current, (EscapingFormatter, _json_formatter_type())):
            continue  # already escaped, or JSON (escapes by construction)
        handler.setFormatter(EscapingFormatter(inner=current or logging.Formatter(PLAIN_FORMAT)))


def _json_formatter_type() -> type[Any]:
    from operations.observability import JsonFormatter

    return JsonFormatter


def log_format(environ: Any = None) -> str:
    """``ORCH_LOG_FORMAT`` (``text`` or ``json``; default ``text``). A value it does not know is
    said once on stderr and the logs stay text: logging must not stop the process."""
    raw = (os.environ if environ is None else environ).get(LOG_FORMAT_ENV, "")
    chosen = raw.strip().lower() or "text"
    if chosen in LOG_FORMATS:
        return chosen
    print(
        f"warning: {LOG_FORMAT_ENV}={escape_controls(raw[:40])!r} is not one of "
        f"{', '.join(LOG_FORMATS)}; logging text",
        file=sys.stderr,
    )
    return "text"


def _is_console(handler: logging.Handler) -> bool:
    """A handler writing to the process's stderr or stdout (Prefect's rich console included);
    a capture handler on a buffer (pytest's) or a file is not one."""
    if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
        return False
    if type(handler).__name__ == "PrefectConsoleHandler":
        return True
    consoles = (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__)
    return any(handler.stream is console for console in consoles)


def route_to_json(stream: Any = None) -> logging.Handler:
    """Replace every console handler of every logger (root included) by one JSON-lines handler
    on ``stream`` (stderr). A logger that does not propagate (``uvicorn``, ``prefect._internal``)
    gets the JSON handler in place of its console one; a propagating one reaches the root's.
    Handlers that are not consoles (Prefect's API log handler, files) stay. Returns the JSON
    handler."""

    from operations.observability import JsonFormatter

    root = logging.getLogger()
    json_handler = next(
        (h for h in root.handlers if _is_console(h) and isinstance(h.formatter, JsonFormatter)),
        None,
    )
    if json_handler is None or (
        stream is not None and getattr(json_handler, "stream", None) is not stream
    ):
        json_handler = logging.StreamHandler(stream or sys.stderr)
        json_handler.setFormatter(JsonFormatter())
    loggers = [root, *root.manager.loggerDict.values()]
    for logger in loggers:
        if not isinstance(logger, logging.Logger):
            continue  # a placeholder: no handlers of its own
        consoles = [
            h
            for h in logger.handlers
            if h is not json_handler
            and (_is_console(h) or isinstance(h.formatter, JsonFormatter))  # or ours, stale
        ]
        for handler in consoles:
            logger.removeHandler(handler)
        # A propagating logger reaches the root's JSON handler: a second one would double lines.
        keeps_own = logger is root or (consoles and not logger.propagate)
        if keeps_own and json_handler not in logger.handlers:
            logger.addHandler(json_handler)
    return json_handler


def configure_plain_logging(level: int | str | None = logging.INFO, *, stream: Any = None) -> None:
    """Plain-text logs with escaped fields: the root logger's handlers (Prefect's console handler
    when Prefect configured logging, else a new stderr handler) and Prefect's own console
    handlers; noisy libraries at WARNING. ``level`` None keeps the root's level.

    With ``ORCH_LOG_FORMAT=json``, JSON lines instead, on every console handler
    (``route_to_json``)."""
    root = logging.getLogger()
    if log_format() == "json":
        route_to_json(stream)
        if level is not None:
            root.setLevel(level)
            for noisy in NOISY_LOGGERS:
                logging.getLogger(noisy).setLevel(logging.WARNING)
        return
    if stream is not None or not root.handlers:
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(EscapingFormatter())
        root.addHandler(handler)
    escape_handlers(root.handlers)
    if level is not None:
        root.setLevel(level)
        for noisy in NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    escape_prefect_console()


def escape_prefect_console() -> None:
    """Escape the console handlers Prefect configured (its ``prefect`` loggers do not propagate
    to the root), if Prefect's logging is set up in this process; never imports Prefect."""
    if "prefect.logging" not in sys.modules:
        return
    seen: list[logging.Handler] = []
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and handler not in seen:
                seen.append(handler)
    escape_handlers(seen)
