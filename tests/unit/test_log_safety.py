"""Plain-text logs: a value cannot forge a line, and a retried connection failure is one line."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from operations.logtext import (
    EscapingFormatter,
    configure_plain_logging,
    escape_controls,
    escape_handlers,
    is_connection_failure,
)

FORGED = "2026-01-01 00:00:00,000 ERROR listeners.servicebus forged"


@pytest.fixture
def logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(EscapingFormatter())
    log = logging.getLogger("tests.log_safety")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    yield log, stream
    log.removeHandler(handler)
    log.propagate = True


def test_control_characters_become_visible_escapes() -> None:
    assert escape_controls("a\nb\rc\td\x1be\x7ff\x85g\u2028h") == (
        "a\\nb\\rc\\td\\x1be\\x7ff\\x85g\\u2028h"
    )
    assert escape_controls("dev-1 café") == "dev-1 café"


def test_a_newline_in_a_device_id_does_not_forge_a_line(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    log.info("device=%s message=%s", f"dev-1\n{FORGED}", "m-1\r\x1b[2K")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert f"device=dev-1\\n{FORGED} message=m-1\\r\\x1b[2K" in lines[0]


def test_a_traceback_keeps_its_lines_but_none_starts_a_record(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    try:
        raise ValueError(f"bad event\n{FORGED}")
    except ValueError:
        log.exception("handling failed")

    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("handling failed")
    assert rest, "the traceback is kept for a bug"
    assert rest[0] == "    Traceback (most recent call last):"
    assert all(line.startswith("    ") for line in rest), rest  # none passes for a record
    assert f"    {FORGED}" in rest


def test_a_connection_failure_is_one_line_not_a_traceback(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    for _ in range(3):  # a loop retrying an unreachable database
        try:
            try:
                raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
            except OSError as exc:
                raise RuntimeError("reading the outbox") from exc
        except RuntimeError:
            log.exception("reconciler pass failed; trying again in %.1fs", 2.0)

    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    assert "Traceback" not in stream.getvalue()
    assert lines[0].endswith(
        "reconciler pass failed; trying again in 2.0s: RuntimeError: reading the outbox "
        "(cause: ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432))"
    )


def test_handlers_installed_by_others_are_wrapped_once() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s | %(message)s"))
    escape_handlers([handler])
    escape_handlers([handler])
    assert isinstance(handler.formatter, EscapingFormatter)
    assert not isinstance(handler.formatter.inner, EscapingFormatter)

    record = logging.makeLogRecord({"msg": "event %s", "args": ("a\nb",), "levelname": "INFO"})
    assert handler.format(record) == "INFO | event a\\nb"
    assert record.getMessage() == "event a\nb"  # the record itself is left as it was


def test_configure_plain_logging_escapes_the_root_handler() -> None:
    root = logging.getLogger()
    before = {handler: handler.formatter for handler in root.handlers}
    level = root.level
    stream = io.StringIO()
    try:
        configure_plain_logging(logging.INFO, stream=stream)
        logging.getLogger("tests.plain_root").warning("session %s", f"s-1\n{FORGED}")
    finally:
        for handler in list(root.handlers):
            if handler not in before:
                root.removeHandler(handler)
        for handler, formatter in before.items():
            handler.setFormatter(formatter)  # pytest's own capture handlers
        root.setLevel(level)
    assert stream.getvalue().count("\n") == 1
    assert f"session s-1\\n{FORGED}" in stream.getvalue()


class _ServerShutdownError(Exception):
    """Shaped like asyncpg's AdminShutdownError: a SQLSTATE of class 57 (operator intervention)."""

    sqlstate = "57P01"


@pytest.mark.parametrize(
    "exc",
    [
        _ServerShutdownError("terminating connection due to administrator command"),
        ExceptionGroup("task group", [ConnectionRefusedError(111, "refused")]),
        TimeoutError("connect timed out"),
    ],
    ids=["sqlstate-57", "task-group", "timeout"],
)
def test_connection_failures_are_recognised(exc: Exception) -> None:
    assert is_connection_failure(exc)


def test_a_bug_is_not_a_connection_failure() -> None:
    assert not is_connection_failure(KeyError("device"))


def test_plain_text_lines_mask_secrets_as_the_json_lines_do(
    logger: tuple[logging.Logger, io.StringIO],
) -> None:
    log, stream = logger
    log.warning("alert to %s failed", "https://hooks.slack.com/services/T1/B1/PLAINtoken")
    log.warning("connecting with Endpoint=sb://ns/;SharedAccessKey=PLAINkey=")

    assert "PLAINtoken" not in stream.getvalue()
    assert "PLAINkey" not in stream.getvalue()
    assert stream.getvalue().count("***") == 2
