"""infra/main.bicep against the settings the code reads: they cannot drift apart.

The names come from the code: each pydantic-settings model's env prefix and fields (introspected),
the ``ORCH_*`` names read straight from the environment (found in the package sources), Prefect's
own setting names, and the CLI's options. The Bicep side is read as text (tests/support/infra.py):
every Container App and Job, its command, its env entries and the Key Vault secrets it may read.
What a process reads is declared once here, by its command (PROCESS_SETTINGS), the one
hand-written link, and tests/integration/test_process_settings.py checks it against the running
processes (the models each one really builds); everything on either side of it is derived.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings
from pydantic_settings.exceptions import SettingsError

from api.settings import ApiSettings
from cli.main import app as cli_app
from flows.leases import LeaseSettings
from flows.runtime import FlowSettings
from listeners.settings import IngressSettings, ServiceBusSettings
from operations.automations import AlertSettings
from operations.observability import AZURE_CONNECTION_ENV
from store.settings import DatabaseSettings
from tasks.settings import DefinitionSettings, HttpSettings, NotifySettings
from tests.support.infra import (
    INFRA,
    REPO_ROOT,
    Bicep,
    EnvEntry,
    Module,
    env_pairs,
    parse_bicep,
    parse_bicepparam,
    parse_dockerfile,
)

#: What each process reads from the environment, by the command it is started with.
PROCESS_SETTINGS: dict[tuple[str, ...], tuple[type[BaseSettings], ...]] = {
    # The executor also runs the outbox reconciler, which starts runs (cli/running.py).
    ("orchestration", "worker"): (
        DatabaseSettings,
        FlowSettings,
        HttpSettings,
        NotifySettings,
        DefinitionSettings,
        IngressSettings,
        LeaseSettings,
    ),
    ("orchestration", "listen"): (
        ServiceBusSettings,
        IngressSettings,
        DatabaseSettings,
        FlowSettings,
        DefinitionSettings,
    ),
    ("orchestration", "serve-api"): (
        ApiSettings,
        IngressSettings,
        DatabaseSettings,
        FlowSettings,
        DefinitionSettings,
    ),
    ("orchestration", "deadletters", "process"): (ServiceBusSettings,),
    ("orchestration", "db", "migrate"): (DatabaseSettings,),
    ("prefect", "server", "start"): (),
    ("prefect", "worker", "start"): (),
}

#: The processes that talk to the Prefect API (PREFECT_API_URL and its auth string).
PREFECT_CLIENTS = {
    ("orchestration", "worker"),
    ("orchestration", "listen"),
    ("orchestration", "serve-api"),
    ("prefect", "worker", "start"),
}

#: Every settings model of the code base: a model missing here is a setting nobody checks.
ALL_MODELS = {model for models in PROCESS_SETTINGS.values() for model in models} | {AlertSettings}

#: Names that are neither ours nor Prefect's: the Azure SDK's identity selector and the
#: Application Insights connection string the exporter reads.
PLATFORM_NAMES = {"AZURE_CLIENT_ID", AZURE_CONNECTION_ENV}

PACKAGES = ("interpreter", "flows", "tasks", "listeners", "store", "api", "cli", "operations")


def env_names(model: type[BaseSettings]) -> dict[str, Any]:
    """``ORCH_X_FIELD`` -> the field, for one settings model."""
    prefix = model.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper(): field for name, field in model.model_fields.items()}


def direct_reads() -> set[str]:
    """``ORCH_*`` names the package sources spell out in full (read without a settings model)."""
    names: set[str] = set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            names |= set(re.findall(r"[\"'](ORCH_[A-Z0-9_]*[A-Z0-9])[\"']", path.read_text()))
    return names


def prefect_names() -> set[str]:
    from prefect.settings import Settings
    from prefect.settings.legacy import _get_valid_setting_names

    return set(_get_valid_setting_names(Settings))


def models_of(command: list[str]) -> tuple[type[BaseSettings], ...]:
    for key, models in PROCESS_SETTINGS.items():
        if tuple(command[: len(key)]) == key:
            return models
    raise AssertionError(f"no PROCESS_SETTINGS entry for the command {command}: add what it reads")


@pytest.fixture(scope="module")
def bicep() -> Bicep:
    return parse_bicep()


def processes(bicep: Bicep) -> list[tuple[str, Module, list[str], list[EnvEntry]]]:
    found = []
    for symbol, module in bicep.processes().items():
        command = [bicep.resolve(word) or word for word in module.array("command")]
        found.append((symbol, module, command, bicep.env_of(module)))
    assert len(found) >= 7, f"expected every process of the system, found {[f[0] for f in found]}"
    return found


def test_every_settings_model_of_the_code_is_known_here() -> None:
    """A new settings model must be given to the processes that read it (PROCESS_SETTINGS)."""
    found: set[str] = set()
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            found |= set(re.findall(r"env_prefix=\"([A-Z_]+)\"", path.read_text()))
    known = {model.model_config.get("env_prefix") for model in ALL_MODELS}
    assert found <= known, f"settings prefixes no process is mapped to: {sorted(found - known)}"


def test_every_variable_a_process_gets_is_one_it_reads(bicep: Bicep) -> None:
    direct = direct_reads()
    prefect = prefect_names()
    problems = []
    for symbol, _module, command, env in processes(bicep):
        readable = set().union(*(env_names(model) for model in models_of(command)))
        for entry in env:
            name = entry.name
            if name.startswith("ORCH_"):
                ok = name in readable or name in direct
            elif name.startswith("PREFECT_"):
                ok = name in prefect
            else:
                ok = name in PLATFORM_NAMES
            if not ok:
                problems.append(f"{symbol} ({' '.join(command)}): {name} is read by nothing")
        names = [entry.name for entry in env]
        duplicates = {name for name in names if names.count(name) > 1}
        if duplicates:
            problems.append(f"{symbol}: set twice: {sorted(duplicates)}")
    assert not problems, "\n".join(problems)


def test_required_settings_are_set_for_every_process_that_reads_them(bicep: Bicep) -> None:
    cli = typer.main.get_command(cli_app)
    problems = []
    for symbol, _module, command, env in processes(bicep):
        names = {entry.name for entry in env}
        required: set[str] = set()
        for model in models_of(command):
            required |= {name for name, f in env_names(model).items() if f.is_required()}
        # Beyond the models' own required fields, what Azure needs where a default is local-only.
        if DatabaseSettings in models_of(command):
            # In a container the embedded SQLite default is a file lost with the replica.
            required.add("ORCH_DB_URL")
        if command[0] == "orchestration":
            # A command with --embedded refuses to start without ORCH_DB_URL (cli/embedded.py).
            sub: Any = cli
            for word in command[1:]:
                if word.startswith("-"):
                    break
                sub = sub.commands[word]
            if any(getattr(p, "envvar", None) == "ORCH_EMBEDDED" for p in sub.params):
                required.add("ORCH_DB_URL")
            if "ORCH_EMBEDDED" in names:
                problems.append(f"{symbol}: ORCH_EMBEDDED must not be set on Azure")
        if any(tuple(command[: len(key)]) == key for key in PREFECT_CLIENTS):
            required |= {"PREFECT_API_URL", "PREFECT_API_AUTH_STRING"}
        if command[:3] == ["prefect", "server", "start"]:
            required |= {"PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_SERVER_API_AUTH_STRING"}
        if ServiceBusSettings in models_of(command):
            required.add("ORCH_SB_FULLY_QUALIFIED_NAMESPACE")
        if DefinitionSettings in models_of(command):
            required |= {"ORCH_DEFINITIONS_AZURE_CONTAINER", "ORCH_DEFINITIONS_AZURE_ACCOUNT_URL"}
        if IngressSettings in models_of(command):
            # Its default names the local deployment, which does not exist on Azure.
            required.add("ORCH_INGRESS_DEPLOYMENT")
        if ApiSettings in models_of(command):
            required |= {"ORCH_API_API_KEYS", "ORCH_API_HOST"}
        missing = required - names
        if missing:
            problems.append(f"{symbol} ({' '.join(command)}): missing {sorted(missing)}")
    assert not problems, "\n".join(problems)


def test_values_written_in_the_bicep_parse_as_the_settings_types(
    bicep: Bicep, monkeypatch: pytest.MonkeyPatch
) -> None:
    for symbol, _module, command, env in processes(bicep):
        for model in models_of(command):
            names = env_names(model)
            with monkeypatch.context() as patch:
                for name in [n for n in os.environ if n.startswith("ORCH_")]:
                    patch.delenv(name)
                for entry in env:
                    if entry.name not in names or entry.value is None:
                        continue
                    # Values known only at deployment (outputs) stand in as a plausible string.
                    value = bicep.resolve(entry.value)
                    patch.setenv(
                        entry.name, "https://resolved.at.deployment" if value is None else value
                    )
                try:
                    model()
                except (ValidationError, SettingsError) as exc:
                    raise AssertionError(f"{symbol}: {model.__name__}: {exc}") from None


def test_secrets_are_referenced_granted_and_stored(bicep: Bicep) -> None:
    vault = (INFRA / "modules" / "keyvault.bicep").read_text()
    start = vault.index("var secrets = {")
    block = vault[start : vault.index("\n}\n", start)]
    stored = set(re.findall(r"^  '([a-z0-9-]+)': ", block, re.MULTILINE))
    assert stored, "no secrets found in keyvault.bicep"
    problems = []
    used_by_identity: dict[str, set[str]] = {}
    for symbol, module, _command, env in processes(bicep):
        declared = set(bicep.secret_names(module))
        identity = bicep.identity_of(module)
        granted = set(bicep.granted_to(identity))
        referenced = {entry.secret_ref for entry in env if entry.secret_ref}
        used_by_identity.setdefault(identity, set()).update(referenced)
        if referenced - declared:
            problems.append(
                f"{symbol}: secretRef without a secret: {sorted(referenced - declared)}"
            )
        if declared - referenced:
            problems.append(
                f"{symbol}: secrets it never references: {sorted(declared - referenced)}"
            )
        if declared - granted:
            problems.append(f"{symbol}: {identity} may not read {sorted(declared - granted)}")
        if declared - stored:
            problems.append(f"{symbol}: not in Key Vault: {sorted(declared - stored)}")
        plain = [e.name for e in env if e.value and re.search(r"(?i)password|key|auth", e.name)]
        if plain:
            problems.append(f"{symbol}: secrets as plain values: {plain}")
    for identity, used in used_by_identity.items():
        unused = set(bicep.granted_to(identity)) - used
        if unused:
            problems.append(
                f"{identity} is granted secrets no process of it uses: {sorted(unused)}"
            )
    assert not problems, "\n".join(problems)


def test_each_process_signs_in_to_azure_as_its_own_identity(bicep: Bicep) -> None:
    problems = []
    for symbol, module, command, env in processes(bicep):
        identity = bicep.identity_of(module)
        client_ids = [entry.value for entry in env if entry.name == "AZURE_CLIENT_ID"]
        uses_azure = bool(
            {ServiceBusSettings, DefinitionSettings} & set(models_of(command))
        ) or command[:2] == ["prefect", "worker"]
        if uses_azure and client_ids != [f"{identity}.properties.clientId"]:
            problems.append(f"{symbol}: AZURE_CLIENT_ID should be {identity}'s, is {client_ids}")
        if not uses_azure and client_ids:
            problems.append(f"{symbol}: AZURE_CLIENT_ID set but no Azure SDK is used")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", sorted((INFRA / "env").glob("*.bicepparam")), ids=lambda p: p.stem)
def test_each_environment_sets_every_required_parameter_and_no_unknown_one(
    bicep: Bicep, path: Path
) -> None:
    values = parse_bicepparam(path)
    assert values.pop("__using__", None) == "../main.bicep", f"{path.name}: using '../main.bicep'"
    unknown = set(values) - set(bicep.params)
    assert not unknown, f"{path.name}: parameters main.bicep does not declare: {sorted(unknown)}"
    required = {name for name, param in bicep.params.items() if param.default is None}
    assert required <= set(values), f"{path.name}: missing {sorted(required - set(values))}"
    for name, param in bicep.params.items():
        if param.secure and name in values:
            assert values[name].startswith("readEnvironmentVariable("), (
                f"{path.name}: secure parameter {name} must come from the environment, not the file"
            )


def test_every_parameter_of_main_bicep_is_used(bicep: Bicep) -> None:
    unused = [
        name
        for name in bicep.params
        if len(re.findall(rf"\b{name}\b", bicep.text)) < 2  # the declaration and one use
    ]
    assert not unused, f"declared but never used: {unused}"


def test_names_shared_with_prefect_yaml_agree(bicep: Bicep) -> None:
    project = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    pool = bicep.resolve("workPool")
    deployment = bicep.resolve("workflowDeployment")
    on_pool = {
        d["name"]: d for d in project["deployments"] if d.get("work_pool", {}).get("name") == pool
    }
    assert on_pool, f"prefect.yaml has no deployment on the work pool {pool!r} the worker serves"
    assert deployment in on_pool, f"{deployment!r} is not a prefect.yaml deployment on {pool!r}"
    assert on_pool[deployment]["entrypoint"] == "flows/workflow.py:run_workflow"
    for _symbol, _module, command, env in processes(bicep):
        for entry in env:
            if entry.name in ("ORCH_INGRESS_DEPLOYMENT", "ORCH_API_DEPLOYMENT"):
                assert bicep.resolve(entry.value or "") == f"run-workflow/{deployment}"
        if command[:2] == ["orchestration", "worker"]:
            assert command[command.index("--deployment") + 1] == deployment
        if command[:3] == ["prefect", "worker", "start"]:
            assert command[command.index("--pool") + 1] == pool
            assert command[command.index("--type") + 1] == "azure-container-instance"


def test_the_image_and_the_azure_pool_set_only_names_something_reads() -> None:
    """The Dockerfile's ENV and the Azure job variables' env, like the Container Apps' env."""
    every_setting = set().union(*(env_names(model) for model in ALL_MODELS)) | direct_reads()
    known = every_setting | prefect_names() | PLATFORM_NAMES
    image = {
        name
        for stage in parse_dockerfile(REPO_ROOT / "Dockerfile")
        for keyword, rest in stage.instructions
        if keyword == "ENV"
        for name in env_pairs(rest)
    }
    ours = {name for name in image if name.startswith(("ORCH_", "PREFECT_"))}
    assert ours, "the Dockerfile sets no ORCH_/PREFECT_ variable (it sets ORCH_API_HOST)"
    assert ours <= known, f"Dockerfile ENV read by nothing: {sorted(ours - known)}"
    project = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    pool_env = project["definitions"]["work_pools"]["azure"]["job_variables"]["env"]
    assert set(pool_env) <= known, (
        f"Azure job variables read by nothing: {sorted(set(pool_env) - known)}"
    )
