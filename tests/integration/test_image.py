"""The Dockerfile's install and entry commands, run in a clean virtual environment.

No container registry is reachable from CI, so the base image cannot be pulled there (docs/AZURE.md,
"The image"). This test does what the Dockerfile's build stage does, taken from the file itself:
its COPY lines lay out the build context, its RUN lines run in order with its ENV values (the venv
path pointing into a temporary directory), then every command a process of the system is started
with (the Dockerfile's CMD, the Container Apps' commands in infra/main.bicep, the Prefect worker)
answers ``--help`` from that environment alone. A dependency missing from the image's install, a
console script renamed or a command in the Bicep that does not exist fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.infra import REPO_ROOT, app_commands, env_pairs, parse_bicep, parse_dockerfile

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _expand(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), value)


def test_the_dockerfile_installs_and_starts_every_process_in_a_clean_venv(
    tmp_path: Path,
) -> None:
    stages = {stage.name: stage for stage in parse_dockerfile(REPO_ROOT / "Dockerfile")}
    assert {"build", "runtime"} <= set(stages), f"stages: {sorted(stages)}"
    venv = tmp_path / "venv"
    workdir = tmp_path / "src"
    workdir.mkdir()
    # `python` of the Dockerfile is the base image's CPython 3.11: here, this interpreter.
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "python").symlink_to(sys.executable)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ORCH_", "PREFECT_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")

    runs = 0
    for keyword, rest in stages["build"].instructions:
        if keyword == "ENV":
            values = env_pairs(rest)
            # The image keeps no pip cache; here the machine's cache keeps the test short.
            values.pop("PIP_NO_CACHE_DIR", None)
            if "VENV" in values:
                values["VENV"] = str(venv)
            env.update(values)
        elif keyword == "COPY":
            *sources, dest = shlex.split(rest)
            target = workdir / _expand(dest, env)
            for source in sources:
                origin = REPO_ROOT / source
                assert origin.exists(), f"Dockerfile copies {source}, which does not exist"
                destination = target / origin.name if dest.endswith("/") else target
                destination.parent.mkdir(parents=True, exist_ok=True)
                if origin.is_dir():
                    shutil.copytree(
                        origin, destination, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy2(origin, destination)
        elif keyword == "RUN":
            runs += 1
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", rest],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
            assert done.returncode == 0, f"RUN {rest}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert runs >= 2, "the build stage should create the venv and install into it"

    # The runtime stage runs from the venv's bin directory, with the image's ENV.
    runtime_env = dict(env)
    runtime_env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    commands: list[list[str]] = []
    for keyword, rest in stages["runtime"].instructions:
        if keyword == "ENV":
            values = env_pairs(rest)
            values.pop("PATH", None)
            values.pop("PREFECT_HOME", None)
            runtime_env.update(values)
        elif keyword == "CMD":
            commands.append(json.loads(rest))
    commands += [
        ["orchestration", "--help"],
        ["orchestration", "worker", "--help"],
        ["prefect", "worker", "start", "--help"],
    ]
    bicep = parse_bicep()
    commands += [[*command, "--help"] for command in app_commands(bicep).values()]

    for command in commands:
        assert shutil.which(command[0], path=str(venv / "bin")), (
            f"{command[0]} is not installed in the image's venv"
        )
        done = subprocess.run(
            command,
            cwd=tmp_path,
            env=runtime_env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{shlex.join(command)}\n{done.stdout}\n{done.stderr}"
        assert "Usage" in done.stdout or "usage" in done.stdout, shlex.join(command)
