"""What an operator sees of a run in the Prefect UI, in a real browser (issue 10).

Runs are made on the session's real Prefect server as in ``test_flow_run_page`` (same fixture
definitions, same executor); the pages are Prefect's own UI (``start_ui``) in Debian's chromium,
driven by Playwright. Each page is checked on its rendered text: the task-run list holds the
workflow's activity states only, a failed step is a Failed task run with its error and cause, a
waiting run's state message says what it waits for and until when, and a completed run's output
is a markdown artifact one click away.

``ORCH_UI_SCREENSHOTS=1`` saves the pages to ``docs/screenshots/`` (the pictures in
docs/OPERATIONS.md); CI leaves the docs alone. Without chromium or playwright the tests skip
with the reason, and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.conftest import missing_service
from tests.integration.test_flow_harness import FlowSystem, flow_database_url, flow_system
from tests.support.browser import UiServer, launch, playwright_missing, start_ui

__all__ = ["flow_database_url", "flow_system"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
#: Playwright's waits (a page's data arrives from the API after the bundle loads), in ms.
WAIT_MS = 60_000
FAILURE = "Device.Refused: the device said no"


def _tag(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def browser_ready() -> None:
    """Asked first, so that a machine without a browser skips before any server starts."""
    reason = playwright_missing()
    if reason is not None:
        missing_service(reason)


@pytest.fixture(scope="session")
def prefect_ui(browser_ready: None, prefect_server: Any) -> Iterator[UiServer]:
    ui = start_ui(prefect_server.api_url)
    try:
        yield ui
    finally:
        ui.stop()


@pytest_asyncio.fixture
async def page(browser_ready: None, tmp_path: Path) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        context = await launch(playwright, tmp_path / "chromium-profile")
        context.set_default_timeout(WAIT_MS)
        try:
            yield await context.new_page()
        finally:
            await context.close()


async def _screenshot(page: Any, name: str) -> None:
    if os.environ.get("ORCH_UI_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


async def _open_run(page: Any, ui: UiServer, run_id: uuid.UUID, state: str) -> None:
    """The run's page, once its header shows ``state`` (the UI reads the API after loading)."""
    from playwright.async_api import expect

    await page.goto(f"{ui.url}/runs/flow-run/{run_id}")
    await expect(page.locator(".state-badge").first).to_have_text(state, timeout=WAIT_MS)


async def _tab(page: Any, tab_id: str) -> None:
    await page.locator(f"li.p-tab#{tab_id}").click()


async def _task_runs(page: Any, count: int) -> list[tuple[str, str]]:
    """The Task Runs tab's rows as (name, state), once it lists ``count``."""
    from playwright.async_api import expect

    await _tab(page, "task-runs")
    rows = page.locator(".task-run-list .task-run-list-item")
    if count == 0:
        await expect(page.get_by_text("No task runs")).to_be_visible()
        return []
    await expect(rows).to_have_count(count)
    found = []
    for index in range(count):
        row = rows.nth(index)
        name = await row.locator(".task-run-list-item__breadcrumbs a").inner_text()
        state = await row.locator(".state-badge").inner_text()
        found.append((name.strip(), state.strip()))
    return found


async def test_a_completed_run_in_the_ui_lists_its_states_and_shows_its_output(
    page: Any, prefect_ui: UiServer, flow_system: FlowSystem
) -> None:
    from playwright.async_api import expect

    device = _tag("dev")
    run_id = await flow_system.start("event.json", {"tag": _tag("ui-done")}, device_id=device)
    await flow_system.suspended(run_id, "waitready")
    await flow_system.send_event(device, "device.ready", {"firmware": "2.1"})
    assert await flow_system.result(run_id) == {"ready": {"firmware": "2.1"}}

    await _open_run(page, prefect_ui, run_id, "Completed")
    # The activity state only: no load, register, claim, resolve or finish task runs.
    assert await _task_runs(page, 1) == [("After", "Completed")]
    await expect(page.get_by_text("1 Task run", exact=True).first).to_be_visible()
    await _screenshot(page, "completed-run")

    await _tab(page, "artifacts")
    output_card = page.locator(".artifact-card", has_text="Output of the run.")
    await expect(output_card).to_have_count(1)
    await expect(output_card.locator(".artifact-card__subheader")).to_have_text("markdown")
    await output_card.click()
    await page.wait_for_url(re.compile(r"/artifacts/artifact/"))
    shown = page.locator(".artifact-data-view")  # the artifact's markdown: the output as JSON
    await expect(shown).to_contain_text('"ready": {')
    await expect(shown).to_contain_text('"firmware": "2.1"')
    await _screenshot(page, "completed-run-output")


async def test_a_failed_run_in_the_ui_shows_its_failed_step_with_error_and_cause(
    page: Any, prefect_ui: UiServer, flow_system: FlowSystem
) -> None:
    from playwright.async_api import expect

    run_id = await flow_system.start("task-fails.json", {"tag": _tag("ui-broken")})
    flow_run = await flow_system.final(run_id)
    assert flow_run.state.is_failed()

    await _open_run(page, prefect_ui, run_id, "Failed")
    assert await _task_runs(page, 1) == [("Refuse", "Failed")]
    await _screenshot(page, "failed-run")

    await page.locator(".task-run-list a", has_text="Refuse").click()
    await page.wait_for_url(re.compile(r"/runs/task-run/"))
    await expect(page.locator(".state-badge").first).to_have_text("Failed")
    # The task run's final state, as its log shows it: the error and its cause.
    await expect(page.get_by_text(f"Finished in state Failed('{FAILURE}')")).to_be_visible()
    await _screenshot(page, "failed-step")


async def test_a_waiting_run_in_the_ui_says_what_it_waits_for(
    page: Any, prefect_ui: UiServer, flow_system: FlowSystem
) -> None:
    from playwright.async_api import expect

    device = _tag("dev")
    run_id = await flow_system.start("event.json", {"tag": _tag("ui-wait")}, device_id=device)
    flow_run = await flow_system.suspended(run_id, "waitready")
    message = flow_run.state.message
    assert message.startswith(f"waiting at WaitReady for event 'device.ready' of device {device}")

    await _open_run(page, prefect_ui, run_id, "Suspended")
    assert await _task_runs(page, 0) == []  # a wait is no task run

    await _tab(page, "details")
    value = page.locator(".p-key-value", has_text="State Message").locator(".p-key-value__value")
    more = value.get_by_text("See More")
    if await more.count():  # the UI cuts long messages; the operator clicks to read all of it
        await more.click()
    await expect(value).to_contain_text(message)
    await _screenshot(page, "waiting-run")
