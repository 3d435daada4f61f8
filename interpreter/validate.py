"""Validate a definition: every problem at once, each with a stable code and a JSON pointer.

The definition is a set of scopes (the top level, each parallel branch, each map branch); ``next``
targets resolve within their own scope. Per scope: transitions and their targets, reachability from
``startAt``, and the shape of the graph (loops with no wait and no way out, states that can never
reach a terminal state). Across scopes: compensation references, name collisions, limits. What one
state contains (paths, conditions, waits) is checked in ``interpreter.checks``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

from interpreter.branch_checks import check_branches
from interpreter.checks import (
    Report,
    check_activity,
    check_catch,
    check_condition,
    check_path,
    check_result_path,
    check_retry,
    check_template,
    check_wait,
)
from interpreter.errors import DefinitionInvalidError
from interpreter.limits import MAX_BRANCH_NESTING, MAX_STATES
from interpreter.models import (
    Branch,
    ChoiceState,
    CompensationState,
    FailState,
    MapState,
    ParallelState,
    State,
    SucceedState,
    TaskState,
    WaitState,
    WorkflowDefinition,
)
from interpreter.problems import Problem, listed, pointer
from interpreter.run_input import check_input_schema

__all__ = ["Scope", "edges", "is_terminal", "require_valid", "scopes", "validate"]


@dataclass(frozen=True, slots=True)
class Scope:
    """One state graph: the top level or a branch; ``where`` points at the object holding it."""

    where: str
    start_at: str
    states: dict[str, State]
    nesting: int  # 0 at the top level, 1 inside a branch, ...
    label: str  # "" at the top level, else "Parallel/0", "Fanout/branch", ...
    item_name: str | None = None  # the map's item key, for a map branch


def scopes(definition: WorkflowDefinition) -> Iterator[Scope]:
    """The top-level scope, then every branch scope, outermost first."""
    pending = [Scope("", definition.start_at, definition.states, 0, "")]
    while pending:
        scope = pending.pop(0)
        yield scope
        if scope.nesting > MAX_BRANCH_NESTING:
            continue  # reported as too deeply nested; what is inside is not walked
        for name, state in scope.states.items():
            at = scope.where + pointer("states", name)
            prefix = f"{scope.label}/{name}" if scope.label else name
            if isinstance(state, ParallelState):
                pending.extend(
                    _branch_scope(branch, at + pointer("branches", i), scope, f"{prefix}/{i}")
                    for i, branch in enumerate(state.branches)
                )
            elif isinstance(state, MapState):
                pending.append(
                    _branch_scope(
                        state.branch, at + pointer("branch"), scope, prefix, state.item_name
                    )
                )


def _branch_scope(
    branch: Branch, where: str, parent: Scope, label: str, item_name: str | None = None
) -> Scope:
    return Scope(where, branch.start_at, branch.states, parent.nesting + 1, label, item_name)


def edges(state: State) -> list[tuple[str, tuple[str | int, ...]]]:
    """Every transition a state can take: (target, pointer parts below the state)."""
    found: list[tuple[str, tuple[str | int, ...]]] = []
    if isinstance(state, ChoiceState):
        found.extend((rule.next, ("choices", i, "next")) for i, rule in enumerate(state.choices))
        if state.default is not None:
            found.append((state.default, ("default",)))
        return found
    if isinstance(state, SucceedState | FailState):
        return found
    if state.next is not None:
        found.append((state.next, ("next",)))
    if isinstance(state, WaitState) and state.event and state.event.timeout_next is not None:
        found.append((state.event.timeout_next, ("event", "timeoutNext")))
    if isinstance(state, TaskState | ParallelState | MapState):
        found.extend((rule.next, ("catch", i, "next")) for i, rule in enumerate(state.catch))
    return found


def is_terminal(state: State) -> bool:
    """A state where the scope ends when it completes normally."""
    if isinstance(state, SucceedState | FailState):
        return True
    if isinstance(state, CompensationState):
        return state.next is None
    if isinstance(state, ChoiceState):
        return False
    return state.end


class _Validator:
    def __init__(self, definition: WorkflowDefinition, activities: Collection[str] | None) -> None:
        self.definition = definition
        self.activities = activities
        self.report = Report()
        self.scopes = list(scopes(definition))
        # state pointers whose own transitions are already reported (no-terminal noise suppressed)
        self.broken: set[str] = set()
        # each scope's state names as a message lists them, made once per scope, not per problem
        self.names: dict[str, str] = {}

    def run(self) -> list[Problem]:
        total = sum(len(scope.states) for scope in self.scopes)
        if total > MAX_STATES:
            self.report.add(
                "too-many-states",
                "/states",
                f"the definition has {total} states (branches included); the limit is {MAX_STATES}",
            )
        default_retry = self.definition.configuration.default_retry
        if default_retry is not None:
            check_retry(self.report, default_retry, pointer("configuration", "defaultRetry"))
        for scope in self.scopes:
            self._scope(scope)
        self._compensations()
        if self.definition.input is not None:
            self.report.problems.extend(check_input_schema(self.definition.input))
        return self.report.problems

    # --- one scope ------------------------------------------------------------------------------

    def _scope(self, scope: Scope) -> None:
        if scope.nesting > MAX_BRANCH_NESTING:
            self.report.add(
                "too-deeply-nested",
                scope.where,
                f"branches are nested {scope.nesting} levels deep; the limit is "
                f"{MAX_BRANCH_NESTING}",
            )
            return
        if not scope.states:
            self.report.add("empty-states", scope.where + pointer("states"), "no states defined")
            return
        names = list(scope.states)
        if scope.start_at not in scope.states:
            self.report.add(
                "unknown-target",
                scope.where + pointer("startAt"),
                f"startAt names {scope.start_at!r}, which is not a state here; "
                f"expected one of: {self._listed(scope)}",
                hint=self.report.hint(scope.start_at, names),
            )
        for name, state in scope.states.items():
            at = scope.where + pointer("states", name)
            self._transitions(scope, name, state, at)
            self._contents(scope, name, state, at)
        self._graph(scope)

    def _listed(self, scope: Scope) -> str:
        if scope.where not in self.names:
            self.names[scope.where] = listed(scope.states)
        return self.names[scope.where]

    def _transitions(self, scope: Scope, name: str, state: State, at: str) -> None:
        if isinstance(state, TaskState | WaitState | ParallelState | MapState):
            if state.next is not None and state.end:
                self.broken.add(at)
                self.report.add(
                    "next-and-end",
                    at + pointer("end"),
                    f"state {name!r} has both next ({state.next!r}) and end: true; "
                    "expected exactly one",
                )
            elif state.next is None and not state.end:
                self.broken.add(at)
                self.report.add(
                    "missing-next",
                    at,
                    f"state {name!r} has neither next nor end: true; expected exactly one",
                )
        for target, parts in edges(state):
            if target not in scope.states:
                self.broken.add(at)
                where = f" in {scope.label}" if scope.label else ""
                self.report.add(
                    "unknown-target",
                    at + pointer(*parts),
                    f"{'/'.join(map(str, parts))} of {name!r} names {target!r}, which is not a "
                    f"state{where}; "
                    f"expected one of: {self._listed(scope)}",
                    hint=self.report.hint(target, scope.states),
                )

    def _contents(self, scope: Scope, name: str, state: State, at: str) -> None:
        report = self.report
        if isinstance(state, TaskState):
            check_activity(report, state.activity, at + pointer("activity"), self.activities)
            check_template(report, state.input, at + pointer("input"))
            if state.result_path is not None:
                check_result_path(report, state.result_path, at + pointer("resultPath"))
            if state.idempotency_key is not None:
                check_template(report, state.idempotency_key, at + pointer("idempotencyKey"))
            if state.retry is not None:
                check_retry(report, state.retry, at + pointer("retry"))
            check_catch(report, state.catch, at)
            if state.compensate is not None:
                where = at + pointer("compensate")
                check_activity(
                    report, state.compensate.activity, where + pointer("activity"), self.activities
                )
                check_template(report, state.compensate.input, where + pointer("input"))
        elif isinstance(state, WaitState):
            check_wait(report, state, at)
        elif isinstance(state, ChoiceState):
            for i, rule in enumerate(state.choices):
                check_condition(report, rule.condition, at + pointer("choices", i, "condition"))
            if state.default is None:
                report.warn(
                    "choice-without-default",
                    at,
                    f"choice {name!r} has no default: a run fails when no rule matches",
                )
        elif isinstance(state, ParallelState | MapState):
            if state.result_path is not None:
                check_result_path(report, state.result_path, at + pointer("resultPath"))
            check_catch(report, state.catch, at)
            check_branches(report, name, state, at)
            if isinstance(state, MapState):
                check_path(report, state.items_path, at + pointer("itemsPath"))
        elif isinstance(state, SucceedState) and state.output is not None:
            check_template(report, state.output, at + pointer("output"))
        if scope.item_name is not None and name == scope.item_name and _stores_by_name(state):
            report.add(
                "state-name-collision",
                at,
                f"state {name!r} stores its result at $.state.{name}, which holds the map's "
                f"item (itemName {scope.item_name!r}); rename the state or give it a resultPath",
            )

    def _graph(self, scope: Scope) -> None:
        states = scope.states
        adjacency = {
            name: [t for t, _ in edges(state) if t in states] for name, state in states.items()
        }
        if scope.start_at in states:
            seen = {scope.start_at}
            frontier = [scope.start_at]
            while frontier:
                for target in adjacency[frontier.pop()]:
                    if target not in seen:
                        seen.add(target)
                        frontier.append(target)
            for name in states:
                if name not in seen:
                    self.report.add(
                        "unreachable-state",
                        scope.where + pointer("states", name),
                        f"state {name!r} is never reached: no transition from "
                        f"{scope.start_at!r} (startAt) leads to it",
                    )
            reachable = [name for name in states if name in seen]
        else:
            reachable = list(states)
        order = {name: i for i, name in enumerate(states)}
        for component in _components(reachable, adjacency):
            members = set(component)
            if any(is_terminal(states[n]) for n in component):
                continue
            if any(t not in members for n in component for t in adjacency[n]):
                continue  # not a dead end: some transition leaves it
            first = min(component, key=order.__getitem__)
            at = scope.where + pointer("states", first)
            listed = ", ".join(repr(n) for n in sorted(component, key=order.__getitem__))
            cyclic = len(component) > 1 or first in adjacency[first]
            if cyclic and not any(isinstance(states[n], WaitState) for n in component):
                self.report.add(
                    "infinite-loop",
                    at,
                    f"states {listed} loop forever: no wait state inside the loop and no "
                    "transition out of it",
                    hint="add a choice that leaves the loop, or end: true somewhere",
                )
            elif cyclic:
                self.report.add(
                    "no-terminal-path",
                    at,
                    f"states {listed} form a loop with no transition out of it: the run can never "
                    "reach a terminal state",
                )
            elif at not in self.broken:
                self.report.add(
                    "no-terminal-path",
                    at,
                    f"state {first!r} leads nowhere and is not terminal",
                )

    # --- across scopes --------------------------------------------------------------------------

    def _compensations(self) -> None:
        tasks: dict[str, list[tuple[Scope, TaskState]]] = {}
        names: set[str] = set()
        compensation_states: list[tuple[str, CompensationState]] = []
        for scope in self.scopes:
            for name, state in scope.states.items():
                names.add(name)
                if isinstance(state, TaskState):
                    tasks.setdefault(name, []).append((scope, state))
                elif isinstance(state, CompensationState):
                    compensation_states.append((scope.where + pointer("states", name), state))
        for at, comp in compensation_states:
            for i, target in enumerate(comp.states or []):
                where = at + pointer("states", i)
                found = tasks.get(target, [])
                if not found:
                    kind = "a state that is not a task" if target in names else "no state"
                    self.report.add(
                        "unknown-compensation-state",
                        where,
                        f"the compensation names {target!r}: {kind}; expected a task with "
                        "compensate",
                        hint=self.report.hint(target, tasks),
                    )
                elif len(found) > 1:
                    places = ", ".join(repr(s.label or "top level") for s, _ in found)
                    self.report.add(
                        "state-name-collision",
                        where,
                        f"the compensation names {target!r}, a task defined in several places "
                        f"({places}); the name alone must identify one task",
                    )
                elif found[0][1].compensate is None:
                    self.report.warn(
                        "nothing-to-compensate",
                        where,
                        f"task {target!r} has no compensate, so naming it here does nothing",
                    )
        if compensation_states or self.definition.configuration.on_failure == "compensate":
            return
        for found in tasks.values():
            for scope, task in found:
                if task.compensate is not None:
                    name = next(n for n, s in scope.states.items() if s is task)
                    self.report.warn(
                        "unused-compensation",
                        scope.where + pointer("states", name, "compensate"),
                        "nothing runs this compensate: configuration.onFailure is 'fail' and no "
                        "compensation state exists",
                    )


def _stores_by_name(state: State) -> bool:
    return isinstance(state, TaskState | ParallelState | MapState) and state.result_path is None


def _components(nodes: list[str], adjacency: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components among ``nodes`` (Tarjan's algorithm, without recursion)."""
    allowed = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        work = [(root, iter(adjacency[root]))]
        while work:
            node, targets = work[-1]
            descended = False
            for target in targets:
                if target not in allowed:
                    continue
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(adjacency[target])))
                    descended = True
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                result.append(component)
    return result


def validate(
    definition: WorkflowDefinition, *, activities: Collection[str] | None = None
) -> list[Problem]:
    """Every problem in ``definition``, errors and warnings, in document order per check.

    ``activities``: the registered activity names; ``None`` skips the unknown-activity check.
    """
    return _Validator(definition, activities).run()


def require_valid(
    definition: WorkflowDefinition, *, activities: Collection[str] | None = None
) -> list[Problem]:
    """The warnings when there is no error; else raises ``DefinitionInvalidError`` (the errors)."""
    problems = validate(definition, activities=activities)
    errors = [p for p in problems if p.is_error]
    if errors:
        raise DefinitionInvalidError(errors)
    return problems
