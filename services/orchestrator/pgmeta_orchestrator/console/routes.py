"""The console's HTTP surface: the page and its assets (no data, no auth), and the data routes it adds.

``console_router`` holds every route that returns data: each needs a viewer (or higher) API token, checked by
the REST API's own auth (``require``), sent by the page as ``Authorization: Bearer`` on every fetch (its
progress stream too: it reads server-sent events over fetch, not EventSource). ``console_assets_router``
only serves the static page, which holds no data: a browser navigating to /console cannot send a Bearer
header, and the page asks for a token before it shows anything.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.concurrency import run_in_threadpool

from pgmeta_orchestrator import schedule_timing
from pgmeta_orchestrator.auth import Principal, Role, require
from pgmeta_orchestrator.console.outputs import (
    LINEAGE_SUFFIX,
    BindingObjectReader,
    CursorError,
    OutputMissingError,
    Page,
    RunIndex,
    RunOutputs,
    attribute_diff,
    compare_runs,
)
from pgmeta_orchestrator.runs import RunService, RunView
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_shared.events import ExtractionCompleted

TERMINAL = {"COMPLETED", "FAILED"}
ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}


class ConsoleSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PGMETA_CONSOLE_")

    index_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "pgmeta-console-index",
        description="Local cache of per-run entity indexes (disposable: rebuilt from the output when missing).",
    )
    events_poll_seconds: float = Field(default=0.5, description="How often the progress stream looks at a run.")


def include_console(app: FastAPI, settings: OrchestratorSettings) -> None:
    """Mounts the console on the orchestrator's app (one line in create_app)."""
    app.state.console_settings = settings
    app.include_router(console_assets_router)
    app.include_router(console_router)

    def index_completed_run(event: ExtractionCompleted) -> None:
        # Built now, in the background, so that nobody opening the run waits for it (each replica that
        # serves the run builds its own copy: this one now, the others when the run is first opened there).
        if event.status == "COMPLETED" and event.location:
            outputs_of(app).warm(event.run_id, event.location)

    listeners: list[Callable[[ExtractionCompleted], None]] = getattr(app.state, "run_finished_listeners", [])
    app.state.run_finished_listeners = [*listeners, index_completed_run]


console_assets_router = APIRouter(tags=["console"])
ConsoleViewer = Annotated[Principal, Depends(require(Role.VIEWER, "console.read"))]
console_router = APIRouter(tags=["console"], dependencies=[Depends(require(Role.VIEWER, "console.read"))])


@console_router.get("/console/api/whoami")
def whoami(caller: ConsoleViewer) -> dict[str, str]:
    """Who the token belongs to and its role: the page signs in with it, and hides what the role may not do."""
    return {"name": caller.name, "role": caller.role.value}


# -- the page ---------------------------------------------------------------------------------------


@console_assets_router.get("/console", include_in_schema=False)
def console_root() -> RedirectResponse:
    return RedirectResponse("/console/")


@console_assets_router.get("/console/", include_in_schema=False)
def console_page() -> Response:
    return _asset("index.html")


@console_assets_router.get("/console/assets/{name}", include_in_schema=False)
def console_asset(name: str) -> Response:
    return _asset(name)


def _asset(name: str) -> Response:
    suffix = Path(name).suffix
    if "/" in name or name.startswith(".") or suffix not in ASSET_TYPES:
        raise HTTPException(status_code=404, detail=f"no console asset {name!r}")
    asset = resources.files("pgmeta_orchestrator.console").joinpath("static", name)
    if not asset.is_file():
        raise HTTPException(status_code=404, detail=f"no console asset {name!r}")
    return Response(asset.read_bytes(), media_type=ASSET_TYPES[suffix], headers={"Cache-Control": "no-cache"})


# -- dependencies -----------------------------------------------------------------------------------


def _runs(request: Request) -> RunService:
    runs: RunService = request.app.state.runs
    return runs


def outputs_of(app: FastAPI) -> RunOutputs:
    """The run output reader, made at first use (nothing at import or before the sidecar is up)."""
    outputs: RunOutputs | None = getattr(app.state, "console_outputs", None)
    if outputs is None:
        settings: OrchestratorSettings = app.state.console_settings
        console = ConsoleSettings()
        outputs = RunOutputs(
            BindingObjectReader(settings.dapr_host, settings.dapr_http_port, headers=settings.sidecar_headers()),
            console.index_dir,
            isolate_builds=True,
        )
        app.state.console_outputs = outputs
    return outputs


def _outputs(request: Request) -> RunOutputs:
    return outputs_of(request.app)


Runs = Annotated[RunService, Depends(_runs)]
Outputs = Annotated[RunOutputs, Depends(_outputs)]
After = Annotated[str | None, Query(max_length=4000, description="Cursor: the page after this one ('next').")]
Before = Annotated[str | None, Query(max_length=4000, description="Cursor: the page before this one ('prev').")]
Limit = Annotated[int, Query(ge=1, le=200)]


async def _completed_view(runs: RunService, run_id: str) -> RunView:
    view = await run_in_threadpool(runs.view, run_id)
    if view is None:
        raise HTTPException(status_code=404, detail=f"no run with id {run_id!r}")
    if view.status != "COMPLETED" or not view.location:
        raise HTTPException(status_code=409, detail=f"run {run_id!r} is {view.status}: it has no output to browse")
    return view


async def _index(runs: RunService, outputs: RunOutputs, run_id: str) -> RunIndex:
    view = await _completed_view(runs, run_id)
    assert view.location is not None
    try:
        return await run_in_threadpool(outputs.index, run_id, view.location)
    except OutputMissingError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


# -- runs -------------------------------------------------------------------------------------------


def _summary(view: RunView, request: dict[str, Any] | None, manifest: dict[str, Any] | None) -> dict[str, Any]:
    summary = view.model_dump(mode="json")
    summary["request"] = request
    summary.setdefault("started_by", None)
    summary.setdefault("trace_url", None)
    if manifest is not None:
        summary.update(
            started_at=manifest.get("started_at"),
            finished_at=manifest.get("finished_at"),
            changes=manifest.get("changes"),
            problems=manifest.get("problems"),
            previous_run_id=manifest.get("previous_run_id"),
            connection_qualified_name=manifest.get("connection_qualified_name"),
        )
    return summary


def _run_summary(runs: RunService, outputs: RunOutputs, view: RunView) -> dict[str, Any]:
    if view.run_id in outputs.requests:
        request = outputs.requests[view.run_id]
    else:
        request = runs.request_of(view.run_id)
        if view.status in TERMINAL:  # a request never changes; while queued it may not be readable yet
            outputs.requests[view.run_id] = request
    manifest = None
    if view.status == "COMPLETED" and view.location:
        try:
            manifest = outputs.manifest(view.location)
        except (RuntimeError, OSError, ValueError):
            manifest = None  # the list still shows the run; its page says what is wrong
    return _summary(view, request, manifest)


@console_router.get("/console/api/runs")
async def console_runs(runs: Runs, outputs: Outputs, limit: Limit = 50) -> list[dict[str, Any]]:
    """Recent runs with what the list shows: source, times, counts, changes (newest first)."""
    views = await run_in_threadpool(runs.recent, limit)
    return [await run_in_threadpool(_run_summary, runs, outputs, view) for view in views]


@console_router.get("/console/api/runs/{run_id}")
async def console_run(run_id: str, runs: Runs, outputs: Outputs) -> dict[str, Any]:
    """One run: its view, request, and (when completed) manifest facts, output files and problems."""
    view = await run_in_threadpool(runs.view, run_id)
    if view is None:
        raise HTTPException(status_code=404, detail=f"no run with id {run_id!r}")
    summary = await run_in_threadpool(_run_summary, runs, outputs, view)
    if view.status == "COMPLETED" and view.location:
        manifest = await run_in_threadpool(outputs.manifest, view.location)
        report = await run_in_threadpool(outputs.read, view.location, "report.json")
        summary["manifest"] = manifest
        outputs.warm(run_id, view.location)
        summary["report"] = json.loads(report) if report else None
    return summary


@console_router.get("/runs/{run_id}/events")
async def run_events(run_id: str, request: Request, runs: Runs) -> StreamingResponse:
    """Server-sent events: a ``run`` event whenever the run's view changes; the stream ends with the run."""
    first = await run_in_threadpool(runs.view, run_id)
    if first is None:
        raise HTTPException(status_code=404, detail=f"no run with id {run_id!r}")
    poll = ConsoleSettings().events_poll_seconds

    async def stream() -> AsyncIterator[bytes]:
        view: RunView | None = first
        last, idle = "", 0.0
        while view is not None:
            payload = view.model_dump_json()
            if payload != last:
                last, idle = payload, 0.0
                yield f"event: run\ndata: {payload}\n\n".encode()
            elif idle >= 10:
                idle = 0.0
                yield b": keep-alive\n\n"  # proxies close idle streams
            if view.status in TERMINAL or await request.is_disconnected():
                return
            await asyncio.sleep(poll)
            idle += poll
            view = await run_in_threadpool(runs.view, run_id)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@console_router.get("/runs/{run_id}/files/{name:path}")
async def run_file(run_id: str, name: str, runs: Runs, outputs: Outputs) -> Response:
    """One output file of a completed run, as published (read through the objectstore binding)."""
    view = await _completed_view(runs, run_id)
    manifest = await run_in_threadpool(outputs.manifest, view.location or "")
    listed = {f["name"] for f in (manifest or {}).get("files", [])} | {"manifest.json"}
    if name not in listed:
        raise HTTPException(status_code=404, detail=f"run {run_id!r} has no output file {name!r}")
    content = await run_in_threadpool(outputs.read, view.location or "", name)
    if content is None:
        raise HTTPException(status_code=404, detail=f"{name!r} is listed but missing from the object store")
    media_type = "application/json" if name.endswith(".json") else "application/x-ndjson"
    disposition = f'attachment; filename="{Path(name).name}"'
    return Response(content, media_type=media_type, headers={"Content-Disposition": disposition})


# -- entities ---------------------------------------------------------------------------------------


@console_router.get("/runs/{run_id}/entities")
async def run_entities(
    run_id: str,
    runs: Runs,
    outputs: Outputs,
    q: Annotated[str, Query(max_length=500, description="Part of the name or qualifiedName.")] = "",
    type: Annotated[str | None, Query(max_length=100, description="Atlas type name, e.g. Table.")] = None,
    after: After = None,
    before: Before = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    """Entities of a completed run, searched in the run's index; pages are seeks (``next`` / ``prev``
    cursors), so the ten-thousandth page costs what the first does."""
    index = await _index(runs, outputs, run_id)
    page = await _paged(index.search, q.strip(), type or None, after, before, limit)
    types = await run_in_threadpool(index.types)
    return {**page.as_json(limit), "types": types}


async def _paged(query: Any, *args: Any) -> Page:
    try:
        page: Page = await run_in_threadpool(query, *args)
    except CursorError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    return page


@console_router.get("/runs/{run_id}/entity")
async def run_entity(
    run_id: str,
    runs: Runs,
    outputs: Outputs,
    qualified_name: Annotated[str, Query(min_length=1, max_length=2000)],
    after: After = None,
    before: Before = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    """One entity as published, its parent, a page of its children and (views) the lineage inputs."""
    index = await _index(runs, outputs, run_id)
    entity = await run_in_threadpool(outputs.entity, index, qualified_name)
    if entity is None:
        raise HTTPException(status_code=404, detail=f"run {run_id!r} has no entity {qualified_name!r}")
    found = await run_in_threadpool(index.row, qualified_name)
    assert found is not None
    row = found[0]
    parent = await run_in_threadpool(index.row, row.parent_qualified_name) if row.parent_qualified_name else None
    children = await _paged(index.children, qualified_name, after, before, limit)
    lineage = await run_in_threadpool(outputs.entity, index, qualified_name + LINEAGE_SUFFIX)
    inputs = (lineage or {}).get("attributes", {}).get("inputs") or []
    return {
        "entity": entity,
        "parent": parent[0].as_json() if parent else None,
        "children": children.as_json(limit),
        "lineage_inputs": [
            {"typeName": ref.get("typeName"), "qualifiedName": (ref.get("uniqueAttributes") or {}).get("qualifiedName")}
            for ref in inputs
        ],
    }


@console_router.get("/runs/{run_id}/compare")
async def compare_with(
    run_id: str,
    runs: Runs,
    outputs: Outputs,
    base: Annotated[str | None, Query(description="The earlier run; default: this run's baseline.")] = None,
    kind: Literal["created", "updated", "deleted"] = "updated",
    after: After = None,
    before: Before = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    """What changed from ``base`` to this run: counts of each kind, and a page of one kind (updated: with
    the attribute-level diff)."""
    head = await _index(runs, outputs, run_id)
    base_id = base or head.manifest.get("previous_run_id")
    if not base_id:
        raise HTTPException(status_code=422, detail=f"run {run_id!r} has no baseline: name a run to compare with")
    base_index = await _index(runs, outputs, base_id)
    head_connection = head.manifest.get("connection_qualified_name")
    if base_index.manifest.get("connection_qualified_name") != head_connection:
        raise HTTPException(
            status_code=422, detail=f"run {base_id!r} is of another connection than {run_id!r} ({head_connection})"
        )
    totals = outputs.compare_totals.get((base_index.run_id, head.run_id))
    if totals is None:  # two published runs never change: count once, then page through them
        totals = {}
        for each in ("created", "updated", "deleted"):
            totals[each] = (await run_in_threadpool(compare_runs, base_index, head, each, None, None, 1)).total
        outputs.compare_totals[(base_index.run_id, head.run_id)] = totals
    page = await _paged(compare_runs, base_index, head, kind, after, before, limit)
    items = []
    for row in page.items:
        item = row.as_json()
        if kind == "updated":
            old = await run_in_threadpool(outputs.entity, base_index, row.qualified_name)
            new = await run_in_threadpool(outputs.entity, head, row.qualified_name)
            item["diff"] = attribute_diff(old or {}, new or {})
        items.append(item)
    return {
        "run_id": run_id,
        "base": base_id,
        "connection_qualified_name": head_connection,
        "totals": totals,
        "kind": kind,
        **page.as_json(limit),
        "items": items,
    }


# -- schedules --------------------------------------------------------------------------------------


@console_router.get("/console/api/schedule-preview")
def schedule_preview(
    schedule: Annotated[str, Query(min_length=1, max_length=100, description="Cron, '@every 15m', '@daily', ...")],
    time_zone: Annotated[str, Query(max_length=100, description="IANA time zone the cron fields are read in.")] = "UTC",
    count: Annotated[int, Query(ge=1, le=10)] = 3,
) -> dict[str, Any]:
    """The next ticks of a schedule expression, or a 422 naming what is wrong with it: the schedule form checks
    the expression as it is typed, with the same rules ``POST /schedules`` applies."""
    try:
        schedule_timing.validate(schedule, time_zone)
    except schedule_timing.ScheduleSpecError as exc:
        field = "time_zone" if "time zone" in str(exc) else "schedule"
        raise HTTPException(status_code=422, detail=[{"loc": ["query", field], "msg": str(exc)}]) from exc
    now = datetime.now(UTC).replace(microsecond=0)
    ticks: list[str] = []
    after = now
    for _ in range(count):
        after = schedule_timing.next_due(schedule, time_zone, now, after)
        ticks.append(after.isoformat())
    return {"schedule": schedule, "time_zone": time_zone, "next": ticks}


# -- the source form --------------------------------------------------------------------------------

CA_BUNDLES_LISTED = 200
ConsoleOperator = Annotated[Principal, Depends(require(Role.OPERATOR, "console.ca_bundles"))]


@console_router.get("/console/api/ca-bundles")
def ca_bundles(request: Request, _: ConsoleOperator) -> dict[str, Any]:
    """What a source's ``sslrootcert`` may name: 'system', and the files of ``PGMETA_SSLROOTCERT_DIR`` (names
    only, as the API takes them), so that the source form offers what the API accepts instead of a free path."""
    settings: OrchestratorSettings = request.app.state.console_settings
    root = settings.sslrootcert_dir
    if root is None or not root.is_dir():
        return {"directory_configured": root is not None, "files": []}
    files = sorted(entry.name for entry in root.iterdir() if entry.is_file() and not entry.name.startswith("."))
    return {"directory_configured": True, "files": files[:CA_BUNDLES_LISTED]}
