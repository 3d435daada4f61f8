"""``python -m drills [NAME...] [--list] [--quick] [--output text|json]``: run fault drills and
print their table; exit 0 when every selected drill passed, 1 when one failed, 2 on a usage
error or when the environment could not be built."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback

# Before Prefect configures its logging (through the imports below): the drills print their own.
os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

from drills import (  # noqa: F401 - importing a drill module registers its drills
    baseline,
    database,
    duplicates,
    listener_kill,
    listener_pair,
    lock_loss,
    mixed_workers,
    pg_restart,
    prefect_down,
    versions,
    worker_kill,
)
from drills.catalog import DRILLS, Drill
from drills.env import DrillSetupError, Platform
from drills.report import Row, render_json, render_table


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="./dev drills",
        description=(
            "Fault drills on real processes: inject a fault, let the system settle, check that "
            "nothing was lost or doubled and every run finished."
        ),
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="drills to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the drills and exit")
    parser.add_argument("--quick", action="store_true", help="only the drills under 2 minutes")
    parser.add_argument("--output", "-o", choices=["text", "json"], default="text")
    return parser.parse_args(argv)


def select(args: argparse.Namespace) -> list[Drill]:
    unknown = [name for name in args.names if name not in DRILLS]
    if unknown:
        raise SystemExit(f"unknown drill(s): {', '.join(unknown)} (--list shows them)")
    chosen = [DRILLS[name] for name in args.names] if args.names else list(DRILLS.values())
    return sorted((d for d in chosen if d.quick or not args.quick), key=lambda d: d.number)


async def run_one(platform: Platform, chosen: Drill) -> Row:
    row = chosen.row()
    started = time.monotonic()
    try:
        row = await chosen.run(platform, row)
    except Exception as exc:  # a drill that breaks is a failed row, the others still run
        row.passed = False
        row.observed = f"drill broke: {type(exc).__name__}: {exc}"[:300]
        row.problems = [traceback.format_exc()]
    row.seconds = time.monotonic() - started
    return row


async def run_all(chosen: list[Drill], progress: bool) -> list[Row]:
    # The tests' launchers run their own event loops: give them a thread.
    platform = await asyncio.to_thread(Platform.start)
    rows: list[Row] = []
    try:
        for one in chosen:
            if progress:
                print(f"drill {one.name}: {one.injected}", file=sys.stderr, flush=True)
            rows.append(await run_one(platform, one))
            if progress:
                last = rows[-1]
                verdict = "SKIP" if last.skipped else "PASS" if last.passed else "FAIL"
                print(f"  {verdict} in {rows[-1].seconds:.0f}s", file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(platform.close)
    return rows


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        chosen = select(args)
    except SystemExit as exc:
        if exc.code not in (None, 0) and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
            return 2
        return 0 if exc.code in (None, 0) else 2
    if args.list:
        for one in chosen:
            ci = "ci" if one.quick else "long"
            print(f"{one.name:<18} {one.number:<2} {ci:<5} {one.injected}")
        return 0
    try:
        rows = asyncio.run(run_all(chosen, progress=args.output == "text"))
    except DrillSetupError as exc:
        print(f"drills: cannot build the environment: {exc}", file=sys.stderr)
        return 2
    print(render_json(rows) if args.output == "json" else render_table(rows))
    return 0 if rows and all(row.passed for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
