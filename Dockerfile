# One image for every long-running process of the system (docs/AZURE.md):
#   orchestration worker | orchestration listen | orchestration serve-api
#   prefect server start | prefect worker start --type azure-container-instance
# The command is chosen by whoever runs the container (the Container App, the ACI job).
#
# Base: pinned to the exact CPython release CI tests with, on Debian bookworm. A platform team
# with registry access adds the digest: PYTHON_IMAGE=python:3.11.7-slim-bookworm@sha256:<digest>.
# checkov:skip=CKV_DOCKER_7:FROM names the ARG below, whose default is an exact version tag, which checkov cannot resolve through the ARG.
ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

# --- build: a virtual environment with the project and its locked dependencies -----------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VENV=/opt/venv
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY infra/image/requirements-azure.txt infra/image/
COPY interpreter interpreter
COPY flows flows
COPY tasks tasks
COPY listeners listeners
COPY store store
COPY api api
COPY cli cli
COPY operations operations
RUN python -m venv "$VENV"
# requirements.lock as constraints: the runtime dependencies at exactly the versions CI tested,
# without the development tools the lock also pins (pytest, mypy, ruff, qpid-proton).
RUN "$VENV/bin/pip" install --constraint requirements.lock . -r infra/image/requirements-azure.txt

# --- runtime: the environment and the sources Prefect's pull step points at; no build tools ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="device-orchestration" \
      org.opencontainers.image.description="JSON-configurable workflow orchestration on Prefect 3"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PREFECT_HOME=/home/app/.prefect \
    ORCH_API_HOST=0.0.0.0
RUN groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --no-log-init --create-home --home-dir /home/app app
COPY --from=build /opt/venv /opt/venv
# prefect.yaml's Azure deployments run `flows/...:` entrypoints from here (their pull step).
WORKDIR /opt/orchestration
COPY --chown=root:root prefect.yaml ./
COPY --chown=root:root definitions definitions
COPY --chown=root:root interpreter interpreter
COPY --chown=root:root flows flows
COPY --chown=root:root tasks tasks
COPY --chown=root:root listeners listeners
COPY --chown=root:root store store
COPY --chown=root:root api api
COPY --chown=root:root cli cli
COPY --chown=root:root operations operations
COPY --chown=root:root infra/image/healthcheck.py /opt/healthcheck.py
USER 10001:10001
EXPOSE 8080 4200
HEALTHCHECK --interval=30s --timeout=6s --start-period=60s --retries=3 \
    CMD ["python", "/opt/healthcheck.py"]
CMD ["orchestration", "--help"]
