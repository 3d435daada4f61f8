"""The Prefect-facing port of ingress: start a device's run, resume a waiting one, read a state.

``RunControl`` is what the router needs from an orchestrator; ``PrefectRunControl`` implements it
over one long-lived Prefect API client. Errors are translated at this edge:
``ControlUnavailableError`` (Prefect down, slow or answering 5xx: try again later, the outbox
will) and ``ControlError`` (a request that retrying will not fix, such as an unknown
deployment).

Every call is bounded by a deadline: the Prefect client retries connection errors with backoff on
its own, which would otherwise stall ingress for a minute while Prefect is down.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar
from uuid import UUID

import httpx

from operations.prefect_call import call_prefect

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun

__all__ = [
    "ControlError",
    "ControlUnavailableError",
    "PrefectRunControl",
    "ResumeOutcome",
    "ResumeStatus",
    "RunControl",
    "RunNotFoundError",
    "RunStatus",
    "create_run",
]

T = TypeVar("T")

#: Prefect's REJECT reason for a run that is suspending and has not saved its input schema yet.
SCHEMA_NOT_SAVED = "Run input schema not found."

#: Prefect state types after which a run never runs again.
TERMINAL_STATE_TYPES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


async def create_run(
    client: PrefectClient,
    deployment_id: UUID,
    *,
    parameters: dict[str, Any],
    idempotency_key: str,
    name: str,
    tags: list[str],
) -> FlowRun:
    """``client.create_flow_run_from_deployment`` without the server's check of the parameters
    against the deployment's schema, for creators whose parameters are built by code: the run
    checks them itself (``flows.workflow``), and the server's check meta-validates the schema
    first, every time (jsonschema's ``check_schema``: ~45% of the server's work per created
    run). Runs created in the UI or by ``prefect deployment run`` are still checked."""
    from prefect.client.schemas.actions import DeploymentFlowRunCreate
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Scheduled, to_state_create

    body = DeploymentFlowRunCreate(
        parameters=parameters,
        enforce_parameter_schema=False,
        state=to_state_create(Scheduled()),
        tags=tags,
        name=name,
        idempotency_key=idempotency_key,
    )
    response = await client.request(
        "POST",
        "/deployments/{id}/create_flow_run",
        path_params={"id": deployment_id},
        json=body.model_dump(mode="json", exclude_unset=True),
    )
    return FlowRun.model_validate(response.json())


class ControlError(Exception):
    """The orchestrator refused a request that retrying will not fix."""


class ControlUnavailableError(ControlError):
    """The orchestrator could not be reached or did not answer in time; retry later."""


class RunNotFoundError(ControlError):
    """The orchestrator does not know the run."""


class ResumeStatus(enum.StrEnum):
    ACCEPTED = "accepted"  # the run is resuming with our input
    REJECTED = "rejected"  # the input failed the run's schema; the run stays paused
    # Nothing to resume now: not suspended yet (or suspending: its input schema is not saved
    # yet), already resumed, or finished. ``ResumeOutcome.reason`` says which, as Prefect did.
    NOT_PAUSED = "not_paused"


@dataclass(frozen=True, slots=True)
class ResumeOutcome:
    status: ResumeStatus
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RunStatus:
    """A run's state as the orchestrator reports it."""

    run_id: str
    state_type: str  # SCHEDULED, PENDING, RUNNING, PAUSED, COMPLETED, ...
    state_name: str  # "Suspended", "Resuming", ...

    @property
    def finished(self) -> bool:
        return self.state_type in TERMINAL_STATE_TYPES

    @property
    def paused(self) -> bool:
        return self.state_type == "PAUSED"


class RunControl(Protocol):
    """What ingress asks of the orchestrator. Every method is safe to call again."""

    async def start(
        self,
        *,
        parameters: dict[str, Any],
        idempotency_key: str,
        name: str,
        tags: Iterable[str],
    ) -> str:
        """Create the run (or find the one created with ``idempotency_key``); return its id."""
        ...

    async def resume(self, run_id: str, run_input: dict[str, Any]) -> ResumeOutcome: ...

    async def status(self, run_id: str) -> RunStatus | None:
        """The run's state, or None when the orchestrator does not know the run."""
        ...

    async def statuses(self, run_ids: list[str]) -> dict[str, RunStatus]:
        """The states of many runs in one request; unknown runs are left out."""
        ...


class PrefectRunControl:
    """``RunControl`` over the Prefect API, for runs of one deployment.

    Use as an async context manager: it holds one API client (one connection pool) for its life.
    """

    def __init__(self, deployment: str, *, timeout: float = 10.0) -> None:
        self._deployment_name = deployment
        self._timeout = timeout
        self._client: PrefectClient | None = None
        self._deployment_id: UUID | None = None

    async def __aenter__(self) -> Self:
        from prefect.client.orchestration import get_client

        self._client = get_client()
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.__aexit__(exc_type, exc, tb)
            self._client = None

    @property
    def client(self) -> PrefectClient:
        if self._client is None:
            raise RuntimeError("PrefectRunControl is used outside its `async with` block")
        return self._client

    async def _call(self, call: Awaitable[T]) -> T:
        """Await ``call`` under the deadline, translating Prefect's failures at this edge."""
        from prefect.exceptions import ObjectNotFound

        try:
            return await call_prefect(
                call, seconds=self._timeout, unavailable=ControlUnavailableError
            )
        except httpx.HTTPStatusError as exc:  # 4xx: call_prefect turned 5xx into unavailable
            code = exc.response.status_code
            if code == 404:
                raise RunNotFoundError(f"Prefect answered 404: {exc.response.text}") from exc
            if code in (408, 429):
                raise ControlUnavailableError(f"Prefect answered {code}") from exc
            raise ControlError(
                f"Prefect refused the request ({code}): {exc.response.text}"
            ) from exc
        except ObjectNotFound as exc:
            raise RunNotFoundError(str(exc)) from exc
        except RuntimeError as exc:
            # The Prefect client raises RuntimeError when its connection pool is closed under it.
            raise ControlUnavailableError(f"Prefect client failed: {exc}") from exc

    async def deployment_id(self) -> UUID:
        if self._deployment_id is None:
            try:
                deployment = await self._call(
                    self.client.read_deployment_by_name(self._deployment_name)
                )
            except RunNotFoundError as exc:
                raise ControlError(
                    f"no Prefect deployment named {self._deployment_name!r}"
                ) from exc
            self._deployment_id = deployment.id
        return self._deployment_id

    async def start(
        self,
        *,
        parameters: dict[str, Any],
        idempotency_key: str,
        name: str,
        tags: Iterable[str],
    ) -> str:
        deployment_id = await self.deployment_id()
        run = await self._call(
            create_run(
                self.client,
                deployment_id,
                parameters=parameters,
                idempotency_key=idempotency_key,
                name=name,
                tags=list(tags),
            )
        )
        return str(run.id)

    async def resume(self, run_id: str, run_input: dict[str, Any]) -> ResumeOutcome:
        from prefect.client.schemas.responses import SetStateStatus

        try:
            result = await self._call(self.client.resume_flow_run(UUID(run_id), run_input))
        except RunNotFoundError:
            return ResumeOutcome(ResumeStatus.NOT_PAUSED, "the run does not exist")
        except ControlError as exc:
            if not isinstance(exc.__cause__, httpx.HTTPStatusError):
                raise
            if exc.__cause__.response.status_code != 409:
                raise
            # Another resume's input was stored first (the resumer, another router): it won.
            return ResumeOutcome(ResumeStatus.NOT_PAUSED, "another resume won (409)")
        reason = str(getattr(result.details, "reason", "") or "")
        # The HTTP code says nothing here: ACCEPT, REJECT and ABORT all come back as success.
        if result.status == SetStateStatus.ACCEPT:
            return ResumeOutcome(ResumeStatus.ACCEPTED)
        if result.status == SetStateStatus.REJECT and reason == SCHEMA_NOT_SAVED:
            # A run suspends in two requests (Suspended, then its input schema): between them it
            # is paused but cannot take input yet. Not a refusal of the input: try again.
            return ResumeOutcome(ResumeStatus.NOT_PAUSED, f"still suspending ({reason})")
        if result.status == SetStateStatus.REJECT:
            return ResumeOutcome(ResumeStatus.REJECTED, reason)
        return ResumeOutcome(ResumeStatus.NOT_PAUSED, reason or str(result.status))

    async def status(self, run_id: str) -> RunStatus | None:
        try:
            run = await self._call(self.client.read_flow_run(UUID(run_id)))
        except RunNotFoundError:
            return None
        if run.state is None:
            return RunStatus(run_id, "SCHEDULED", "Scheduled")
        return RunStatus(run_id, str(run.state.type.value), run.state.name or "")

    async def statuses(self, run_ids: list[str]) -> dict[str, RunStatus]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        if not run_ids:
            return {}
        runs = await self._call(
            self.client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(r) for r in run_ids])),
                limit=len(run_ids),
            )
        )
        found: dict[str, RunStatus] = {}
        for run in runs:
            if run.state is None:
                found[str(run.id)] = RunStatus(str(run.id), "SCHEDULED", "Scheduled")
            else:
                found[str(run.id)] = RunStatus(
                    str(run.id), str(run.state.type.value), run.state.name or ""
                )
        return found
