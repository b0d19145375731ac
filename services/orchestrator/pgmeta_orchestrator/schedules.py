"""Scheduled crawls on Dapr's scheduler (the Jobs API): ``/schedules`` REST routes and the job trigger.

Each schedule has, at any time, one pending one-shot Dapr job for its next tick, named after the schedule and
the tick and carrying both in its data (a trigger delivered to an HTTP app says nothing about when it was
due). The trigger handler schedules the following tick first, then claims the tick in the schedule's state
(first writer wins, so a trigger delivered twice, or to two replicas, or repeated by the start-up
reconciliation, starts one run) and publishes ``extraction.requested`` with the run id
``sched-<schedule>-<tick>`` — the same id for the same tick, which the run service deduplicates again.

A chain of one-shot jobs rather than one recurring job: the tick is then known exactly (time zones and DST are
evaluated here, with cronsim), a missed tick after downtime is one pending job (not a backlog), and pausing is
deleting one job. Definitions and history live in the artifacts state store; the scheduler (etcd) holds jobs.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import grpc
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.concurrency import run_in_threadpool

from pgmeta_orchestrator import schedule_timing as timing
from pgmeta_orchestrator.audit import AuditLog, client_address
from pgmeta_orchestrator.audit import Outcome as AuditOutcome
from pgmeta_orchestrator.auth import Principal, Role, require
from pgmeta_orchestrator.connections import ConnectionName, SourcePolicy
from pgmeta_orchestrator.retention import ObjectStore, RetentionService
from pgmeta_orchestrator.retention import router as retention_router
from pgmeta_orchestrator.runs import RunRequest, RunService
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_shared.errors import InvalidRequestError
from pgmeta_shared.events import DatabaseName, ExtractionCompleted, FilterSpec, TopicName
from pgmeta_shared.keys import SCHEDULES_INDEX_KEY, schedule_key
from pgmeta_shared.platform import DaprPlatform, Platform
from pgmeta_shared.subscriptions import register_subscription
from pgmeta_shared.telemetry import trace_workflow_calls

log = logging.getLogger(__name__)

ScheduleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
HISTORY_SIZE = 50
RUN_PREFIX = "sched-"
_RUN_ID = re.compile(r"^sched-(?P<schedule>[a-z0-9][a-z0-9-]*)-(?P<stamp>\d{8}T\d{6}Z)$")
ACTIVE_STATUSES = {"QUEUED", "RUNNING"}
GC_JOB = "pgmeta-gc"  # the recurring job of the automatic retention pass

Outcome = Literal["started", "skipped_overlap", "skipped_missed", "queued", "started_from_queue"]


def run_id_for(schedule_id: str, due: datetime) -> str:
    """The run a tick starts: the same for every delivery of the tick, so a duplicate starts nothing."""
    return f"{RUN_PREFIX}{schedule_id}-{timing.stamp(due)}"


def schedule_of_run(run_id: str) -> tuple[str, datetime] | None:
    match = _RUN_ID.match(run_id)
    return (match["schedule"], timing.from_stamp(match["stamp"])) if match else None


def job_name(schedule_id: str, due: datetime) -> str:
    return f"pgmeta-schedule-{schedule_id}-{timing.stamp(due)}"


class ScheduleSpec(BaseModel):
    """Body of ``POST /schedules``: when, what (a run's options), and the policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schedule_id: ScheduleId | None = Field(default=None, description="Stable id; derived from the body if absent.")
    schedule: Annotated[str, StringConstraints(min_length=1, max_length=100)] = Field(
        description="5-field cron ('0 2 * * *'), 6-field cron with seconds first, '@every 15m', '@daily', ..."
    )
    time_zone: str = Field(default="UTC", description="IANA time zone the cron fields are read in.")
    connection: ConnectionName = Field(
        description="A registered connection (GET /connections): it brings the server and its credentials, so a "
        "schedule never stores a password nor names a secret."
    )
    database: DatabaseName | None = Field(
        default=None, description="With a connection registered for all databases: the one to extract."
    )
    filters: FilterSpec | None = Field(default=None, description="Default: the connection's filters, or everything.")
    stage_timeout_seconds: int = Field(default=900, ge=5, le=86_400)
    overlap: Literal["skip", "queue"] = Field(
        default="skip",
        description="A tick while this schedule's previous run is still active: 'skip' it, or 'queue' one run "
        "that starts when the active one ends (several queued ticks coalesce into one).",
    )
    missed: Literal["run_once", "skip"] = Field(
        default="run_once",
        description="A tick found overdue (the orchestrator or scheduler was down): 'run_once' starts one run "
        "for it at start-up, 'skip' drops it; either way the next tick is scheduled from now, never a backlog.",
    )
    jitter_seconds: int = Field(
        default=0, ge=0, le=3600, description="Delay each tick by a stable pseudo-random 0..N s (spreads schedules)."
    )
    paused: bool = False

    @model_validator(mode="after")
    def _valid_timing(self) -> ScheduleSpec:
        try:
            timing.validate(self.schedule, self.time_zone)
        except timing.ScheduleSpecError as exc:
            raise ValueError(str(exc)) from exc
        return self


class TickRecord(BaseModel):
    due: str
    outcome: Outcome
    run_id: str | None = None
    at: str
    status: str | None = None
    error: str | None = None


class ScheduleView(BaseModel):
    schedule_id: str
    spec: ScheduleSpec
    paused: bool
    created_at: str
    created_by: str | None = None
    next_due: str | None
    pending_job: str | None
    queued_due: str | None = None
    last_runs: list[TickRecord]


class ScheduleJobs:
    """The scheduler, through the sidecar's Jobs API (gRPC)."""

    def __init__(self, settings: OrchestratorSettings) -> None:
        from dapr.clients import DaprClient

        self._client = DaprClient(address=settings.dapr_grpc_address)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def schedule_once(self, name: str, at: datetime, data: dict[str, Any]) -> None:
        from dapr.clients import ConstantFailurePolicy, Job
        from google.protobuf import any_pb2, json_format, struct_pb2  # type: ignore[import-untyped]

        payload = any_pb2.Any()
        # A google.protobuf.Value reaches an HTTP app as plain JSON (daprd's HTTP channel unwraps it).
        payload.Pack(json_format.ParseDict(data, struct_pb2.Value()))
        job = Job(
            name=name,
            due_time=at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            data=payload,
            # A failed trigger (app restarting) is retried for about two minutes; after that the start-up /
            # periodic reconciliation finds the tick overdue and applies the missed-run policy.
            failure_policy=ConstantFailurePolicy(max_retries=24, interval_seconds=5),
        )
        self._client.schedule_job(job, overwrite=True)

    def schedule_recurring(self, name: str, schedule: str) -> None:
        from dapr.clients import DropFailurePolicy, Job

        # Every replica does this at start-up; overwriting the same definition is harmless.
        self._client.schedule_job(Job(name=name, schedule=schedule, failure_policy=DropFailurePolicy()), overwrite=True)

    def delete(self, name: str) -> None:
        try:
            self._client.delete_job(name)
        except Exception as exc:  # the SDK wraps gRPC errors; a job already fired or gone is fine
            log.debug("job %s: delete: %s", name, exc)

    def exists(self, name: str) -> bool:
        try:
            self._client.get_job(name)
        except Exception as exc:
            if "not found" in str(exc).lower() or getattr(exc, "code", lambda: None)() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True


class ScheduleService:
    """Schedules' definitions and history (artifacts store) and their pending jobs (scheduler)."""

    def __init__(
        self,
        platform: Platform,
        jobs: Any,
        runs: RunService,
        settings: OrchestratorSettings,
        sources: SourcePolicy,
        clock: Any = None,
    ) -> None:
        self._platform = platform
        self._jobs = jobs
        self._runs = runs
        self._sources = sources
        self._grace = timedelta(seconds=settings.schedule_misfire_grace_seconds)
        self._now = clock or (lambda: datetime.now(UTC))

    # -- definitions ------------------------------------------------------------------------------

    def create(self, spec: ScheduleSpec, created_by: str | None = None) -> ScheduleView:
        """Raises InvalidRequestError when the connection is not registered (or refuses the filters)."""
        self._resolve(spec)  # refused now, not at the first tick
        schedule_id = spec.schedule_id or _derived_id(spec)
        spec = spec.model_copy(update={"schedule_id": schedule_id})
        now = self._now()
        created: dict[str, Any] = {
            "spec": spec.model_dump(mode="json"),
            "paused": spec.paused,
            "created_at": now.isoformat(),
            "created_by": created_by,
            # @every ticks count from here (whole seconds: job due times are whole seconds).
            "anchor": now.replace(microsecond=0).isoformat(),
            "pending": None,
            "queued_due": None,
            "history": [],
        }

        def put(current: dict[str, Any] | None) -> dict[str, Any]:
            if current is not None:
                if current["spec"] != created["spec"]:
                    raise ScheduleConflictError(f"schedule {schedule_id!r} exists with a different definition")
                return current
            return created

        state = self._platform.update_json(schedule_key(schedule_id), put)
        self._platform.update_json(SCHEDULES_INDEX_KEY, lambda ids: sorted({*(ids or []), schedule_id}))
        if not state["paused"] and state["pending"] is None:
            self._arm(schedule_id, after=now)
        return self._view(schedule_id)

    def list(self) -> list[ScheduleView]:
        views = [self.get(schedule_id) for schedule_id in self._platform.get_json(SCHEDULES_INDEX_KEY) or []]
        return [view for view in views if view is not None]

    def get(self, schedule_id: str) -> ScheduleView | None:
        if self._platform.get_json(schedule_key(schedule_id)) is None:
            return None
        return self._view(schedule_id)

    def pause(self, schedule_id: str) -> ScheduleView | None:
        before: list[dict[str, Any]] = []

        def pause(state: dict[str, Any]) -> dict[str, Any]:
            before[:] = [state]
            return {**state, "paused": True, "pending": None, "queued_due": None}  # a queued tick goes too

        if self._update(schedule_id, pause) is None:
            return None
        self._cancel_pending(before[0])
        return self._view(schedule_id)

    def resume(self, schedule_id: str) -> ScheduleView | None:
        if self._update(schedule_id, lambda s: {**s, "paused": False}) is None:
            return None
        self._arm(schedule_id, after=self._now())
        return self._view(schedule_id)

    def delete(self, schedule_id: str) -> bool:
        state = self._platform.get_json(schedule_key(schedule_id))
        if state is None:
            return False
        self._platform.delete_json(schedule_key(schedule_id))
        self._platform.update_json(SCHEDULES_INDEX_KEY, lambda ids: [i for i in ids or [] if i != schedule_id])
        self._cancel_pending(state)
        return True

    # -- ticks ------------------------------------------------------------------------------------

    def on_trigger(self, schedule_id: str, due: datetime) -> Outcome | None:
        """A job fired (or the reconciliation found a tick overdue): arm the next tick, then start the run."""
        state = self._platform.get_json(schedule_key(schedule_id))
        if state is None or state["paused"]:
            log.info("schedule %s: tick %s ignored (schedule %s)", schedule_id, due, "gone" if not state else "paused")
            return None
        now = self._now()
        self._arm(schedule_id, after=max(now, due))
        spec = ScheduleSpec.model_validate(state["spec"])
        late = now - due > self._grace
        if late and spec.missed == "skip":
            outcome: Outcome = "skipped_missed"
        elif (active := self._active_run(state)) is not None:
            outcome = "queued" if spec.overlap == "queue" else "skipped_overlap"
            log.info("schedule %s: tick %s while run %s is active: %s", schedule_id, due, active, outcome)
        else:
            outcome = "started"
        if not self._claim(schedule_id, due, outcome):
            return None  # another delivery of this tick got there first
        if outcome == "started":
            self._start(spec, schedule_id, due)
        return outcome

    def on_run_finished(self, event: ExtractionCompleted) -> None:
        """A scheduled run ended: record its outcome, and start the queued tick if there is one."""
        parsed = schedule_of_run(event.run_id)
        if parsed is None:
            return
        schedule_id, due = parsed
        queued: dict[str, Any] = {}

        def record(state: dict[str, Any]) -> dict[str, Any]:
            history = [
                {**t, "status": event.status, "error": event.error} if t.get("run_id") == event.run_id else t
                for t in state["history"]
            ]
            queued["due"] = state.get("queued_due")
            return {**state, "history": history, "queued_due": None}

        state = self._update(schedule_id, record)
        if state is None or not queued.get("due") or state["paused"]:
            return
        queued_due = datetime.fromisoformat(queued["due"])
        if self._claim(schedule_id, queued_due, "started_from_queue"):
            self._start(ScheduleSpec.model_validate(state["spec"]), schedule_id, queued_due)

    def reconcile(self) -> None:
        """Repairs what a crash can leave: an overdue tick (its trigger lost or held while we were down) is
        handled now under the missed-run policy; an active schedule without a pending job gets one."""
        now = self._now()
        for schedule_id in self._platform.get_json(SCHEDULES_INDEX_KEY) or []:
            try:
                state = self._platform.get_json(schedule_key(schedule_id))
                if state is None or state["paused"]:
                    continue
                pending = state.get("pending")
                if pending is None:
                    self._arm(schedule_id, after=now)
                    continue
                due = datetime.fromisoformat(pending["due"])
                fires_at = datetime.fromisoformat(pending["fires_at"])
                if now - fires_at > self._grace:
                    log.warning("schedule %s: tick %s is overdue; applying the missed-run policy", schedule_id, due)
                    self.on_trigger(schedule_id, due)
                elif fires_at > now and not self._jobs.exists(pending["job"]):
                    self._arm(schedule_id, after=now)
            except Exception:
                log.exception("schedule %s: reconciliation failed; next pass retries", schedule_id)

    # -- internals --------------------------------------------------------------------------------

    def _update(self, schedule_id: str, change: Any) -> dict[str, Any] | None:
        def apply(current: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if current is None else change(current)

        result: dict[str, Any] | None = None
        if self._platform.get_json(schedule_key(schedule_id)) is not None:
            result = self._platform.update_json(schedule_key(schedule_id), apply)
        return result

    def _arm(self, schedule_id: str, *, after: datetime) -> None:
        """Schedules the job of the first tick after ``after`` (idempotent: same tick, same job)."""
        state = self._platform.get_json(schedule_key(schedule_id))
        if state is None or state["paused"]:
            return
        spec = ScheduleSpec.model_validate(state["spec"])
        due = timing.next_due(spec.schedule, spec.time_zone, datetime.fromisoformat(state["anchor"]), after)
        pending = state.get("pending")
        if pending is not None and datetime.fromisoformat(pending["due"]) >= due:
            return  # already armed for this tick (or a later one)
        fires_at = due + timing.jitter_offset(schedule_id, due, spec.jitter_seconds)
        name = job_name(schedule_id, due)
        self._jobs.schedule_once(name, fires_at, {"schedule_id": schedule_id, "due": due.isoformat()})
        armed = {"due": due.isoformat(), "fires_at": fires_at.isoformat(), "job": name}

        def advance(current: dict[str, Any]) -> dict[str, Any]:
            old = current.get("pending")
            if old is not None and datetime.fromisoformat(old["due"]) >= due:
                return current
            return {**current, "pending": armed}

        if self._update(schedule_id, advance) is None or self._platform.get_json(schedule_key(schedule_id)) is None:
            self._jobs.delete(name)  # deleted meanwhile: leave no job behind

    def _cancel_pending(self, state: dict[str, Any]) -> None:
        if state.get("pending"):
            self._jobs.delete(state["pending"]["job"])

    def _claim(self, schedule_id: str, due: datetime, outcome: Outcome) -> bool:
        """Records the tick's outcome unless a record exists: true for exactly one caller per tick."""
        won: list[bool] = []
        record = TickRecord(
            due=due.isoformat(),
            outcome=outcome,
            run_id=run_id_for(schedule_id, due) if outcome in ("started", "started_from_queue") else None,
            at=self._now().isoformat(),
        ).model_dump(mode="json")

        def claim(state: dict[str, Any]) -> dict[str, Any]:
            won.clear()
            same_tick = [t for t in state["history"] if t["due"] == record["due"]]
            if outcome == "started_from_queue":
                same_tick = [t for t in same_tick if t["outcome"] != "queued"]
            if same_tick:
                won.append(False)
                return state
            won.append(True)
            history = [record, *state["history"]][:HISTORY_SIZE]
            queued_due = record["due"] if outcome == "queued" else state.get("queued_due")
            return {**state, "history": history, "queued_due": queued_due}

        return self._update(schedule_id, claim) is not None and bool(won and won[0])

    def _request(self, spec: ScheduleSpec, run_id: str | None = None) -> RunRequest:
        return RunRequest(
            request_id=run_id,
            connection=spec.connection,
            database=spec.database,
            filters=spec.filters,
            stage_timeout_seconds=spec.stage_timeout_seconds,
        )

    def _resolve(self, spec: ScheduleSpec, run_id: str | None = None) -> Any:
        request = self._request(spec, run_id)
        return self._sources.resolve(
            connection=request.connection, source=None, database=request.database, filters=request.filters
        )

    def _start(self, spec: ScheduleSpec, schedule_id: str, due: datetime) -> None:
        run_id = run_id_for(schedule_id, due)
        # Resolved at each tick: a connection changed (or deleted) by an admin applies to the next run.
        try:
            resolved = self._resolve(spec, run_id)
        except InvalidRequestError as exc:  # the tick fails visibly; the schedule keeps ticking
            reason = str(exc)
            log.error("schedule %s: tick %s started nothing: %s", schedule_id, due.isoformat(), reason)

            def failed(state: dict[str, Any]) -> dict[str, Any]:
                history = [
                    {**t, "status": "FAILED", "error": reason} if t.get("run_id") == run_id else t
                    for t in state["history"]
                ]
                return {**state, "history": history}

            self._update(schedule_id, failed)
            return
        self._runs.submit(self._request(spec, run_id), resolved, f"schedule:{schedule_id}")
        log.info("schedule %s: tick %s started run %s", schedule_id, due.isoformat(), run_id)

    def _active_run(self, state: dict[str, Any]) -> str | None:
        """The schedule's newest run, if it has not ended (its ``extraction.completed`` sets its status)."""
        tick = next((t for t in state["history"] if t.get("run_id")), None)
        if tick is None or tick.get("status") is not None:
            return None
        view = self._runs.view(tick["run_id"])
        if view is not None:
            return str(tick["run_id"]) if view.status in ACTIVE_STATUSES else None
        # Not known to the run service: just published (active), or long gone (its workflow purged by gc).
        recent = self._now() - datetime.fromisoformat(tick["at"]) < timedelta(minutes=10)
        return str(tick["run_id"]) if recent else None

    def _view(self, schedule_id: str) -> ScheduleView:
        state = self._platform.get_json(schedule_key(schedule_id))
        assert state is not None
        last_runs = [TickRecord.model_validate(t) for t in state["history"][:10]]
        for tick in last_runs:
            if tick.run_id and tick.status is None:
                view = self._runs.view(tick.run_id)
                tick.status = view.status if view else "QUEUED"
                tick.error = view.error if view else None
        pending = state.get("pending")
        return ScheduleView(
            schedule_id=schedule_id,
            spec=ScheduleSpec.model_validate(state["spec"]),
            paused=state["paused"],
            created_at=state["created_at"],
            created_by=state.get("created_by"),
            next_due=None if state["paused"] or not pending else pending["fires_at"],
            pending_job=None if state["paused"] or not pending else pending["job"],
            queued_due=state.get("queued_due"),
            last_runs=last_runs,
        )


class ScheduleConflictError(Exception):
    """A schedule id reused with a different definition."""

    code = "schedule_conflict"


def _derived_id(spec: ScheduleSpec) -> str:
    import hashlib

    digest = hashlib.sha256(spec.model_dump_json(exclude={"schedule_id", "paused"}).encode()).hexdigest()
    return f"{spec.connection[:30]}-{digest[:10]}"


# -- FastAPI wiring ---------------------------------------------------------------------------------


def schedules_of(request: Request) -> ScheduleService:
    service: ScheduleService = request.app.state.schedules
    return service


Schedules = Annotated[ScheduleService, Depends(schedules_of)]
router = APIRouter(tags=["schedules"])
# Viewers read schedules; operators (who may start runs) create, pause, resume and delete them.
ScheduleReader = Annotated[Principal, Depends(require(Role.VIEWER, "schedules.read"))]
ScheduleWriter = Annotated[Principal, Depends(require(Role.OPERATOR, "schedules.manage"))]


def _audit(
    request: Request, action: str, caller: Principal, schedule_id: str | None, done: bool, reason: str | None = None
) -> None:
    audit: AuditLog = request.app.state.audit
    outcome = AuditOutcome.ALLOWED if done else AuditOutcome.FAILED
    audit.record(action, caller, client_address(request), outcome, target=f"schedule {schedule_id}", reason=reason)


def _found(view: ScheduleView | None, schedule_id: str) -> ScheduleView:
    if view is None:
        raise HTTPException(status_code=404, detail=f"no schedule with id {schedule_id!r}")
    return view


@router.post("/schedules", status_code=status.HTTP_201_CREATED)
async def create_schedule(
    body: ScheduleSpec, schedules: Schedules, caller: ScheduleWriter, request: Request
) -> ScheduleView:
    """Creates a schedule (idempotent for an identical body; 409 when the id exists with another body)."""
    try:
        view = await run_in_threadpool(schedules.create, body, caller.name)
    except ScheduleConflictError as exc:
        _audit(request, "schedule.create", caller, body.schedule_id, False, exc.code)
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    except InvalidRequestError as exc:
        _audit(request, "schedule.create", caller, body.schedule_id, False, str(exc))
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    _audit(request, "schedule.create", caller, view.schedule_id, True)
    return view


@router.get("/schedules")
async def list_schedules(schedules: Schedules, _: ScheduleReader) -> list[ScheduleView]:
    return await run_in_threadpool(schedules.list)


@router.get("/schedules/{schedule_id}")
async def get_schedule(schedule_id: str, schedules: Schedules, _: ScheduleReader) -> ScheduleView:
    """The definition, the next due time and the last runs with their outcomes."""
    return _found(await run_in_threadpool(schedules.get, schedule_id), schedule_id)


@router.post("/schedules/{schedule_id}/pause")
async def pause_schedule(
    schedule_id: str, schedules: Schedules, caller: ScheduleWriter, request: Request
) -> ScheduleView:
    view = await run_in_threadpool(schedules.pause, schedule_id)
    _audit(request, "schedule.pause", caller, schedule_id, view is not None, None if view else "no such schedule")
    return _found(view, schedule_id)


@router.post("/schedules/{schedule_id}/resume")
async def resume_schedule(
    schedule_id: str, schedules: Schedules, caller: ScheduleWriter, request: Request
) -> ScheduleView:
    view = await run_in_threadpool(schedules.resume, schedule_id)
    _audit(request, "schedule.resume", caller, schedule_id, view is not None, None if view else "no such schedule")
    return _found(view, schedule_id)


@router.delete("/schedules/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_schedule(schedule_id: str, schedules: Schedules, caller: ScheduleWriter, request: Request) -> None:
    deleted = await run_in_threadpool(schedules.delete, schedule_id)
    _audit(request, "schedule.delete", caller, schedule_id, deleted, None if deleted else "no such schedule")
    if not deleted:
        raise HTTPException(status_code=404, detail=f"no schedule with id {schedule_id!r}")


class JobTrigger(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schedule_id: ScheduleId
    due: datetime


@router.post("/job/{name}", include_in_schema=False)
async def on_job_triggered(
    name: str, request: Request, schedules: Schedules, body: Annotated[Any, Body()] = None
) -> dict[str, str]:
    """Called by our sidecar when a job fires (daprd posts the job's data to ``/job/<name>``)."""
    if name == GC_JOB:
        report = await run_in_threadpool(request.app.state.retention.collect, dry_run=False)
        log.info("gc: %d run folders, %d files, %d workflows", len(report.runs), report.files, len(report.workflows))
        return {"status": "collected"}
    try:
        trigger = JobTrigger.model_validate(body)
    except ValueError:
        log.error("job %s: unexpected trigger payload; dropped", name)
        return {"status": "dropped"}
    outcome = await run_in_threadpool(schedules.on_trigger, trigger.schedule_id, trigger.due)
    return {"status": outcome or "ignored"}


def install_schedules(app: FastAPI, settings: OrchestratorSettings) -> None:
    """Adds schedules and retention: routes, the job trigger, the run-finished subscription, their lifespan."""
    app.include_router(router)
    app.include_router(retention_router)
    app.add_exception_handler(RequestValidationError, _validation_error_without_input)

    def on_extraction_completed(event: ExtractionCompleted) -> None:
        app.state.schedules.on_run_finished(event)
        app.state.retention.record_finished(event)
        for listener in getattr(app.state, "run_finished_listeners", []):  # e.g. the console's index
            listener(event)

    register_subscription(
        app,
        pubsub=settings.pubsub_name,
        topic=TopicName.EXTRACTION_COMPLETED,
        model=ExtractionCompleted,
        handler=on_extraction_completed,
    )
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            from dapr.ext.workflow import DaprWorkflowClient

            platform = DaprPlatform(settings)
            jobs = ScheduleJobs(settings)
            objects = ObjectStore(settings)
            workflows = DaprWorkflowClient(host=settings.dapr_host, port=str(settings.dapr_grpc_port))
            trace_workflow_calls(workflows)
            app.state.schedules = ScheduleService(platform, jobs, app.state.runs, settings, app.state.source_policy)
            app.state.retention = RetentionService(platform, objects, workflows, settings)
            if settings.retention_gc_every:
                jobs.schedule_recurring(GC_JOB, settings.retention_gc_every)
            stop = threading.Event()
            reconciler = threading.Thread(
                target=_reconcile_loop,
                args=(app.state.schedules, stop, settings.schedule_reconcile_seconds),
                name="pgmeta-schedules",
                daemon=True,
            )
            reconciler.start()
            try:
                yield state
            finally:
                stop.set()
                reconciler.join(timeout=5)
                objects.close()
                jobs.close()
                platform.close()

    app.router.lifespan_context = lifespan


async def _validation_error_without_input(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 echoes the offending input; a body may hold a password (a schedule refuses one, ``POST
    /runs`` takes one), so the answer names the problem and its place, never the value."""
    assert isinstance(exc, RequestValidationError)
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


def _reconcile_loop(service: ScheduleService, stop: threading.Event, every: float) -> None:
    # The first pass runs at start-up: it is what applies the missed-run policy after downtime.
    while not stop.is_set():
        try:
            service.reconcile()
        except Exception:
            log.exception("schedule reconciliation failed")
        stop.wait(every)
