"""A headless browser on the Prefect UI, for the tests that check what an operator sees there.

- ``chromium_path()``: Debian's ``chromium`` (``apt-get install chromium``; ``./dev test``
  installs it as root), or None. Playwright's own browser download is not used: it cannot be
  fetched here.
- ``start_ui(api_url)``: Prefect's UI app (``prefect.server.api.server.create_ui_app``, what
  ``prefect server start`` serves at ``/``) in a subprocess of its own, pointed at the session's
  server through ``PREFECT_UI_API_URL``. The session's server runs ``--no-ui``: building the UI
  into it would slow every test session for the few tests that open a page.
- ``launch(playwright)``: chromium headless with a fresh profile, no network of its own (no
  update checks, sync or QUIC) besides what the page asks for.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.postgres import free_port
from tests.support.prefect_server import log_tail, stop_process, wait_answering

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_DEADLINE_SECONDS = 120


def chromium_path() -> Path | None:
    """Debian's chromium, when installed."""
    return CHROMIUM if CHROMIUM.exists() else None


def playwright_missing() -> str | None:
    """Why no browser test can run here, or None when one can."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (./dev setup installs it from requirements.lock)"
    if chromium_path() is None:
        return f"no browser: {CHROMIUM} is missing (apt-get install chromium)"
    return None


@dataclass
class UiServer:
    """Prefect's UI, served over HTTP by a process of its own."""

    url: str
    process: subprocess.Popen[bytes]
    home: Path
    log_path: Path

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.home, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


def ui_app() -> Any:
    """Uvicorn factory: the UI app alone (static bundle and ``/ui-settings``), no API."""
    from prefect.server.api.server import create_ui_app

    return create_ui_app(ephemeral=False)


def start_ui(api_url: str) -> UiServer:
    """Serve Prefect's UI on a free port; the pages it loads read ``api_url``."""
    home = Path(tempfile.mkdtemp(prefix="orch-prefect-ui-"))
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home),  # the UI bundle is copied under it
            "PREFECT_UI_API_URL": api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
    )
    log_path = home / "ui.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "tests.support.browser:ui_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=Path(__file__).resolve().parents[2],
        )
    server = UiServer(f"http://127.0.0.1:{port}", process, home, log_path)
    try:
        wait_answering(
            process,
            f"{server.url}/ui-settings",
            seconds=UI_DEADLINE_SECONDS,
            what="the Prefect UI",
            log_path=log_path,
        )
    except RuntimeError:
        server.stop()
        raise
    return server


async def launch(playwright: Any, profile: Path) -> Any:
    """Chromium headless on a fresh profile directory; the caller closes the context."""
    return await playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1400, "height": 900},
    )
