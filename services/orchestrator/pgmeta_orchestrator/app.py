"""The orchestrator's FastAPI app: REST API, Dapr Workflow host, subscriptions feeding the workflow."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pgmeta_orchestrator.console import include_console
from pgmeta_orchestrator.control import control_router
from pgmeta_orchestrator.dapr_metadata import dapr_router
from pgmeta_orchestrator.deadletter import register_dead_letter
from pgmeta_orchestrator.request_ids import RequestIdConflictError
from pgmeta_orchestrator.run_traces import RunTraces, attach_workflow_log_traces
from pgmeta_orchestrator.runs import MetadataQuery, Question, RunRequest, RunService, RunView, SourceRequest
from pgmeta_orchestrator.schedules import install_schedules
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_orchestrator.workflow import (
    ACTIVITY_FINISH,
    ACTIVITY_PUBLISH,
    WORKFLOW_NAME,
    Activities,
    extraction_workflow,
)
from pgmeta_shared.events import (
    ExtractionProgress,
    ExtractionRequested,
    ServiceName,
    Stage,
    StageFailed,
    TopicName,
    consumed_by,
    stage_result_event,
)
from pgmeta_shared.platform import DaprPlatform
from pgmeta_shared.service import ServerSettings
from pgmeta_shared.subscriptions import register_subscription
from pgmeta_shared.telemetry import instrument_app, trace_workflow_calls

log = logging.getLogger(__name__)


def runs_of(request: Request) -> RunService:
    service: RunService = request.app.state.runs
    return service


Runs = Annotated[RunService, Depends(runs_of)]


def create_app(settings: OrchestratorSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from dapr.ext.workflow import DaprWorkflowClient, WorkflowRuntime

        platform = DaprPlatform(settings)
        app.state.run_traces = RunTraces(platform)
        activities = Activities(platform, settings.credentials_store, app.state.run_traces)
        runtime = WorkflowRuntime(host=settings.dapr_host, port=str(settings.dapr_grpc_port))
        runtime.register_workflow(extraction_workflow, name=WORKFLOW_NAME)
        runtime.register_activity(activities.publish_event, name=ACTIVITY_PUBLISH)
        runtime.register_activity(activities.finish_run, name=ACTIVITY_FINISH)
        runtime.start()  # type: ignore[no-untyped-call]
        workflows = DaprWorkflowClient(host=settings.dapr_host, port=str(settings.dapr_grpc_port))
        trace_workflow_calls(workflows)
        attach_workflow_log_traces(app.state.run_traces)
        app.state.runs = RunService(platform, workflows, settings)
        log.info("orchestrator ready (sidecar %s)", settings.dapr_grpc_address)
        try:
            yield
        finally:
            runtime.shutdown()  # type: ignore[no-untyped-call]
            platform.close()

    app = FastAPI(title="pgmeta orchestrator", lifespan=lifespan)
    instrument_app(app)
    install_schedules(app, settings)

    # -- subscriptions: every topic the registry says the orchestrator consumes ----------------------

    def on_extraction_requested(event: ExtractionRequested) -> None:
        app.state.run_traces.remember(event.request_id)
        app.state.runs.start(event)

    def on_stage_failed(event: StageFailed) -> None:
        app.state.runs.raise_stage_event(
            event.run_id,
            stage_result_event(event.stage, event.unit),
            {"ok": False, "error_code": event.error_code, "error": event.error},
        )

    def on_progress(event: ExtractionProgress) -> None:
        app.state.runs.record_progress(event)

    handlers: dict[TopicName, Callable[[Any], None]] = {
        TopicName.EXTRACTION_REQUESTED: on_extraction_requested,
        TopicName.STAGE_FAILED: on_stage_failed,
        TopicName.EXTRACTION_PROGRESS: on_progress,
    }
    for topic in consumed_by(ServiceName.ORCHESTRATOR):
        if topic.name is TopicName.DEAD_LETTER:
            register_dead_letter(app, settings.pubsub_name)
            continue
        assert topic.model is not None
        handler = handlers.get(topic.name)
        if handler is None and topic.stage is not None:  # a stage's completion: wake the workflow

            def handler(event: Any, stage: Stage = topic.stage) -> None:
                app.state.runs.raise_stage_event(
                    event.run_id,
                    stage_result_event(stage, getattr(event, "unit", None)),
                    {"ok": True, "event": event.model_dump(mode="json")},
                )

        if handler is None:
            raise RuntimeError(f"the orchestrator consumes {topic.name} but has no handler for it")
        register_subscription(app, pubsub=settings.pubsub_name, topic=topic.name, model=topic.model, handler=handler)

    # -- REST API ---------------------------------------------------------------------------------

    app.include_router(control_router())  # POST /runs/{id}/cancel, /runs/{id}/retry

    @app.post("/runs", status_code=status.HTTP_202_ACCEPTED)
    async def create_run(body: RunRequest, runs: Runs) -> dict[str, str]:
        """Publishes ``extraction.requested`` (the same event any publisher sends) and returns the run id."""
        try:
            run_id = await run_in_threadpool(runs.submit, body)
        except RequestIdConflictError as exc:
            raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from None
        return {"run_id": run_id, "status_url": f"/runs/{run_id}"}

    @app.get("/runs/{run_id}")
    async def get_run(run_id: str, runs: Runs, wait: Annotated[float, Query(ge=0, le=60)] = 0) -> RunView:
        """The run now; with ``wait`` (seconds), as soon as it ends or when the wait is up (a long poll)."""
        view = await run_in_threadpool(runs.wait, run_id, wait) if wait else await run_in_threadpool(runs.view, run_id)
        if view is None:
            raise HTTPException(status_code=404, detail=f"no run with id {run_id!r}")
        return view

    @app.get("/runs")
    async def list_runs(runs: Runs, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[RunView]:
        return await run_in_threadpool(runs.recent, limit)

    async def ask(runs: RunService, body: SourceRequest, question: Question) -> JSONResponse:
        """The extractor's answer; 422 when it names a problem with the source or the request."""
        answer = await run_in_threadpool(runs.ask_extractor, body, question)
        return JSONResponse(answer, status_code=200 if answer["ok"] else 422)

    @app.post("/preflight")
    async def run_preflight(body: SourceRequest, runs: Runs) -> JSONResponse:
        """Checks connection, privileges, version and filters, and counts what would be extracted."""
        return await ask(runs, body, "preflight")

    @app.post("/metadata/databases")
    async def list_databases(body: SourceRequest, runs: Runs) -> JSONResponse:
        """Databases on the server (and whether the role may connect), for filter pickers."""
        return await ask(runs, body, "databases")

    @app.post("/metadata/schemas")
    async def list_schemas(body: SourceRequest, runs: Runs) -> JSONResponse:
        """Schemas of ``source.database`` (default: the maintenance database)."""
        return await ask(runs, body, "schemas")

    @app.get("/metadata/databases")
    async def get_databases(source: Annotated[MetadataQuery, Depends()], runs: Runs) -> JSONResponse:
        """The same for credentials named by secret (a GET never carries a password)."""
        return await ask(runs, source.as_request(), "databases")

    @app.get("/metadata/schemas")
    async def get_schemas(source: Annotated[MetadataQuery, Depends()], runs: Runs) -> JSONResponse:
        return await ask(runs, source.as_request(), "schemas")

    include_console(app, settings)  # the web console under /console, and the read routes it adds

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "orchestrator"}

    app.include_router(dapr_router(settings))

    return app


def main() -> None:
    import uvicorn

    from pgmeta_shared.telemetry import configure_telemetry

    settings = OrchestratorSettings()
    server = ServerSettings()
    configure_telemetry("orchestrator", settings.log_level)
    uvicorn.run(create_app(settings), host=server.app_host, port=server.app_port, log_level="warning")
