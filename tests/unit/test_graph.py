"""Mermaid and DOT drawings of definitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from interpreter import load_definition
from interpreter.graph import layout, to_dot, to_mermaid
from tests.unit.definition_cases import REPO, SAMPLES, doc

ONBOARDING = load_definition((REPO / "definitions" / "device-onboarding.json").read_text())


def test_mermaid_shows_states_transitions_labels_catch_timeout_and_branches() -> None:
    text = to_mermaid(ONBOARDING)
    assert text.startswith("flowchart TD\n")
    ids = {node.name: node.id for node in layout(ONBOARDING).nodes.values()}
    create, wait, rollback = (
        ids["CreateOnboardingRecord"],
        ids["WaitForDeviceReady"],
        ids["RollBack"],
    )
    assert f"  {create} --> {wait}\n" in text
    assert f'  {create} -. "catch *" .-> {rollback}\n' in text
    assert f'  {wait} -. "timeout" .-> {ids["OnboardingTimedOut"]}\n' in text
    assert f'  {ids["CheckResult"]} -- "device reported an error" --> {rollback}\n' in text
    assert f'  {ids["CheckResult"]} -- "default" --> {ids["UpdateAndNotify"]}\n' in text
    assert 'subgraph s6_b0["UpdateAndNotify: branch 1"]' in text
    assert 'subgraph s6_b1["UpdateAndNotify: branch 2"]' in text
    assert f"  {ids['UpdateAndNotify']} -.-> {ids['NotifyOperators']}\n" in text


def test_dot_has_the_same_picture_with_clusters() -> None:
    text = to_dot(ONBOARDING)
    assert text.startswith('digraph "device-onboarding" {\n') and text.endswith("}\n")
    assert "subgraph cluster_s6_b0 {" in text
    assert 'label="catch *", style=dashed' in text
    assert 'label="timeout", style=dashed' in text
    assert text.count("{") == text.count("}")


def test_names_that_need_escaping_are_escaped() -> None:
    definition = load_definition(doc({'Say "hi" <now>': {"type": "succeed"}}, 'Say "hi" <now>'))
    assert "Say #quot;hi#quot; #lt;now#gt;" in to_mermaid(definition)
    assert 'label="Say \\"hi\\" <now>\\nsucceed"' in to_dot(definition)


def test_unknown_targets_are_left_out_not_drawn() -> None:
    definition = load_definition(doc({"A": {"type": "task", "activity": "x", "next": "Gone"}}))
    picture = layout(definition)
    assert [(e.source, e.target) for e in picture.edges] == [("s0", "s1")]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_state_of_every_sample_is_drawn(path: Path) -> None:
    from interpreter.validate import scopes

    definition = load_definition(path.read_text())
    names = [n for scope in scopes(definition) for n in scope.states]
    drawn = [n.name for n in layout(definition).nodes.values() if n.kind not in ("start", "end")]
    assert sorted(drawn) == sorted(names)
    assert to_mermaid(definition).count("subgraph") == to_mermaid(definition).count("\n  end")
