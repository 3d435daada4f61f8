"""Checks on what parallel and map branches may hold.

A run suspends at one wait at a time (one Prefect pause key). Two branches that can wait at once
would deadlock: the run pauses at one, and the other's timer, timeout or event cannot reach it.
So at most one branch of a parallel may contain a wait, and a map whose branch waits must run its
items one at a time (``maxConcurrency: 1``). Compensations declared inside a branch undo work only
within that branch: a warning says so.
"""

from __future__ import annotations

from collections.abc import Iterator

from interpreter.checks import Report
from interpreter.models import Branch, MapState, ParallelState, TaskState, WaitState
from interpreter.problems import pointer

__all__ = ["check_branches", "waits_in"]


def waits_in(branch: Branch) -> list[str]:
    """Names of the wait states anywhere inside ``branch``."""
    return [
        name
        for current in _all_branches(branch)
        for name, state in current.states.items()
        if isinstance(state, WaitState)
    ]


def _all_branches(branch: Branch) -> Iterator[Branch]:
    pending = [branch]
    while pending:
        current = pending.pop()
        yield current
        for state in current.states.values():
            if isinstance(state, ParallelState):
                pending.extend(state.branches)
            elif isinstance(state, MapState):
                pending.append(state.branch)


def check_branches(report: Report, name: str, state: ParallelState | MapState, at: str) -> None:
    if isinstance(state, ParallelState):
        waiting = [(i, waits_in(b)) for i, b in enumerate(state.branches)]
        waiting = [(i, names) for i, names in waiting if names]
        if len(waiting) > 1:
            listed = "; ".join(f"branch {i}: {', '.join(sorted(n))}" for i, n in waiting)
            report.add(
                "concurrent-waits",
                at + pointer("branches"),
                f"parallel {name!r} has waits in {len(waiting)} branches ({listed}); a run "
                "suspends at one wait at a time, so at most one branch may wait",
                hint="move the waits before or after the parallel state, or into one branch",
            )
        branches = list(state.branches)
    else:
        names = waits_in(state.branch)
        if names and state.max_concurrency > 1:
            report.add(
                "concurrent-waits",
                at + pointer("maxConcurrency"),
                f"map {name!r} runs up to {state.max_concurrency} items at once and its branch "
                f"waits ({', '.join(sorted(names))}); a run suspends at one wait at a time",
                hint='set "maxConcurrency": 1 so the items wait one after another',
            )
        branches = [state.branch]
    compensable = sorted(
        {
            state_name
            for branch in branches
            for current in _all_branches(branch)
            for state_name, inner in current.states.items()
            if isinstance(inner, TaskState) and inner.compensate is not None
        }
    )
    if compensable:
        report.warn(
            "branch-compensation-scope",
            at,
            f"tasks inside {name!r} declare compensations ({', '.join(compensable)}); they are "
            "undone only by a compensation (or onFailure) within their own branch, never by the "
            "parent",
            hint="add a compensation state inside the branch, or move the tasks out of it",
        )
