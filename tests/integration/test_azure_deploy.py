"""``prefect deploy`` of prefect.yaml's Azure variants to an Azure Container Instances pool.

Against the real test server, from a copy of the repository: the pool is created with
prefect-azure's ``azure-container-instance`` type, ``prefect deploy --name '*-azure' --no-prompt``
registers the deployments (no Azure call: deploying only registers), and what the server stored
is read back: the image, the run identity, the environment and the queue of each. The stored job
variables are then rendered through the pool's own base job template into the worker's job
configuration, which is what the ACI worker would submit to Azure, so a variable the template
does not accept fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import get_client
from prefect_azure.workers.container_instance import AzureContainerJobConfiguration

from tests.support.infra import REPO_ROOT, app_commands, parse_bicep

pytestmark = [pytest.mark.integration]

PREFECT = str(Path(sys.executable).with_name("prefect"))
IGNORED = shutil.ignore_patterns(
    ".git", ".venv*", ".orchestration", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"
)
RG = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-orch-test"
VALUES = {
    "ORCH_IMAGE": "crorchtest.azurecr.io/orchestration:3f2a9c1",
    "ORCH_REGISTRY": "crorchtest.azurecr.io",
    "ORCH_RUN_IDENTITY_ID": (
        f"{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id-orch-test-executor"
    ),
    "ORCH_RUN_IDENTITY_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
    "ORCH_ACI_SUBNET_ID": f"{RG}/providers/Microsoft.Network/virtualNetworks/vnet/subnets/aci",
    "AZURE_RESOURCE_GROUP": "rg-orch-test",
    "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
}


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def _azure_pool() -> tuple[str, list[dict[str, Any]]]:
    project = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    pool = project["definitions"]["work_pools"]["azure"]["name"]
    declared = [d for d in project["deployments"] if d["work_pool"]["name"] == pool]
    return pool, declared


async def test_prefect_deploy_registers_the_azure_variants_with_image_identity_and_env(
    prefect_server: Any, tmp_path: Path
) -> None:
    pool, declared = _azure_pool()
    assert {d["name"] for d in declared} >= {"device-workflow-azure", "crash-guard-azure"}
    checkout = tmp_path / "repo"
    shutil.copytree(REPO_ROOT, checkout, ignore=IGNORED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(prefect_server.env)
    env.update(VALUES)

    create = [PREFECT, "work-pool", "create", pool, "--type", "azure-container-instance"]
    created = _run([*create, "--overwrite"], checkout, env)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = _run([PREFECT, "deploy", "--name", "*-azure", "--no-prompt"], checkout, env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    async with get_client() as client:
        work_pool = await client.read_work_pool(pool)
        assert work_pool.type == "azure-container-instance"
        stored = {d.name: d for d in await client.read_deployments() if d.work_pool_name == pool}
        assert {d["name"] for d in declared} <= set(stored)

        workflow = stored["device-workflow-azure"]
        assert workflow.entrypoint == "flows/workflow.py:run_workflow"
        # The executor's queue: no `prefect worker` polls it (infra/main.bicep starts the worker
        # with --work-queue default), so workflow runs are the executor's alone.
        assert workflow.work_queue_name == "executor"
        guard = stored["crash-guard-azure"]
        assert guard.work_queue_name == "default"

        for deployment in (workflow, guard):
            variables = deployment.job_variables
            assert variables["image"] == VALUES["ORCH_IMAGE"]
            assert variables["identities"] == [VALUES["ORCH_RUN_IDENTITY_ID"]]
            assert variables["image_registry"] == {
                "registry_url": VALUES["ORCH_REGISTRY"],
                "identity": VALUES["ORCH_RUN_IDENTITY_ID"],
            }
            assert variables["subnet_ids"] == [VALUES["ORCH_ACI_SUBNET_ID"]]
            assert variables["env"]["AZURE_CLIENT_ID"] == VALUES["ORCH_RUN_IDENTITY_CLIENT_ID"]
            assert variables["env"]["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
            # Code comes from the image, not from the directory prefect deploy ran in.
            assert deployment.pull_steps == [
                {
                    "prefect.deployments.steps.set_working_directory": {
                        "directory": "/opt/orchestration"
                    }
                }
            ]
            # What the ACI worker would submit: the pool's template with these variables.
            config: AzureContainerJobConfiguration
            config = await AzureContainerJobConfiguration.from_template_and_values(
                work_pool.base_job_template, variables
            )
            assert config.image == VALUES["ORCH_IMAGE"]
            assert config.identities == [VALUES["ORCH_RUN_IDENTITY_ID"]]
            assert config.resource_group_name == VALUES["AZURE_RESOURCE_GROUP"]
            assert config.env["AZURE_CLIENT_ID"] == VALUES["ORCH_RUN_IDENTITY_CLIENT_ID"]
            assert not config.entrypoint  # the image has no Prefect entrypoint.sh

    # The Prefect worker the Bicep starts serves this pool's default queue only.
    worker = app_commands(parse_bicep())["prefectWorkerApp"]
    assert worker[worker.index("--pool") + 1] == pool
    assert worker[worker.index("--work-queue") + 1] == "default"
