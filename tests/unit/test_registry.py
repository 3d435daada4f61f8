"""The activity registry's bookkeeping: names, duplicates, suggestions, descriptions, lightness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

import tasks
from interpreter.errors import ActivityError
from tasks.context import ActivityContext
from tasks.registry import (
    Activity,
    ActivityInput,
    ActivityOutput,
    ActivityRegistry,
    DuplicateActivityError,
    RegistryFrozenError,
    UnknownActivityError,
    default_registry,
)
from tasks.settings import DefinitionSettings, HttpSettings, NotifySettings

REPO_ROOT = Path(__file__).resolve().parents[2]

BUILTIN_NAMES = [
    "definitions.load",
    "definitions.validate",
    "events.clear",
    "events.get",
    "http.request",
    "notify.send",
    "records.create",
    "records.get",
    "records.rollbackCreate",
    "records.update",
]


class PingInput(ActivityInput):
    target_host: str


class PingOutput(ActivityOutput):
    round_trip_ms: float


async def ping(ctx: ActivityContext, request: PingInput) -> PingOutput:
    return PingOutput(round_trip_ms=1.0)


def make_activity(name: str) -> Activity:
    return Activity(
        name=name,
        description="test",
        input_model=PingInput,
        output_model=PingOutput,
        retry_safe=True,
        changes_state=False,
        fn=ping,
    )


def test_public_surface_is_pinned() -> None:
    assert tasks.__all__ == sorted(tasks.__all__)
    assert tasks.__all__ == [
        "Activity",
        "ActivityContext",
        "ActivityInput",
        "ActivityOutput",
        "ActivityRegistry",
        "DefinitionSettings",
        "DuplicateActivityError",
        "HttpSettings",
        "NotifySettings",
        "UnknownActivityError",
        "default_registry",
    ]


def test_default_registry_holds_exactly_the_contract_builtins() -> None:
    assert default_registry().names() == BUILTIN_NAMES


def test_changes_state_flags_match_the_contract_table() -> None:
    registry = default_registry()
    changing = {name for name in BUILTIN_NAMES if registry.require(name).changes_state}

    assert changing == {
        "records.create",
        "records.update",
        "records.rollbackCreate",
        "events.clear",
        "http.request",
        "notify.send",
    }


def test_registering_a_name_twice_fails_naming_both() -> None:
    registry = ActivityRegistry()
    registry.register(make_activity("net.ping"))

    with pytest.raises(DuplicateActivityError) as caught:
        registry.register(make_activity("net.ping"))

    assert "net.ping" in str(caught.value)
    assert "test_registry.ping" in str(caught.value)


def test_unknown_name_lists_close_matches_and_every_name() -> None:
    registry = ActivityRegistry()
    for name in ("net.ping", "net.trace", "records.create"):
        registry.register(make_activity(name))

    with pytest.raises(UnknownActivityError) as caught:
        registry.require("net.pnig")

    assert caught.value.close_matches == ["net.ping"]
    assert "Did you mean one of: net.ping?" in str(caught.value)
    assert "net.trace" in str(caught.value)
    assert "records.create" in str(caught.value)


def test_get_returns_none_and_require_raises_for_an_unknown_name() -> None:
    registry = ActivityRegistry()

    assert registry.get("nope") is None
    with pytest.raises(UnknownActivityError):
        registry.require("nope")


def test_decorator_takes_the_models_from_the_annotations() -> None:
    registry = ActivityRegistry()

    decorated = registry.activity(
        name="net.ping", description="Ping a host.", retry_safe=True, changes_state=False
    )(ping)

    activity = registry.require("net.ping")
    assert decorated is ping
    assert activity.input_model is PingInput
    assert activity.output_model is PingOutput
    assert activity.fn is ping


def test_decorator_refuses_a_function_without_model_annotations() -> None:
    registry = ActivityRegistry()

    async def untyped(ctx: ActivityContext, request: dict[str, str]) -> BaseModel:
        return PingOutput(round_trip_ms=0)

    with pytest.raises(TypeError) as caught:
        registry.activity(name="x", description="", retry_safe=True, changes_state=False)(untyped)

    assert "input_model=" in str(caught.value)
    assert registry.names() == []


def test_describe_gives_camel_case_json_schemas() -> None:
    registry = ActivityRegistry()
    registry.register(make_activity("net.ping"))

    (described,) = registry.describe()

    assert described["name"] == "net.ping"
    assert described["retrySafe"] is True
    assert described["changesState"] is False
    assert described["inputSchema"]["required"] == ["targetHost"]
    assert described["inputSchema"]["additionalProperties"] is False
    assert "roundTripMs" in described["outputSchema"]["properties"]


def test_every_builtin_describes_itself_with_schemas() -> None:
    for described in default_registry().describe():
        assert described["description"]
        assert described["inputSchema"]["type"] == "object"
        assert described["outputSchema"]["type"] == "object"


def test_the_shared_default_registry_is_frozen() -> None:
    with pytest.raises(RegistryFrozenError):
        default_registry().register(make_activity("net.ping"))


def test_importing_the_registry_and_its_builtins_stays_light() -> None:
    code = (
        "import sys\n"
        "from tasks.registry import default_registry\n"
        "assert len(default_registry().names()) == 10\n"
        "heavy = ('prefect', 'httpx', 'sqlalchemy', 'sqlmodel', 'azure', 'prefect_azure')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(heavy)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_embedded_settings_equal_validated_defaults_and_ignore_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Session fixtures of the integration tests may have set ORCH_* for their executors.
    for name in [n for n in os.environ if n.startswith("ORCH_")]:
        monkeypatch.delenv(name)
    for settings_type in (HttpSettings, NotifySettings, DefinitionSettings):
        assert settings_type.embedded() == settings_type.model_validate({})
    monkeypatch.setenv("ORCH_HTTP_ALLOW_LOOPBACK", "true")

    assert HttpSettings.embedded().allow_loopback is False
    assert HttpSettings().allow_loopback is True


def test_context_without_a_store_fails_as_misconfigured() -> None:
    with pytest.raises(ActivityError) as caught:
        ActivityContext().require_records()

    assert caught.value.error == "States.Misconfigured"
    assert caught.value.retryable is False
