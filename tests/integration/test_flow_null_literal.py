"""A ``"value": null`` literal survives pinning: real runs, pinned by hash (as the CLI, the API
and the ingress start them) and by path (the flow journals its own copy), take the same branches
``orchestration test`` takes. Pinning once dropped the literal and every real run refused the
definition (``invalid-operand ... got neither``)."""

from __future__ import annotations

from typing import Any

import pytest

from interpreter import load_definition
from interpreter.simulate import Mocks, simulate
from tests.integration.test_flow_harness import (
    RUNTIME_DEFINITIONS,
    FlowSystem,
    flow_database_url,
    flow_system,
)

__all__ = ["flow_database_url", "flow_system"]

pytestmark = pytest.mark.integration

CASES = [
    ({"x": None}, "x is null"),
    ({"x": 1, "y": 2}, "y is set"),
    ({"x": 1, "y": None}, "other"),
]


@pytest.mark.parametrize("pinned", [True, False], ids=["pinned", "by-path"])
async def test_a_null_literal_means_the_same_in_a_real_run(
    flow_system: FlowSystem, pinned: bool
) -> None:
    definition = load_definition((RUNTIME_DEFINITIONS / "null-literal.json").read_text())
    for run_input, branch in CASES:
        dry: Any = simulate(definition, Mocks(input=run_input)).output
        assert dry["branch"] == branch
        run_id = await flow_system.start("null-literal.json", run_input, pin=pinned)
        output = await flow_system.result(run_id)
        assert output == dry, run_input
