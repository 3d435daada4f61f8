"""Prefect logs "Finished in state Suspended" at ERROR; for this system a suspend is the normal way
to wait, so that line is rewritten to INFO (the UI and the console then show errors only for runs
that really failed)."""

from __future__ import annotations

import logging

__all__ = ["install_suspend_log_filter"]

_WAITING_STATES = ("Finished in state Suspended", "Finished in state Paused")


class _SuspendIsNotAnError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith(_WAITING_STATES):
            record.levelno = logging.INFO
            record.levelname = logging.getLevelName(logging.INFO)
        return True


def install_suspend_log_filter(logger: logging.Logger | None = None) -> None:
    """Attach the filter to Prefect's flow-run logger (or ``logger``) once (idempotent)."""
    logger = logger or logging.getLogger("prefect.flow_runs")
    if not any(isinstance(f, _SuspendIsNotAnError) for f in logger.filters):
        logger.addFilter(_SuspendIsNotAnError())
