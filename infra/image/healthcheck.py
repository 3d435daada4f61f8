"""The image's HEALTHCHECK: asks the process that has a health endpoint, passes for the others.

One image runs every process (``orchestration serve-api``, ``orchestration worker``,
``orchestration listen``, ``prefect server start``, ``prefect worker start``); only the API
(``/health``) and the Prefect server (``/api/health``) answer HTTP. The command line of PID 1 says
which process this container runs. Standard library only: it runs on every probe.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


def _target(argv: list[str]) -> str | None:
    """The health URL of the process started with ``argv``, or None if it has none."""
    words = [Path(a).name for a in argv]
    if "serve-api" in words:
        port = os.environ.get("ORCH_API_PORT", "8080")
        return f"http://127.0.0.1:{port}/health"
    if "prefect" in words and "server" in words:
        port = os.environ.get("PREFECT_SERVER_API_PORT", "4200")
        return f"http://127.0.0.1:{port}/api/health"
    return None


def main(cmdline: Path = Path("/proc/1/cmdline")) -> int:
    argv = cmdline.read_bytes().split(b"\0")
    url = _target([a.decode(errors="replace") for a in argv if a])
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310  # fixed local URL
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
