"""The management API: a FastAPI app over Prefect's client and the ingress pipeline.

``create_app(settings)`` builds it; the lifespan opens one Prefect client and the ingress (database,
router) for the process. Endpoints mirror the original design's HTTP functions; OpenAPI at
``/docs``. Errors: 401 without a valid key, 404 unknown workflow, 408 a body that did not arrive
in time, 409 a request the run's state forbids, 413 body too large, 415 a body that is not JSON,
422 invalid request (FastAPI's validation details, without the offending input) or a
``workflowType`` the definitions source does not have, 502 Prefect refused, 503 Prefect, the
database or the definitions source unavailable.

Error answers are generic where the cause is ours (502, 503, an unusable definition): the driver's
or the source's words, which may name hosts and directories, go to the log only. Error bodies are
ASCII JSON, so no character a client sent can make an answer unencodable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Path, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.definitions import DefinitionPinner, DefinitionsUnavailableError, UnknownWorkflowError
from api.models import (
    ID_PATTERN,
    NAME_PATTERN,
    DeviceEventRequest,
    EventAccepted,
    JsonObject,
    RaiseEventRequest,
    StartWorkflowRequest,
    WorkflowStatus,
)
from api.security import ApiKeyGuard, RequestBodyGuard
from api.service import ConflictError, NotFoundError, WorkflowService
from api.settings import ApiSettings
from listeners.control import ControlError, ControlUnavailableError

__all__ = ["create_app"]

log = logging.getLogger(__name__)

DEVICE_ID = Annotated[str, Path(pattern=ID_PATTERN)]
EVENT_NAME = Annotated[str, Path(pattern=NAME_PATTERN)]
#: A run id (a UUID) or an instance id: both follow the id rule.
WORKFLOW_ID = Annotated[str, Path(pattern=ID_PATTERN)]

PREFECT_UNAVAILABLE = "Prefect is unavailable; try again later"
PREFECT_REFUSED = "Prefect refused the request"
DEFINITIONS_UNAVAILABLE = "the definitions source is unavailable; try again later"


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a lone surrogate a client sent (in a key, a
    path) cannot make the answer unencodable."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode("ascii")


def _service(request: Request) -> WorkflowService:
    service: WorkflowService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the API is not ready")
    return service


Service = Annotated[WorkflowService, Depends(_service)]


def create_app(settings: ApiSettings | None = None, *, database_url: str | None = None) -> FastAPI:
    """The app; ``database_url`` overrides ``ORCH_DB_URL`` (tests)."""
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from listeners.control import PrefectRunControl
        from listeners.local import open_ingress
        from listeners.settings import IngressSettings
        from store.settings import DatabaseSettings

        ingress_settings = IngressSettings()
        deployment = settings.deployment or ingress_settings.deployment
        ingress_settings = ingress_settings.model_copy(update={"deployment": deployment})
        definitions = DefinitionPinner.from_environment()
        async with (
            PrefectRunControl(deployment, timeout=settings.prefect_timeout) as control,
            open_ingress(
                database_url=database_url or DatabaseSettings().url,
                settings=ingress_settings,
                control=control,
                max_message_bytes=settings.max_body_bytes,
                definitions=definitions,
            ) as runtime,
            # Starts and resumes this API deferred while Prefect was down are finished here,
            # not only by a listener (which may not run at all).
            runtime.reconciler.running(interval=ingress_settings.reconcile_interval),
        ):
            app.state.service = WorkflowService(
                control,
                runtime.ingress,
                definitions,
                router=runtime.router,
                ledger=runtime.ledger,
            )
            try:
                yield
            finally:
                app.state.service = None

    guard = ApiKeyGuard(settings.api_keys, allow_anonymous=settings.allow_anonymous)
    app = FastAPI(
        title="Device workflow orchestration",
        version="1",
        description="Start, inspect, signal and terminate device workflows.",
        lifespan=lifespan,
    )
    app.add_middleware(
        RequestBodyGuard, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's shape without "input" and "ctx": the input may be huge or unprintable.
        errors = [
            {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": e.get("msg")}
            for e in exc.errors()
        ]
        return AsciiJSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(ControlUnavailableError)
    async def _unavailable(request: Request, exc: ControlUnavailableError) -> JSONResponse:
        log.warning("%s %s: Prefect unavailable: %s", request.method, request.url.path, exc)
        return AsciiJSONResponse({"detail": PREFECT_UNAVAILABLE}, status_code=503)

    @app.exception_handler(ControlError)
    async def _refused(request: Request, exc: ControlError) -> JSONResponse:
        log.warning("%s %s: Prefect refused: %s", request.method, request.url.path, exc)
        return AsciiJSONResponse({"detail": PREFECT_REFUSED}, status_code=502)

    @app.exception_handler(UnknownWorkflowError)
    async def _unknown_workflow(request: Request, exc: UnknownWorkflowError) -> JSONResponse:
        log.warning("%s %s: workflowType refused: %s", request.method, request.url.path, exc)
        workflow = getattr(request.state, "workflow_type", None)
        detail = "workflowType: no such workflow (or version), or its definition is invalid"
        if workflow:
            detail += f": {workflow!r}"
        return AsciiJSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(DefinitionsUnavailableError)
    async def _no_definitions(request: Request, exc: DefinitionsUnavailableError) -> JSONResponse:
        log.warning("%s %s: definitions unavailable: %s", request.method, request.url.path, exc)
        return AsciiJSONResponse({"detail": DEFINITIONS_UNAVAILABLE}, status_code=503)

    @app.exception_handler(NotFoundError)
    async def _not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return AsciiJSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ConflictError)
    async def _conflict(_request: Request, exc: ConflictError) -> JSONResponse:
        return AsciiJSONResponse({"detail": str(exc)}, status_code=409)

    protected = [Depends(guard)]

    @app.get("/health", tags=["operations"])
    async def health(request: Request) -> JSONResponse:
        """Liveness and Prefect reachability; open without a key."""
        service: WorkflowService | None = getattr(request.app.state, "service", None)
        prefect_ok = service is not None and await service.prefect_healthy()
        body: dict[str, Any] = {"status": "ok" if prefect_ok else "degraded", "prefect": prefect_ok}
        return JSONResponse(body, status_code=200 if prefect_ok else 503)

    @app.post(
        "/workflows",
        status_code=status.HTTP_202_ACCEPTED,
        dependencies=protected,
        tags=["workflows"],
    )
    async def start_workflow(
        body: StartWorkflowRequest, service: Service, request: Request
    ) -> WorkflowStatus:
        """Start a run; with ``instanceId``, starting again returns the run already started."""
        request.state.workflow_type = body.workflow_type  # named in a refusal (it follows a rule)
        return await service.start(body)

    @app.get("/workflows/{workflow_id}", dependencies=protected, tags=["workflows"])
    async def get_workflow(workflow_id: WORKFLOW_ID, service: Service) -> WorkflowStatus:
        """Status, created, last updated, current state and the trail so far (by run id or
        instance id)."""
        return await service.status(workflow_id)

    @app.post(
        "/workflows/{workflow_id}/resume",
        status_code=status.HTTP_202_ACCEPTED,
        dependencies=protected,
        tags=["workflows"],
        responses={
            409: {"description": "the run does not wait (yet, or any more)"},
            422: {"description": "the wait cannot use this input: the reason"},
        },
    )
    async def resume_workflow(
        workflow_id: WORKFLOW_ID, body: Annotated[JsonObject, Body()], service: Service
    ) -> WorkflowStatus:
        """Resume a waiting run as the UI's Resume form does: ``{"action": "deliver-event",
        "payload": {...}}`` records the awaited event and the run takes it; ``{"action":
        "fire-timer"}`` takes the timer or timeout now (docs/OPERATIONS.md)."""
        return await service.resume(workflow_id, body)

    @app.post(
        "/workflows/{workflow_id}/events/{event_name}",
        status_code=status.HTTP_202_ACCEPTED,
        dependencies=protected,
        tags=["events"],
        responses={409: {"description": "the run has ended or has no device"}},
    )
    async def raise_event(
        workflow_id: WORKFLOW_ID,
        event_name: EVENT_NAME,
        service: Service,
        body: RaiseEventRequest | None = None,
    ) -> JSONResponse:
        """Raise an event for the run's device: the path a queued device message takes."""
        body = body or RaiseEventRequest()
        accepted, code = await service.raise_event(
            workflow_id, event_name, body.payload, body.event_id
        )
        return _event_response(accepted, code)

    @app.post(
        "/devices/{device_id}/events",
        status_code=status.HTTP_202_ACCEPTED,
        dependencies=protected,
        tags=["events"],
    )
    async def device_event(
        device_id: DEVICE_ID, body: DeviceEventRequest, service: Service
    ) -> JSONResponse:
        """Ingress: record the device's event, then start, resume or leave it for its run."""
        occurred = body.occurred_at.isoformat() if body.occurred_at else None
        accepted, code = await service.device_event(
            device_id, body.name, body.payload, body.event_id, occurred
        )
        return _event_response(accepted, code)

    @app.delete("/workflows/{workflow_id}", dependencies=protected, tags=["workflows"])
    async def terminate_workflow(workflow_id: WORKFLOW_ID, service: Service) -> WorkflowStatus:
        """Terminate (cancel) the run; 409 when it has already ended."""
        return await service.terminate(workflow_id)

    return app


def _event_response(accepted: EventAccepted, code: int) -> JSONResponse:
    return AsciiJSONResponse(accepted.model_dump(mode="json", by_alias=True), status_code=code)
