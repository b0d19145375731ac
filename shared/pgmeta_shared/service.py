"""App factory shared by the stage services: FastAPI + Dapr subscription + a Platform opened in lifespan."""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from pydantic_settings import BaseSettings, SettingsConfigDict

from pgmeta_shared.app_token import every_route_but_health, require_app_token
from pgmeta_shared.events import ChunkReady, Stage, TopicName
from pgmeta_shared.fencing import ended
from pgmeta_shared.limits import apply_request_limits
from pgmeta_shared.platform import DaprPlatform, Platform
from pgmeta_shared.settings import DaprSettings
from pgmeta_shared.shutdown import Drain, process_drain, serve_draining
from pgmeta_shared.stages import CommandT, stage_handler
from pgmeta_shared.subscriptions import register_subscription
from pgmeta_shared.telemetry import configure_telemetry, instrument_app

log = logging.getLogger(__name__)


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PGMETA_", extra="ignore")

    app_host: str = "127.0.0.1"
    app_port: int = 8000


@dataclass(frozen=True)
class StageRoute(Generic[CommandT]):
    """A command topic a stage service answers: run ``work``, announce completion or failure."""

    stage: Stage
    command_topic: TopicName
    command_model: type[CommandT]
    work: Callable[[CommandT, Platform], BaseModel]
    completion_topic: TopicName


@dataclass(frozen=True)
class EarlyRoute:
    """A ``*.chunk_ready`` topic on which the stage starts a chunk before its own command arrives."""

    topic: TopicName
    handle: Callable[[ChunkReady, Platform], None]


def create_stage_app(
    *,
    service: str,
    settings: DaprSettings,
    routes: Sequence[StageRoute[Any]],
    early: EarlyRoute | None = None,
    platform_factory: Callable[[DaprSettings], Platform] = DaprPlatform,
    drain: Drain | None = None,
) -> FastAPI:
    drain = drain or process_drain()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        platform = platform_factory(settings)
        app.state.platform = platform
        drain.handback = platform.publish
        log.info("%s ready (sidecar %s)", service, settings.dapr_grpc_address)
        try:
            yield
        finally:
            drain.handback = None
            close = getattr(platform, "close", None)
            if close:
                close()

    app = FastAPI(title=f"pgmeta {service}", lifespan=lifespan)
    app.state.drain = drain
    instrument_app(app)
    # A stage service serves only its sidecar: every route but /healthz needs the sidecar's token.
    token = settings.app_api_token.get_secret_value() if settings.app_api_token else None
    require_app_token(app, token, every_route_but_health, service)
    apply_request_limits(app)

    for route in routes:

        def on_command(command: Any, route: StageRoute[Any] = route) -> None:
            stage_handler(app.state.platform, route.stage, route.work, route.completion_topic)(command)

        register_subscription(
            app, pubsub=settings.pubsub_name, topic=route.command_topic, model=route.command_model, handler=on_command
        )

    if early is not None:

        def on_chunk_ready(event: ChunkReady) -> None:
            if ended(app.state.platform, event.run_id) is None:  # no early work for a run that ended
                early.handle(event, app.state.platform)

        register_subscription(
            app, pubsub=settings.pubsub_name, topic=early.topic, model=ChunkReady, handler=on_chunk_ready
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "service": service}

    register_readiness(app, service, settings, drain, lambda: app.state.platform)
    return app


READINESS_TIMEOUT_SECONDS = 1.0  # both checks answer within the probe's 3 s timeout
READINESS_PROBE_KEY = "pgmeta-readiness-probe"


def sidecar_problem(settings: DaprSettings) -> str | None:
    """None when the sidecar answers that its components are loaded (Dapr's outbound health endpoint)."""
    url = f"http://{settings.dapr_host}:{settings.dapr_http_port}/v1.0/healthz/outbound"
    try:
        with urllib.request.urlopen(url, timeout=READINESS_TIMEOUT_SECONDS) as response:
            return None if response.status < 300 else f"sidecar answered {response.status}"
    except OSError as exc:
        return f"sidecar not reachable: {exc}"


def store_problem(platform: Platform) -> str | None:
    """None when the artifacts store answers a read through the sidecar."""
    try:
        platform.get_json(READINESS_PROBE_KEY)
    except Exception as exc:
        return f"artifacts store not reachable: {type(exc).__name__}: {exc}"
    return None


def register_readiness(
    app: FastAPI, service: str, settings: DaprSettings, drain: Drain, platform: Callable[[], Platform]
) -> None:
    """``GET /readyz``: 200 only while this replica can take work — not draining, its sidecar up with its
    components loaded, the artifacts store answering. ``/healthz`` stays the liveness probe (the process)."""

    def problems() -> list[str]:
        sidecar = sidecar_problem(settings)
        return [sidecar] if sidecar else [p for p in (store_problem(platform()),) if p]

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        if drain.draining:
            found = ["shutting down"]
        else:
            try:
                found = await asyncio.wait_for(asyncio.to_thread(problems), timeout=2 * READINESS_TIMEOUT_SECONDS)
            except TimeoutError:
                found = ["sidecar or artifacts store did not answer in time"]
        body = {"status": "not ready" if found else "ready", "service": service, "problems": found}
        return JSONResponse(body, status_code=503 if found else 200)


def serve(service: str, app_factory: Callable[[DaprSettings], FastAPI]) -> None:
    """Entry point of a service process: settings from the environment, then uvicorn."""
    settings = DaprSettings()
    server = ServerSettings()
    configure_telemetry(service, settings.log_level)
    serve_draining(app_factory(settings), server.app_host, server.app_port)
