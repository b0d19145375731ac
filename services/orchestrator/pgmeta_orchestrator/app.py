"""The orchestrator's FastAPI app: REST API, Dapr Workflow host, subscriptions feeding the workflow."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pgmeta_orchestrator.request_ids import RequestIdConflictError
from pgmeta_orchestrator.runs import MetadataQuery, RunRequest, RunService, RunView, SourceRequest
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_orchestrator.workflow import (
    ACTIVITY_FINISH,
    ACTIVITY_PUBLISH,
    WORKFLOW_NAME,
    Activities,
    extraction_workflow,
)
from pgmeta_shared.events import (
    STAGE_COMPLETION_TOPICS,
    ExtractCompleted,
    ExtractionProgress,
    ExtractionRequested,
    PreflightCompleted,
    PublishCompleted,
    Stage,
    StageFailed,
    TopicName,
    TransformCompleted,
    stage_result_event,
)
from pgmeta_shared.platform import DaprPlatform
from pgmeta_shared.service import ServerSettings
from pgmeta_shared.subscriptions import register_subscription

log = logging.getLogger(__name__)

COMPLETION_MODELS: dict[Stage, Any] = {
    Stage.PREFLIGHT: PreflightCompleted,
    Stage.EXTRACT: ExtractCompleted,
    Stage.TRANSFORM: TransformCompleted,
    Stage.PUBLISH: PublishCompleted,
}


def runs_of(request: Request) -> RunService:
    service: RunService = request.app.state.runs
    return service


Runs = Annotated[RunService, Depends(runs_of)]


def create_app(settings: OrchestratorSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from dapr.ext.workflow import DaprWorkflowClient, WorkflowRuntime

        platform = DaprPlatform(settings)
        activities = Activities(platform, settings.credentials_store)
        runtime = WorkflowRuntime(host=settings.dapr_host, port=str(settings.dapr_grpc_port))
        runtime.register_workflow(extraction_workflow, name=WORKFLOW_NAME)
        runtime.register_activity(activities.publish_event, name=ACTIVITY_PUBLISH)
        runtime.register_activity(activities.finish_run, name=ACTIVITY_FINISH)
        runtime.start()  # type: ignore[no-untyped-call]
        workflows = DaprWorkflowClient(host=settings.dapr_host, port=str(settings.dapr_grpc_port))
        app.state.runs = RunService(platform, workflows, settings)
        log.info("orchestrator ready (sidecar %s)", settings.dapr_grpc_address)
        try:
            yield
        finally:
            runtime.shutdown()  # type: ignore[no-untyped-call]
            platform.close()

    app = FastAPI(title="pgmeta orchestrator", lifespan=lifespan)

    # -- subscriptions ----------------------------------------------------------------------------

    def on_extraction_requested(event: ExtractionRequested) -> None:
        app.state.runs.start(event)

    register_subscription(
        app,
        pubsub=settings.pubsub_name,
        topic=TopicName.EXTRACTION_REQUESTED,
        model=ExtractionRequested,
        handler=on_extraction_requested,
    )

    for stage, topic in STAGE_COMPLETION_TOPICS.items():

        def on_stage_completed(event: Any, stage: Stage = stage) -> None:
            app.state.runs.raise_stage_event(
                event.run_id,
                stage_result_event(stage, getattr(event, "unit", None)),
                {"ok": True, "event": event.model_dump(mode="json")},
            )

        register_subscription(
            app,
            pubsub=settings.pubsub_name,
            topic=topic,
            model=COMPLETION_MODELS[stage],
            handler=on_stage_completed,
        )

    def on_stage_failed(event: StageFailed) -> None:
        app.state.runs.raise_stage_event(
            event.run_id,
            stage_result_event(event.stage, event.unit),
            {"ok": False, "error_code": event.error_code, "error": event.error},
        )

    register_subscription(
        app,
        pubsub=settings.pubsub_name,
        topic=TopicName.STAGE_FAILED,
        model=StageFailed,
        handler=on_stage_failed,
    )

    def on_progress(event: ExtractionProgress) -> None:
        app.state.runs.record_progress(event)

    register_subscription(
        app,
        pubsub=settings.pubsub_name,
        topic=TopicName.EXTRACTION_PROGRESS,
        model=ExtractionProgress,
        handler=on_progress,
    )

    # -- REST API ---------------------------------------------------------------------------------

    @app.post("/runs", status_code=status.HTTP_202_ACCEPTED)
    async def create_run(body: RunRequest, runs: Runs) -> dict[str, str]:
        """Publishes ``extraction.requested`` (the same event any publisher sends) and returns the run id."""
        try:
            run_id = await run_in_threadpool(runs.submit, body)
        except RequestIdConflictError as exc:
            raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from None
        return {"run_id": run_id, "status_url": f"/runs/{run_id}"}

    @app.get("/runs/{run_id}")
    async def get_run(run_id: str, runs: Runs) -> RunView:
        view = await run_in_threadpool(runs.view, run_id)
        if view is None:
            raise HTTPException(status_code=404, detail=f"no run with id {run_id!r}")
        return view

    @app.get("/runs")
    async def list_runs(runs: Runs, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[RunView]:
        return await run_in_threadpool(runs.recent, limit)

    @app.post("/preflight")
    async def run_preflight(body: SourceRequest, runs: Runs) -> JSONResponse:
        """Checks connection, privileges, version and filters, and counts what would be extracted."""
        answer = await run_in_threadpool(runs.ask_extractor, body, "preflight")
        return JSONResponse(answer, status_code=200 if answer["ok"] else 422)

    @app.post("/metadata/databases")
    async def list_databases(body: SourceRequest, runs: Runs) -> JSONResponse:
        """Databases on the server (and whether the role may connect), for filter pickers."""
        answer = await run_in_threadpool(runs.ask_extractor, body, "databases")
        return JSONResponse(answer, status_code=200 if answer["ok"] else 422)

    @app.post("/metadata/schemas")
    async def list_schemas(body: SourceRequest, runs: Runs) -> JSONResponse:
        """Schemas of ``source.database`` (default: the maintenance database)."""
        answer = await run_in_threadpool(runs.ask_extractor, body, "schemas")
        return JSONResponse(answer, status_code=200 if answer["ok"] else 422)

    @app.get("/metadata/databases")
    async def get_databases(source: Annotated[MetadataQuery, Depends()], runs: Runs) -> JSONResponse:
        """The same for credentials named by secret (a GET never carries a password)."""
        answer = await run_in_threadpool(runs.ask_extractor, source.as_request(), "databases")
        return JSONResponse(answer, status_code=200 if answer["ok"] else 422)

    @app.get("/metadata/schemas")
    async def get_schemas(source: Annotated[MetadataQuery, Depends()], runs: Runs) -> JSONResponse:
        answer = await run_in_threadpool(runs.ask_extractor, source.as_request(), "schemas")
        return JSONResponse(answer, status_code=200 if answer["ok"] else 422)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "orchestrator"}

    return app


def main() -> None:
    import uvicorn

    from pgmeta_shared.observability import configure_logging

    settings = OrchestratorSettings()
    server = ServerSettings()
    configure_logging("orchestrator", settings.log_level)
    uvicorn.run(create_app(settings), host=server.app_host, port=server.app_port, log_level="warning")
