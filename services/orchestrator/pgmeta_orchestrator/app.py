"""The orchestrator's FastAPI app: REST API, Dapr Workflow host, subscriptions feeding the workflow."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pgmeta_orchestrator.audit import AuditLog, Outcome, client_address
from pgmeta_orchestrator.auth import (
    Authenticator,
    Principal,
    Role,
    TokenCreate,
    TokenCreated,
    TokenInfo,
    TokenStore,
    require,
)
from pgmeta_orchestrator.connections import (
    Connection,
    ConnectionName,
    ConnectionSpec,
    ConnectionStore,
    ConnectionSummary,
    ResolvedSource,
    SourcePolicy,
)
from pgmeta_orchestrator.console import include_console
from pgmeta_orchestrator.control import control_router
from pgmeta_orchestrator.dapr_metadata import dapr_router
from pgmeta_orchestrator.deadletter import register_dead_letter
from pgmeta_orchestrator.request_ids import RequestIdConflictError
from pgmeta_orchestrator.run_endings import RunEndings
from pgmeta_orchestrator.run_traces import RunTraces, attach_workflow_log_traces
from pgmeta_orchestrator.runs import MetadataQuery, Question, RunRequest, RunService, RunView, SourceRequest
from pgmeta_orchestrator.schedules import install_schedules
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_orchestrator.workflow import (
    ACTIVITY_FINISH,
    ACTIVITY_PUBLISH,
    ACTIVITY_SILENT_UNITS,
    Activities,
    register_workflow_versions,
)
from pgmeta_shared.app_token import require_app_token, sidecar_route
from pgmeta_shared.errors import InvalidRequestError
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
from pgmeta_shared.limits import apply_request_limits
from pgmeta_shared.platform import DaprPlatform, Platform
from pgmeta_shared.service import ServerSettings, register_readiness
from pgmeta_shared.shutdown import process_drain, serve_draining
from pgmeta_shared.subscriptions import register_subscription
from pgmeta_shared.telemetry import instrument_app, trace_workflow_calls

log = logging.getLogger(__name__)


def runs_of(request: Request) -> RunService:
    service: RunService = request.app.state.runs
    return service


def tokens_of(request: Request) -> TokenStore:
    store: TokenStore = request.app.state.tokens
    return store


Runs = Annotated[RunService, Depends(runs_of)]
Tokens = Annotated[TokenStore, Depends(tokens_of)]
# Who may do what: one dependency per action, so each route names its role and its audit action.
Viewer = Annotated[Principal, Depends(require(Role.VIEWER, "runs.read"))]
RunStarter = Annotated[Principal, Depends(require(Role.OPERATOR, "run.start"))]
PreflightCaller = Annotated[Principal, Depends(require(Role.OPERATOR, "preflight"))]
MetadataCaller = Annotated[Principal, Depends(require(Role.OPERATOR, "metadata.list"))]
TokenAdmin = Annotated[Principal, Depends(require(Role.ADMIN, "tokens.manage"))]
ConnectionReader = Annotated[Principal, Depends(require(Role.OPERATOR, "connections.read"))]
ConnectionAdmin = Annotated[Principal, Depends(require(Role.ADMIN, "connections.manage"))]


def connections_of(request: Request) -> ConnectionStore:
    store: ConnectionStore = request.app.state.connections
    return store


Connections = Annotated[ConnectionStore, Depends(connections_of)]


def resolve_source(request: Request, body: SourceRequest | RunRequest) -> ResolvedSource:
    """The source a request may reach (a registered connection, or an allowed ad-hoc host); 422 otherwise."""
    policy: SourcePolicy = request.app.state.source_policy
    try:
        return policy.resolve(
            connection=body.connection, source=body.source, database=body.database, filters=body.filters
        )
    except InvalidRequestError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None


def wire(
    app: FastAPI,
    platform: Platform,
    workflows: Any,
    settings: OrchestratorSettings,
    endings: RunEndings | None = None,
) -> None:
    """What the routes use, on ``app.state``: the lifespan wires Dapr's, unit tests in-memory ones."""
    app.state.platform = platform
    app.state.runs = RunService(platform, workflows, settings, endings)
    app.state.tokens = TokenStore(platform, settings.registry_store)
    app.state.connections = ConnectionStore(platform, settings.registry_store)
    app.state.source_policy = SourcePolicy(
        app.state.connections, settings.adhoc_allowed_hosts, settings.sslrootcert_dir
    )
    app.state.authenticator = Authenticator(settings, app.state.tokens)
    app.state.audit = AuditLog(settings.audit_log_path)


def create_app(settings: OrchestratorSettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from dapr.ext.workflow import DaprWorkflowClient, WorkflowRuntime

        platform = DaprPlatform(settings)
        app.state.run_traces = RunTraces(platform)
        endings = RunEndings()  # a run's last activity here wakes a long poll here at once
        activities = Activities(platform, settings.credentials_store, app.state.run_traces, endings)
        runtime = WorkflowRuntime(host=settings.dapr_host, port=str(settings.dapr_grpc_port))
        start_on = register_workflow_versions(runtime, settings.workflow_version)
        runtime.register_activity(activities.publish_event, name=ACTIVITY_PUBLISH)
        runtime.register_activity(activities.finish_run, name=ACTIVITY_FINISH)
        runtime.register_activity(activities.find_silent_units, name=ACTIVITY_SILENT_UNITS)
        runtime.start()  # type: ignore[no-untyped-call]
        workflows = DaprWorkflowClient(host=settings.dapr_host, port=str(settings.dapr_grpc_port))
        trace_workflow_calls(workflows)
        attach_workflow_log_traces(app.state.run_traces)
        wire(app, platform, workflows, settings, endings)
        log.info(
            "orchestrator ready (sidecar %s); new runs start on workflow %s",
            settings.dapr_grpc_address,
            start_on.name,
        )
        try:
            yield
        finally:
            runtime.shutdown()  # type: ignore[no-untyped-call]
            app.state.audit.close()
            platform.close()

    app = FastAPI(
        title="pgmeta orchestrator",
        lifespan=lifespan,
        description="Every route but /healthz and the console's page needs `Authorization: Bearer <API token or "
        "OIDC JWT>`.",
    )
    # On SIGTERM new deliveries are answered RETRY and requests in flight finish (pgmeta_shared.shutdown);
    # the workflows themselves are durable in the Dapr Workflow runtime and resume on the next orchestrator.
    app.state.drain = process_drain()
    instrument_app(app)
    # Subscriptions and Dapr's job triggers share the port with the REST API: only the sidecar (its
    # dapr-api-token) may call them.
    app_token = settings.app_api_token.get_secret_value() if settings.app_api_token else None
    require_app_token(app, app_token, sidecar_route, "orchestrator")
    apply_request_limits(app)
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
        if topic.name is TopicName.EXTRACTION_COMPLETED:  # install_schedules subscribes (schedules, retention)
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
    async def create_run(body: RunRequest, runs: Runs, caller: RunStarter, request: Request) -> dict[str, str]:
        """Publishes ``extraction.requested`` (the same event any publisher sends) and returns the run id."""
        try:
            resolved = await run_in_threadpool(resolve_source, request, body)
        except HTTPException as exc:
            app.state.audit.record(
                "run.start", caller, client_address(request), Outcome.DENIED, target=_asked(body), reason=exc.detail
            )
            raise
        target = resolved.target
        try:
            run_id = await run_in_threadpool(runs.submit, body, resolved, caller.name)
        except RequestIdConflictError as exc:
            app.state.audit.record(
                "run.start", caller, client_address(request), Outcome.DENIED, target=target, reason=exc.code
            )
            raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from None
        except Exception as exc:
            app.state.audit.record(
                "run.start", caller, client_address(request), Outcome.FAILED, target=target, reason=type(exc).__name__
            )
            raise
        app.state.audit.record(
            "run.start", caller, client_address(request), Outcome.ALLOWED, target=target, run_id=run_id
        )
        return {"run_id": run_id, "status_url": f"/runs/{run_id}"}

    @app.get("/runs/{run_id}")
    async def get_run(run_id: str, runs: Runs, _: Viewer, wait: Annotated[float, Query(ge=0, le=60)] = 0) -> RunView:
        """The run now; with ``wait`` (seconds), as soon as it ends or when the wait is up (a long poll)."""
        view = await run_in_threadpool(runs.wait, run_id, wait) if wait else await run_in_threadpool(runs.view, run_id)
        if view is None:
            raise HTTPException(status_code=404, detail=f"no run with id {run_id!r}")
        return view

    @app.get("/runs")
    async def list_runs(runs: Runs, _: Viewer, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[RunView]:
        return await run_in_threadpool(runs.recent, limit)

    async def ask(
        runs: RunService, body: SourceRequest, question: Question, caller: Principal, request: Request
    ) -> JSONResponse:
        """The extractor's answer; 422 when it names a problem with the source or the request."""
        action = "preflight" if question == "preflight" else "metadata.list"
        try:
            resolved = await run_in_threadpool(resolve_source, request, body)
        except HTTPException as exc:
            app.state.audit.record(
                action, caller, client_address(request), Outcome.DENIED, target=_asked(body), reason=exc.detail
            )
            raise
        answer = await run_in_threadpool(runs.ask_extractor, body, resolved, question)
        target = resolved.target
        outcome = Outcome.ALLOWED if answer["ok"] else Outcome.FAILED
        app.state.audit.record(
            action, caller, client_address(request), outcome, target=target, reason=answer.get("error_code")
        )
        return JSONResponse(answer, status_code=200 if answer["ok"] else 422)

    @app.post("/preflight")
    async def run_preflight(body: SourceRequest, runs: Runs, caller: PreflightCaller, request: Request) -> JSONResponse:
        """Checks connection, privileges, version and filters, and counts what would be extracted."""
        return await ask(runs, body, "preflight", caller, request)

    @app.post("/metadata/databases")
    async def list_databases(body: SourceRequest, runs: Runs, caller: MetadataCaller, request: Request) -> JSONResponse:
        """Databases on the server (and whether the role may connect), for filter pickers."""
        return await ask(runs, body, "databases", caller, request)

    @app.post("/metadata/schemas")
    async def list_schemas(body: SourceRequest, runs: Runs, caller: MetadataCaller, request: Request) -> JSONResponse:
        """Schemas of ``source.database`` (default: the maintenance database)."""
        return await ask(runs, body, "schemas", caller, request)

    @app.get("/metadata/databases")
    async def get_databases(
        source: Annotated[MetadataQuery, Depends()], runs: Runs, caller: MetadataCaller, request: Request
    ) -> JSONResponse:
        """The same for credentials named by secret (a GET never carries a password)."""
        return await ask(runs, source.as_request(), "databases", caller, request)

    @app.get("/metadata/schemas")
    async def get_schemas(
        source: Annotated[MetadataQuery, Depends()], runs: Runs, caller: MetadataCaller, request: Request
    ) -> JSONResponse:
        return await ask(runs, source.as_request(), "schemas", caller, request)

    # -- API tokens (admin) -----------------------------------------------------------------------

    @app.post("/tokens", status_code=status.HTTP_201_CREATED)
    async def create_token(body: TokenCreate, tokens: Tokens, caller: TokenAdmin, request: Request) -> TokenCreated:
        """A new API token; the answer is the only place it is ever shown."""
        created = await run_in_threadpool(tokens.create, body, caller.name)
        app.state.audit.record(
            "token.create", caller, client_address(request), Outcome.ALLOWED, target=f"{created.id} ({body.role})"
        )
        return created

    @app.get("/tokens")
    async def list_tokens(tokens: Tokens, _: TokenAdmin) -> list[TokenInfo]:
        return await run_in_threadpool(tokens.list)

    @app.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
    async def revoke_token(token_id: str, tokens: Tokens, caller: TokenAdmin, request: Request) -> None:
        revoked = await run_in_threadpool(tokens.revoke, token_id)
        outcome = Outcome.ALLOWED if revoked else Outcome.FAILED
        app.state.audit.record(
            "token.revoke",
            caller,
            client_address(request),
            outcome,
            target=token_id,
            reason=None if revoked else "no such token",
        )
        if not revoked:
            raise HTTPException(status_code=404, detail=f"no token with id {token_id!r}")

    # -- registered connections (admin writes, operators pick) ---------------------------------------

    @app.put("/connections/{name}")
    async def put_connection(
        name: ConnectionName, body: ConnectionSpec, store: Connections, caller: ConnectionAdmin, request: Request
    ) -> Connection:
        """Registers (or changes) a connection: a server bound to a secret and a derived qualifiedName."""
        policy: SourcePolicy = app.state.source_policy
        try:
            policy.check_sslrootcert(body.source)
        except InvalidRequestError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(exc)) from None
        connection, created = await run_in_threadpool(store.put, name, body, caller.name)
        where = f"{body.source.host}:{body.source.port} as {body.source.username}, secret {body.secret.key}"
        app.state.audit.record(
            "connection.create" if created else "connection.change",
            caller,
            client_address(request),
            Outcome.ALLOWED,
            target=f"connection {name} ({where})",
        )
        return connection

    @app.get("/connections")
    async def list_connections(store: Connections, _: ConnectionReader) -> list[ConnectionSummary]:
        return await run_in_threadpool(store.list)

    @app.get("/connections/{name}")
    async def get_connection(name: ConnectionName, store: Connections, _: ConnectionAdmin) -> Connection:
        connection = await run_in_threadpool(store.get, name)
        if connection is None:
            raise HTTPException(status_code=404, detail=f"no connection named {name!r}")
        return connection

    @app.delete("/connections/{name}", status_code=status.HTTP_204_NO_CONTENT)
    async def delete_connection(
        name: ConnectionName, store: Connections, caller: ConnectionAdmin, request: Request
    ) -> None:
        deleted = await run_in_threadpool(store.delete, name)
        app.state.audit.record(
            "connection.delete",
            caller,
            client_address(request),
            Outcome.ALLOWED if deleted else Outcome.FAILED,
            target=f"connection {name}",
            reason=None if deleted else "no such connection",
        )
        if not deleted:
            raise HTTPException(status_code=404, detail=f"no connection named {name!r}")

    include_console(app, settings)  # the web console under /console, and the read routes it adds

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "service": "orchestrator"}

    register_readiness(app, "orchestrator", settings, app.state.drain, lambda: app.state.platform)
    app.include_router(dapr_router(settings))

    return app


def _asked(body: SourceRequest | RunRequest) -> str:
    """What a refused request named, for the audit trail."""
    if body.connection is not None:
        return f"connection {body.connection}"
    assert body.source is not None
    return f"{body.source.host}:{body.source.port} as {body.source.username}"


def main() -> None:
    from pgmeta_shared.telemetry import configure_telemetry

    settings = OrchestratorSettings()
    server = ServerSettings()
    configure_telemetry("orchestrator", settings.log_level)
    serve_draining(create_app(settings), server.app_host, server.app_port)
