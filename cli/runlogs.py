"""The run's own log records stay off the console of ``orchestration run | demo``.

The run executes in the command's process, so Prefect's flow- and task-run loggers would print
on stderr what the command already says state by state, and a failed run would end in Prefect's
traceback (the engine logs the exception at ERROR). Those records still reach the Prefect API
through its own handler (the UI shows them); only the console handlers drop them. The exception
a run ended with is kept, by flow run id, so the command can print its state, error and cause.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

__all__ = ["RunLogs", "failure_fields", "run_logs_off_console"]

_RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")


class RunLogs(logging.Filter):
    """Drops the run loggers' records; remembers the last exception logged for each flow run."""

    def __init__(self) -> None:
        super().__init__()
        self.exceptions: dict[str, BaseException] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_RUN_LOGGERS):
            return True
        run_id = getattr(record, "flow_run_id", None)
        if record.exc_info and record.exc_info[1] is not None and run_id:
            self.exceptions[str(run_id)] = record.exc_info[1]
        return False


def _console_handlers() -> list[logging.Handler]:
    """The stream handlers on stderr/stdout of every configured logger (Prefect's console)."""
    loggers: list[Any] = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    found: list[logging.Handler] = []
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and handler not in found:
                found.append(handler)
    return found


@contextlib.contextmanager
def run_logs_off_console() -> Iterator[RunLogs]:
    """For the block: the run loggers' records leave the console handlers (not the API's)."""
    import prefect.logging  # noqa: F401 - Prefect configures its handlers on import

    logs = RunLogs()
    handlers = _console_handlers()
    for handler in handlers:
        handler.addFilter(logs)
    try:
        yield logs
    finally:
        for handler in handlers:
            handler.removeFilter(logs)


def failure_fields(exception: BaseException | None, message: str | None) -> dict[str, Any]:
    """``state``, ``error``, ``cause`` and ``message`` of a failed run, from the exception it
    ended with (``WorkflowFailedError`` carries them) or else from the final state's message."""
    from flows.workflow import WorkflowFailedError

    if isinstance(exception, WorkflowFailedError):
        return {
            "state": exception.state,
            "error": exception.error,
            "cause": exception.cause,
            "message": str(exception),
        }
    if exception is not None:
        return {
            "state": None,
            "error": type(exception).__name__,
            "cause": str(exception) or None,
            "message": message or str(exception),
        }
    return {"state": None, "error": message or "unknown", "cause": None, "message": message}
