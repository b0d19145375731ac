"""Runs as users see them: started from events, read back from the Dapr Workflow runtime."""

from __future__ import annotations

import contextvars
import json
import logging
import math
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, Self

import grpc
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from pgmeta_orchestrator.connections import ConnectionName, ResolvedSource
from pgmeta_orchestrator.request_ids import RequestIdConflictError, new_request_record, same_request
from pgmeta_orchestrator.run_endings import RunEndings
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_orchestrator.workflow import WORKFLOW_NAME
from pgmeta_shared.errors import InvalidRequestError
from pgmeta_shared.events import (
    CredentialRef,
    DatabaseName,
    ExtractionProgress,
    ExtractionRequested,
    FilterSpec,
    MetadataRequested,
    PreflightRequested,
    RunId,
    SourceSpec,
    Stage,
    TopicName,
)
from pgmeta_shared.keys import (
    RUNS_INDEX_KEY,
    credentials_key,
    metadata_answer_key,
    run_fence_key,
    run_progress_key,
    run_requested_key,
    stage_failure_key,
    stage_result_key,
)
from pgmeta_shared.platform import Platform

log = logging.getLogger(__name__)

RunStatus = Literal["QUEUED", "RUNNING", "COMPLETED", "FAILED"]
Question = Literal["preflight", "databases", "schemas"]


class SourceChoice(BaseModel):
    """A registered connection by name, or an ad-hoc source with its password inline. Never a stored secret
    by name, nor a connection qualifiedName: the server derives both from what the caller may use."""

    model_config = ConfigDict(extra="forbid")

    connection: ConnectionName | None = Field(default=None, description="A registered connection (GET /connections).")
    source: SourceSpec | None = Field(default=None, description="Ad hoc: a host the allowlist admits.")
    password: SecretStr | None = Field(
        default=None,
        max_length=1024,
        description="Ad hoc only. Stored encrypted by Dapr for the run's lifetime; never put in an event.",
    )
    database: DatabaseName | None = Field(
        default=None, description="With a connection registered for all databases: the one to use."
    )
    filters: FilterSpec | None = Field(default=None, description="Default: the connection's filters, or everything.")

    @model_validator(mode="after")
    def _connection_or_source(self) -> Self:
        if (self.connection is None) == (self.source is None):
            raise ValueError("give exactly one of 'connection' and 'source'")
        if self.connection is not None and self.password is not None:
            raise ValueError("a registered connection brings its own credentials: leave 'password' out")
        if self.source is not None and self.password is None:
            raise ValueError("an ad-hoc source needs its 'password' inline")
        return self


class RunRequest(SourceChoice):
    """Body of ``POST /runs``."""

    request_id: RunId | None = Field(default=None, description="Idempotency key; generated when absent.")
    stage_timeout_seconds: int = Field(default=900, ge=5, le=86_400)
    full: bool = Field(default=False, description="Read every schema, even those unchanged since the last run.")


class SourceRequest(SourceChoice):
    """Body of ``POST /preflight`` and ``POST /metadata/...``."""


class MetadataQuery(BaseModel):
    """Query parameters of ``GET /metadata/...``: a registered connection (a GET never carries a password)."""

    connection: ConnectionName
    database: DatabaseName | None = None

    def as_request(self) -> SourceRequest:
        return SourceRequest(connection=self.connection, database=self.database)


class RunView(BaseModel):
    run_id: str
    status: RunStatus
    stage: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)
    location: str | None = None
    output: str | None = None
    error: str | None = None
    progress: dict[str, Any] | None = None
    created_at: str | None = None
    updated_at: str | None = None
    changes: dict[str, int] = Field(
        default_factory=dict, description="Entities created / updated / unchanged / deleted since the last run."
    )
    schemas: dict[str, int] = Field(
        default_factory=dict, description="Schemas 'extracted' from the catalog and 'skipped' as unchanged."
    )
    source: dict[str, Any] | None = Field(default=None, description="host, port and database of the request.")
    duration_seconds: float | None = Field(default=None, description="From the run's start to its last update.")
    started_by: str | None = Field(default=None, description="The API caller who started the run.")
    workflow_version: str | None = Field(
        default=None, description="The workflow version the run started on, and finishes on."
    )


# Once this process ran a run's last activity, the workflow completes within moments: its state is read this often.
ENDING_POLL_SECONDS = 0.02
ENDING_POLL_LIMIT_SECONDS = 3.0


class RunService:
    """Starts runs (idempotently) and reports them; the workflow runtime holds the truth."""

    def __init__(
        self, platform: Platform, workflows: Any, settings: OrchestratorSettings, endings: RunEndings | None = None
    ) -> None:
        self._platform = platform
        self._workflows = workflows
        self._settings = settings
        self._endings = endings or RunEndings()

    @property
    def platform(self) -> Platform:
        return self._platform

    @property
    def workflows(self) -> Any:
        return self._workflows

    @property
    def settings(self) -> OrchestratorSettings:
        return self._settings

    # -- starting ---------------------------------------------------------------------------------

    def _credentials(
        self, request_id: str, password: SecretStr | None, credentials: CredentialRef | None, ttl_seconds: int
    ) -> CredentialRef:
        """A reference to the credentials: an inline password is stored encrypted (by Dapr) under the id."""
        if password is None:
            assert credentials is not None
            return credentials
        key = credentials_key(request_id)
        self._platform.save_state_json(
            self._settings.credentials_store, key, {"password": password.get_secret_value()}, ttl_seconds=ttl_seconds
        )
        return CredentialRef(kind="state", store=self._settings.credentials_store, key=key)

    def submit(self, body: RunRequest, resolved: ResolvedSource, started_by: str | None = None) -> str:
        """Stores an inline password encrypted, then publishes ``extraction.requested``.

        A request id already taken: the same request returns its run, storing nothing (it must not replace
        the password its run is using); a different one raises RequestIdConflictError.
        """
        run_id = body.request_id or f"run-{uuid.uuid4().hex[:12]}"
        request = body.model_dump(mode="json", exclude={"password", "request_id"})
        if self._request_id_taken(run_id, request, body.password, started_by):
            log.info("run %s: already requested; nothing stored, nothing published", run_id)
            return run_id
        credentials = self._credentials(run_id, body.password, resolved.secret, self._settings.credentials_ttl_seconds)
        event = ExtractionRequested(
            request_id=run_id,
            source=resolved.source,
            credentials=credentials,
            connection_qualified_name=resolved.connection_qualified_name,
            filters=resolved.filters,
            stage_timeout_seconds=body.stage_timeout_seconds,
            full=body.full,
        )
        self._platform.publish(TopicName.EXTRACTION_REQUESTED, event)
        return run_id

    def _request_id_taken(
        self, run_id: str, request: dict[str, Any], password: SecretStr | None, started_by: str | None
    ) -> bool:
        """True when ``run_id`` already runs this very request; records the request (and who made it) when the
        id is new."""
        record = self._platform.get_json(run_requested_key(run_id))
        if record is None and not self.has_workflow(run_id):
            self._platform.save_json(
                run_requested_key(run_id), {**new_request_record(request, password, _now()), "by": started_by}
            )
            return False
        if record is not None and same_request(record, request, password):
            return True
        view = self.view(run_id)
        state = f" ({view.status.lower()}{': ' + view.error if view and view.error else ''})" if view else ""
        raise RequestIdConflictError(
            f"request id {run_id!r} is already used by run {run_id!r}{state} for a different request "
            "(other source, filters, options or password); use another request id"
        )

    def start(self, event: ExtractionRequested) -> None:
        """Handles ``extraction.requested``: one workflow per request id, duplicates acknowledged."""
        run_id = event.request_id
        if self.has_workflow(run_id):
            log.info("run %s: duplicate extraction.requested, a run already exists", run_id)
            return
        if event.credentials.kind == "state" and event.credentials.store != self._settings.credentials_store:
            raise InvalidRequestError(f"state credentials must live in store {self._settings.credentials_store!r}")
        try:
            self._workflows.schedule_new_workflow(
                WORKFLOW_NAME, input=event.model_dump(mode="json"), instance_id=run_id
            )
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.ALREADY_EXISTS or "already exists" in str(exc).lower():
                log.info("run %s: lost a race to a duplicate request; nothing to do", run_id)
                return
            raise
        self._remember(run_id)
        log.info(
            "run %s: workflow scheduled for %s:%s/%s",
            run_id,
            event.source.host,
            event.source.port,
            event.source.database,
        )

    def _remember(self, run_id: str) -> None:
        def add(index: list[dict[str, str]] | None) -> list[dict[str, str]]:
            entries = index or []
            if any(entry["run_id"] == run_id for entry in entries):
                return entries
            return [{"run_id": run_id, "created_at": _now()}, *entries][: self._settings.runs_index_size]

        self._platform.update_json(RUNS_INDEX_KEY, add)

    # -- questions answered by the extractor (preflight, metadata) --------------------------------

    def ask_extractor(self, body: SourceRequest, resolved: ResolvedSource, kind: Question) -> dict[str, Any]:
        """Publishes a command and polls the artifacts store for the answer (any orchestrator replica can)."""
        request_id = f"{'pf' if kind == 'preflight' else 'md'}-{uuid.uuid4().hex[:16]}"
        credentials = self._credentials(request_id, body.password, resolved.secret, 600)
        try:
            command: Any
            if kind == "preflight":
                command = PreflightRequested(
                    run_id=request_id, source=resolved.source, credentials=credentials, filters=resolved.filters
                )
                self._platform.publish(TopicName.PREFLIGHT_REQUESTED, command)
                answer_keys = [
                    stage_result_key(request_id, Stage.PREFLIGHT),
                    stage_failure_key(request_id, Stage.PREFLIGHT, None),
                ]
            else:
                command = MetadataRequested(
                    run_id=request_id, source=resolved.source, credentials=credentials, listing=kind
                )
                self._platform.publish(TopicName.METADATA_REQUESTED, command)
                answer_keys = [metadata_answer_key(request_id)]
            deadline = time.monotonic() + self._settings.question_timeout_seconds
            while time.monotonic() < deadline:
                for key in answer_keys:
                    answer = self._platform.get_json(key)
                    if answer is not None:
                        return _as_answer(answer)
                time.sleep(0.1)
            waited = self._settings.question_timeout_seconds
            return {"ok": False, "error_code": "timeout", "error": f"no answer from the extractor within {waited} s"}
        finally:
            if body.password is not None:
                self._platform.delete_state(credentials.store, credentials.key)

    # -- stage outcomes ---------------------------------------------------------------------------

    def raise_stage_event(self, run_id: str, event_name: str, payload: dict[str, Any]) -> None:
        try:
            self._workflows.raise_workflow_event(run_id, event_name, data=payload)
        except grpc.RpcError as exc:
            # daprd answers UNKNOWN ("no such instance exists") for a workflow it never had — e.g. the outcome of
            # a POST /preflight question, which is no run: ask the runtime rather than read the message.
            if exc.code() == grpc.StatusCode.NOT_FOUND or self._workflow_state(run_id) is None:
                log.info("run %s: no workflow to receive %s; ignored", run_id, event_name)
                return
            raise

    def record_progress(self, progress: ExtractionProgress) -> None:
        self._platform.save_json(run_progress_key(progress.run_id), progress.model_dump(mode="json"))

    # -- reading ----------------------------------------------------------------------------------

    def has_workflow(self, run_id: str) -> bool:
        """True when the runtime holds a workflow for ``run_id`` (whatever its status)."""
        return self._workflow_state(run_id, fetch_payloads=False) is not None

    def _workflow_state(self, run_id: str, fetch_payloads: bool = True) -> Any:
        return read_workflow_state(self._workflows, run_id, fetch_payloads)

    def view(self, run_id: str) -> RunView | None:
        state = self._workflow_state(run_id)
        requested = self._platform.get_json(run_requested_key(run_id))
        started_by = requested.get("by") if isinstance(requested, dict) else None
        if state is None:
            fence = self._platform.get_json(run_fence_key(run_id))
            if fence is not None and fence["status"] in {"FAILED", "CANCELLED"}:  # never became a workflow
                return RunView(run_id=run_id, status="FAILED", error=fence.get("reason"), started_by=started_by)
            if requested is not None:
                return RunView(run_id=run_id, status="QUEUED", started_by=started_by)
            return None
        runtime = state.runtime_status.name
        custom = _loads(state.serialized_custom_status) or {}
        view = RunView(
            run_id=run_id,
            status="RUNNING",
            stage=custom.get("stage"),
            counts=custom.get("counts") or {},
            created_at=_iso(state.created_at),
            updated_at=_iso(state.last_updated_at),
            source=_source_of(_loads(getattr(state, "serialized_input", None))),
            duration_seconds=_seconds_between(state.created_at, state.last_updated_at),
            started_by=started_by,
            workflow_version=custom.get("workflow_version"),
        )
        if runtime == "COMPLETED":
            output = _loads(state.serialized_output) or {}
            view.status = "COMPLETED"
            view.counts = output.get("counts", view.counts)
            view.location = output.get("location")
            view.changes = output.get("changes") or {}
            view.schemas = output.get("schemas") or {}
            view.output = self._local_path(view.location)
        elif runtime in {"FAILED", "TERMINATED"}:
            view.status = "FAILED"
            details = state.failure_details
            view.error = custom.get("error") or (details.message if details else f"workflow {runtime.lower()}")
            if runtime == "TERMINATED":  # cancelled: the fence says why
                view.error = (self._platform.get_json(run_fence_key(run_id)) or {}).get("reason") or view.error
        elif runtime == "PENDING":
            view.status = "QUEUED"
        view.progress = self._platform.get_json(run_progress_key(run_id))
        return view

    def request_of(self, run_id: str) -> dict[str, Any] | None:
        """What the run was asked to do (source, connection, filters), as the workflow got it; no credentials."""
        state = self._workflow_state(run_id)
        request = _loads(state.serialized_input) if state is not None else None
        if not isinstance(request, dict):
            return None
        return {k: request.get(k) for k in ("source", "connection_qualified_name", "filters")}

    def wait(self, run_id: str, seconds: float) -> RunView | None:
        """The run's view once it has ended, or after ``seconds``, whichever comes first (a long poll).

        The workflow runtime tells of the end itself (WaitForInstanceCompletion), so a waiting client learns
        of it without polling; when the run's last activity ran in this process (``RunEndings``), at once. Until
        the workflow exists the request id is checked briefly.
        """
        deadline = time.monotonic() + seconds
        while True:
            view = self.view(run_id)
            remaining = deadline - time.monotonic()
            if view is None or view.status in {"COMPLETED", "FAILED"} or remaining <= 0:
                return view
            if view.status == "QUEUED" and view.created_at is None:  # no workflow yet: it is being scheduled
                time.sleep(min(0.05, remaining))
                continue
            if not self._wait_for_end(run_id, remaining):
                return self.view(run_id)  # still running when the wait ran out: the caller asks again
            if not self._until_terminal(run_id, min(remaining, ENDING_POLL_LIMIT_SECONDS)):
                # Marked ended here, yet running: retried under the same id (POST /runs/{id}/retry). From now on
                # daprd tells of its end.
                self._endings.forget(run_id)

    def _wait_for_end(self, run_id: str, seconds: float) -> bool:
        """True once the run's workflow has ended (daprd says so) or is about to (its last activity ran here)."""
        woken = threading.Event()
        answer: list[bool | Exception] = []

        def ask_daprd() -> None:
            try:
                answer.append(self._daprd_wait(run_id, seconds))
            except Exception as exc:  # handed to the request's thread, which raises it as before
                answer.append(exc)
            finally:
                woken.set()

        with self._endings.watch(run_id, woken):
            if woken.is_set():
                return True
            # A daemon thread: a long poll in flight never holds up the orchestrator's exit. In the request's
            # context, so daprd's spans stay under the request that waited.
            context = contextvars.copy_context()
            threading.Thread(target=context.run, args=(ask_daprd,), name="pgmeta-run-wait", daemon=True).start()
            if not woken.wait(seconds):
                return False
        if answer and isinstance(answer[0], Exception):
            raise answer[0]
        return not answer or answer[0] is True  # no answer yet: woken by the run's end here

    def _daprd_wait(self, run_id: str, seconds: float) -> bool:
        try:
            self._workflows.wait_for_workflow_completion(
                run_id, fetch_payloads=False, timeout_in_seconds=max(1, math.ceil(seconds))
            )
        except TimeoutError:
            return False
        return True

    def _until_terminal(self, run_id: str, seconds: float) -> bool:
        """Reads the workflow's status (no payloads) until it is terminal (True), for at most ``seconds``."""
        deadline = time.monotonic() + seconds
        while True:
            state = self._workflow_state(run_id, fetch_payloads=False)
            if state is None or state.runtime_status.name in {"COMPLETED", "FAILED", "TERMINATED"}:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(ENDING_POLL_SECONDS)

    def recent(self, limit: int) -> list[RunView]:
        index: list[dict[str, str]] = self._platform.get_json(RUNS_INDEX_KEY) or []
        views = [self.view(entry["run_id"]) for entry in index[:limit]]
        return [v for v in views if v is not None]

    def _local_path(self, location: str | None) -> str | None:
        if location is None:
            return None
        root = self._settings.objectstore_local_root
        return f"{root.rstrip('/')}/{location}" if root else f"objectstore:{location}"


def read_workflow_state(workflows: Any, run_id: str, fetch_payloads: bool = True) -> Any:
    """A workflow's state, or None. daprd reads a workflow's metadata and inbox keys without a snapshot, so a
    read that races its own save fails as UNKNOWN ("inbox key ... missing from state store"): retried."""
    for attempt in range(5):
        try:
            return workflows.get_workflow_state(run_id, fetch_payloads=fetch_payloads)
        except grpc.RpcError as exc:
            if exc.code() not in {grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE} or attempt == 4:
                raise
            time.sleep(0.05 * (attempt + 1))
    return None


def _as_answer(answer: dict[str, Any]) -> dict[str, Any]:
    if "error_code" in answer and "stage" in answer:  # a StageFailed event
        return {"ok": False, "error_code": answer["error_code"], "error": answer["error"]}
    if "ok" in answer:
        return answer
    return {"ok": True, **answer}


def _loads(text: str | None) -> Any:
    if not text:
        return None
    value: Any = text
    # The SDK JSON-encodes custom status and output; a string we encoded ourselves is encoded twice.
    for _ in range(2):
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value


def _source_of(request: Any) -> dict[str, Any] | None:
    source = request.get("source") if isinstance(request, dict) else None
    if not isinstance(source, dict):
        return None
    return {key: source.get(key) for key in ("host", "port", "database")}


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 3) if start and end else None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _now() -> str:
    return datetime.now(UTC).isoformat()
