"""Draw a definition: Mermaid flowchart (``to_mermaid``) or Graphviz DOT (``to_dot``).

Both renderers share one neutral picture (``layout``): nodes for states, edges for transitions
(choice labels, dashed catch and timeout edges) and a cluster per parallel/map branch. Transitions
to names that are not states are left out; ``orchestration validate`` reports those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from interpreter.limits import MAX_BRANCH_NESTING
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

__all__ = [
    "Cluster",
    "Edge",
    "Node",
    "Picture",
    "describe_state",
    "layout",
    "to_dot",
    "to_mermaid",
]

EdgeStyle = Literal["solid", "dashed"]


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    name: str
    kind: str  # a state type, or "start" / "end"
    detail: str  # e.g. the activity, the event waited for


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    label: str = ""
    style: EdgeStyle = "solid"


@dataclass(slots=True)
class Cluster:
    id: str
    label: str
    nodes: list[str] = field(default_factory=list)
    clusters: list[Cluster] = field(default_factory=list)


@dataclass(slots=True)
class Picture:
    title: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    root: Cluster = field(default_factory=lambda: Cluster("root", ""))


def describe_state(state: State) -> str:
    """A few words on what a state does: its activity, what it waits for, its error."""
    if isinstance(state, TaskState):
        return state.activity
    if isinstance(state, WaitState):
        if state.event is not None:
            timeout = state.event.timeout_seconds
            return f"event {state.event.name}" + (f", {timeout:g}s timeout" if timeout else "")
        if state.seconds is not None:
            return f"{state.seconds:g}s"
        return state.duration or f"until {state.timestamp}"
    if isinstance(state, MapState):
        return f"each of {state.items_path}"
    if isinstance(state, FailState):
        return state.error
    if isinstance(state, CompensationState):
        return ", ".join(state.states) if state.states else "all completed tasks"
    return ""


class _Builder:
    def __init__(self, definition: WorkflowDefinition) -> None:
        self.picture = Picture(definition.name)
        self.count = 0

    def node(self, name: str, kind: str, detail: str, cluster: Cluster) -> str:
        node_id = f"s{self.count}"
        self.count += 1
        self.picture.nodes[node_id] = Node(node_id, name, kind, detail)
        cluster.nodes.append(node_id)
        return node_id

    def scope(self, start_at: str, states: dict[str, State], cluster: Cluster, depth: int) -> str:
        """Add a scope's states; return the id of its start state ('' when startAt is unknown)."""
        ids = {
            name: self.node(name, s.type, describe_state(s), cluster) for name, s in states.items()
        }
        for name, state in states.items():
            self.state_edges(ids, name, state, cluster, depth)
        return ids.get(start_at, "")

    def state_edges(
        self, ids: dict[str, str], name: str, state: State, cluster: Cluster, depth: int
    ) -> None:
        source = ids[name]

        def to(target: str | None, label: str = "", style: EdgeStyle = "solid") -> None:
            if target is not None and target in ids:
                self.picture.edges.append(Edge(source, ids[target], label, style))

        if isinstance(state, ChoiceState):
            for i, rule in enumerate(state.choices):
                to(rule.next, rule.label or f"rule {i + 1}")
            to(state.default, "default")
            return
        if isinstance(state, SucceedState | FailState):
            return
        to(state.next)
        if isinstance(state, WaitState) and state.event is not None:
            to(state.event.timeout_next, "timeout", "dashed")
        if isinstance(state, TaskState | ParallelState | MapState):
            for catch in state.catch:
                to(catch.next, "catch " + ", ".join(catch.errors), "dashed")
        if isinstance(state, ParallelState | MapState) and depth < MAX_BRANCH_NESTING:
            branches = state.branches if isinstance(state, ParallelState) else [state.branch]
            self.branches(name, source, branches, cluster, depth, isinstance(state, MapState))

    def branches(
        self,
        name: str,
        source: str,
        branches: list[Branch],
        cluster: Cluster,
        depth: int,
        is_map: bool,
    ) -> None:
        for i, branch in enumerate(branches):
            label = f"{name}: each item" if is_map else f"{name}: branch {i + 1}"
            inner = Cluster(f"{source}_b{i}", label)
            cluster.clusters.append(inner)
            start = self.scope(branch.start_at, branch.states, inner, depth + 1)
            if start:
                self.picture.edges.append(Edge(source, start, "", "dashed"))


def layout(definition: WorkflowDefinition) -> Picture:
    """The neutral picture both renderers draw."""
    builder = _Builder(definition)
    root = builder.picture.root
    start = builder.node("start", "start", "", root)
    first = builder.scope(definition.start_at, definition.states, root, 0)
    if first:
        builder.picture.edges.append(Edge(start, first))
    ends = [
        node_id
        for node_id in root.nodes
        if (state := definition.states.get(builder.picture.nodes[node_id].name)) is not None
        and builder.picture.nodes[node_id].kind != "start"
        and _ends(state)
    ]
    if ends:
        end = builder.node("end", "end", "", root)
        builder.picture.edges.extend(Edge(node_id, end) for node_id in ends)
    return builder.picture


def _ends(state: State) -> bool:
    if isinstance(state, SucceedState | FailState | ChoiceState):
        return False
    if isinstance(state, CompensationState):
        return False
    return state.end


# --- Mermaid ----------------------------------------------------------------------------------

_MERMAID_SHAPES = {
    "start": ("((", "))"),
    "end": ("((", "))"),
    "task": ("[", "]"),
    "wait": ("[/", "/]"),
    "choice": ("{", "}"),
    "parallel": ("[[", "]]"),
    "map": ("[[", "]]"),
    "compensation": ("[\\", "\\]"),
    "succeed": ("([", "])"),
    "fail": ("([", "])"),
}


def _mermaid_text(text: str) -> str:
    return (
        text.replace("&", "#amp;")
        .replace('"', "#quot;")
        .replace("<", "#lt;")
        .replace(">", "#gt;")
        .replace("\n", " ")
    )


def _mermaid_label(node: Node) -> str:
    if node.kind in ("start", "end"):
        return node.name
    kind = node.kind + (f": {node.detail}" if node.detail else "")
    return f"{_mermaid_text(node.name)}<br/><small>{_mermaid_text(kind)}</small>"


def to_mermaid(definition: WorkflowDefinition) -> str:
    """A Mermaid ``flowchart``: states, transitions, choice labels, catch/timeout, branches."""
    picture = layout(definition)
    lines = ["flowchart TD", f"  %% {_mermaid_text(picture.title)}"]

    def cluster(c: Cluster, indent: str) -> None:
        for node_id in c.nodes:
            node = picture.nodes[node_id]
            left, right = _MERMAID_SHAPES.get(node.kind, ("[", "]"))
            lines.append(f'{indent}{node_id}{left}"{_mermaid_label(node)}"{right}')
        for inner in c.clusters:
            lines.append(f'{indent}subgraph {inner.id}["{_mermaid_text(inner.label)}"]')
            cluster(inner, indent + "  ")
            lines.append(f"{indent}end")

    cluster(picture.root, "  ")
    for edge in picture.edges:
        label = _mermaid_text(edge.label)
        if edge.style == "dashed":
            arrow = f' -. "{label}" .-> ' if label else " -.-> "
        else:
            arrow = f' -- "{label}" --> ' if label else " --> "
        lines.append(f"  {edge.source}{arrow}{edge.target}")
    return "\n".join(lines) + "\n"


# --- DOT --------------------------------------------------------------------------------------

_DOT_SHAPES = {
    "start": "circle",
    "end": "doublecircle",
    "task": "box",
    "wait": "parallelogram",
    "choice": "diamond",
    "parallel": "box3d",
    "map": "box3d",
    "compensation": "invtrapezium",
    "succeed": "oval",
    "fail": "octagon",
}


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(definition: WorkflowDefinition) -> str:
    """A Graphviz ``digraph`` of the same picture, branches as ``cluster_`` subgraphs."""
    picture = layout(definition)
    lines = [
        f"digraph {_dot_quote(picture.title)} {{",
        "  rankdir=TB;",
        '  node [fontname="Helvetica"];',
    ]

    def cluster(c: Cluster, indent: str) -> None:
        for node_id in c.nodes:
            node = picture.nodes[node_id]
            label = node.name
            if node.kind not in ("start", "end"):
                label += f"\n{node.kind}" + (f": {node.detail}" if node.detail else "")
            shape = _DOT_SHAPES.get(node.kind, "box")
            lines.append(f"{indent}{node_id} [shape={shape}, label={_dot_quote(label)}];")
        for inner in c.clusters:
            lines.append(f"{indent}subgraph cluster_{inner.id} {{")
            lines.append(f"{indent}  label={_dot_quote(inner.label)};")
            cluster(inner, indent + "  ")
            lines.append(f"{indent}}}")

    cluster(picture.root, "  ")
    for edge in picture.edges:
        attributes = []
        if edge.label:
            attributes.append(f"label={_dot_quote(edge.label)}")
        if edge.style == "dashed":
            attributes.append("style=dashed")
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"  {edge.source} -> {edge.target}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"
