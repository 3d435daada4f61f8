"""The executor across a Prefect outage: one WARNING when polling starts failing, one INFO when it
works again, no traceback per poll (issue 9: "a long-running process logs one line per retry, not a
traceback per second")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.test_router import SwitchableProxy

pytestmark = pytest.mark.integration

DEADLINE = 60.0


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_an_outage_is_one_warning_and_one_info_not_a_traceback_per_poll(
    prefect_server: Any,
) -> None:
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from flows.executor import Executor
    from flows.workflow import run_workflow

    upstream = int(prefect_server.api_url.rsplit(":", 1)[1].split("/")[0])
    proxy = SwitchableProxy(upstream)
    await proxy.start()
    executor = Executor(
        {uuid.uuid4(): run_workflow},
        poll_seconds=0.02,
        resume_timers=False,
    )
    # Prefect's logging setup may stop propagation: listen on the executor's logger itself.
    kept = Kept()
    logger = logging.getLogger("flows.executor")
    logger.addHandler(kept)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        # No client retries: each poll fails at once, so the outage spans many polls quickly.
        url = f"http://127.0.0.1:{proxy.port}/api"
        with temporary_settings({PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}):
            task = asyncio.create_task(executor.run())
            try:
                await wait_for(lambda: executor.stats.polls >= 1, "a first poll answered")
                proxy.down()
                await wait_for(lambda: executor.stats.failed_polls >= 3, "three failed polls")
                answered = executor.stats.polls
                proxy.up = True
                await wait_for(lambda: executor.stats.polls > answered, "polls answered again")
            finally:
                executor.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=30)
    finally:
        logger.removeHandler(kept)
        logger.setLevel(level)
        await proxy.close()

    records = kept.records
    said = [(r.levelname, r.getMessage()) for r in records if r.levelno >= logging.INFO]
    polling = [(level, text) for level, text in said if "polling" in text]
    assert [level for level, _ in polling] == ["WARNING", "INFO"], said
    assert "trying again every" in polling[0][1]
    assert "works again" in polling[1][1]
    assert not [r for r in records if r.levelno >= logging.INFO and r.exc_info], said
