"""A drill's result row and the table of rows (plain text or JSON)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from drills.observe import Expect, Snapshot

__all__ = ["Row", "render_json", "render_table"]


@dataclass
class Row:
    """One drill: what was injected and expected, what was observed, the figures, the verdict."""

    name: str
    injected: str
    expected: str
    observed: str = ""
    sent: int = 0
    stored: int = 0
    duplicated: int = 0
    lost: int = 0
    runs_per_device: str = "-"
    effects_per_key: str = "-"
    heal_seconds: float | None = None
    seconds: float = 0.0
    passed: bool = False
    #: Not run on this machine (a part it needs is missing): counts as passed, says why.
    skipped: bool = False
    problems: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> Row:
        self.skipped = True
        self.passed = True
        self.observed = f"skipped: {reason}"
        return self

    def fill(self, snap: Snapshot, expect: Expect, sent: int, heal: float | None) -> Row:
        self.sent = sent
        self.stored = snap.stored_total
        self.duplicated = snap.stored_twice
        self.lost = len(snap.lost(expect))
        self.runs_per_device = snap.runs_per_device(expect)
        self.effects_per_key = snap.effects_per_key()
        self.heal_seconds = heal
        self.problems = snap.problems(expect)
        self.passed = not self.problems
        if self.passed:
            self.observed = "as expected"
        else:
            shown = "; ".join(self.problems[:2])
            more = f" (+{len(self.problems) - 2} more)" if len(self.problems) > 2 else ""
            self.observed = f"runs: {snap.run_states()}; {shown}{more}"
        return self


COLUMNS = [
    ("drill", 14),
    ("result", 6),
    ("sent", 5),
    ("stored", 6),
    ("dup", 4),
    ("lost", 4),
    ("runs/dev", 9),
    ("fx/key", 9),
    ("heal s", 7),
    ("time s", 7),
]


def render_table(rows: list[Row]) -> str:
    """One line of figures per drill, then injected / expected / observed under it."""
    header = " ".join(f"{name:<{width}}" for name, width in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        heal = f"{row.heal_seconds:.1f}" if row.heal_seconds is not None else "never"
        cells = [
            row.name,
            "SKIP" if row.skipped else "PASS" if row.passed else "FAIL",
            str(row.sent),
            str(row.stored),
            str(row.duplicated),
            str(row.lost),
            row.runs_per_device,
            row.effects_per_key,
            heal,
            f"{row.seconds:.0f}",
        ]
        lines.append(" ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True)))
        lines.append(f"    injected: {row.injected}")
        lines.append(f"    expected: {row.expected}")
        lines.append(f"    observed: {row.observed}")
    passed = sum(row.passed for row in rows)
    lines.append(f"{passed}/{len(rows)} drills passed")
    return "\n".join(lines)


def render_json(rows: list[Row]) -> str:
    return json.dumps(
        {"drills": [asdict(row) for row in rows], "passed": all(r.passed for r in rows)},
        indent=2,
    )
