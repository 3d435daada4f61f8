"""What a run shows on its Prefect page: the trail of states and the output, as artifacts.

- The trail is a table artifact. A run publishes it whole once it has ended
  (``TRAIL_DESCRIPTION``) and, each time it suspends, the trail so far with a last row for the
  wait it is in (``SO_FAR_DESCRIPTION``): a waiting or cancelled run still shows where it is.
- The output of a completed run is a markdown artifact holding it as a JSON block
  (``OUTPUT_DESCRIPTION``); ``read_output`` reads it back (the management API does).

A table cell is one line in the UI and a long one is clipped: an outcome is cut to
``MAX_OUTCOME`` characters here (the run's log has every line whole).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

from interpreter.runtime import TrailEntry

__all__ = [
    "MAX_OUTCOME",
    "OUTPUT_DESCRIPTION",
    "SO_FAR_DESCRIPTION",
    "TRAIL_DESCRIPTION",
    "publish_output",
    "publish_trail",
    "read_output",
    "trail_rows",
    "waiting_row",
]

TRAIL_DESCRIPTION = "Trail of states."
SO_FAR_DESCRIPTION = "Trail so far."
OUTPUT_DESCRIPTION = "Output of the run."
MAX_OUTCOME = 160
#: Larger outputs are not copied into an artifact (the run's persisted result still has them).
MAX_OUTPUT_CHARS = 200_000
_FENCE_OPEN = "```json\n"
_FENCE_CLOSE = "\n```"


def trail_rows(trail: list[TrailEntry]) -> list[dict[str, Any]]:
    """The table's rows: when, state path, type, visit and the (shortened) outcome."""
    return [
        {
            "at": entry.at.isoformat(),
            "state": entry.path,
            "type": entry.type,
            "visit": entry.visit,
            "outcome": _short(entry.outcome),
        }
        for entry in trail
    ]


def waiting_row(path: str, visit: int, message: str, at: datetime | None = None) -> dict[str, Any]:
    """The last row of a waiting run's trail: the wait it is in (``at``: when it suspended)."""
    moment = at or datetime.now(UTC)
    return {
        "at": moment.isoformat(),
        "state": path,
        "type": "wait",
        "visit": visit,
        "outcome": _short(message),
    }


def _short(text: str) -> str:
    return text if len(text) <= MAX_OUTCOME else text[: MAX_OUTCOME - 1] + "…"


async def publish_trail(rows: list[dict[str, Any]], description: str) -> None:
    """The rows as a table artifact of the current run."""
    await acreate_table_artifact(table=rows, description=description)


async def publish_output(output: Any) -> None:
    """A completed run's output as a JSON block in a markdown artifact of the current run."""
    text = json.dumps(output, indent=2, ensure_ascii=False, default=str)
    if len(text) > MAX_OUTPUT_CHARS:
        markdown = f"The output is {len(text):,} characters long, too long to show here."
    else:
        markdown = f"{_FENCE_OPEN}{text}{_FENCE_CLOSE}"
    await acreate_markdown_artifact(markdown=markdown, description=OUTPUT_DESCRIPTION)


def read_output(markdown: Any) -> tuple[bool, Any]:
    """``(True, output)`` from an output artifact's data; ``(False, None)`` when it holds none."""
    if not isinstance(markdown, str):
        return False, None
    if not (markdown.startswith(_FENCE_OPEN) and markdown.endswith(_FENCE_CLOSE)):
        return False, None
    try:
        return True, json.loads(markdown[len(_FENCE_OPEN) : -len(_FENCE_CLOSE)])
    except ValueError:
        return False, None
