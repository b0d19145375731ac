"""Runs as users see them: started from events, read back from the Dapr Workflow runtime."""

from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal, Self

import grpc
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from pgmeta_orchestrator.connections import ConnectionName, ResolvedSource
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
    started_by: str | None = Field(default=None, description="The API caller who started the run.")


class RunService:
    """Starts runs (idempotently) and reports them; the workflow runtime holds the truth."""

    def __init__(self, platform: Platform, workflows: Any, settings: OrchestratorSettings) -> None:
        self._platform = platform
        self._workflows = workflows
        self._settings = settings

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
        """Stores an inline password encrypted, then publishes ``extraction.requested``."""
        run_id = body.request_id or f"run-{uuid.uuid4().hex[:12]}"
        if self._platform.get_json(run_requested_key(run_id)) is not None:
            # A repeat of a known id starts nothing, and must not replace the password its run is using.
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
        )
        self._platform.publish(TopicName.EXTRACTION_REQUESTED, event)
        self._platform.save_json(run_requested_key(run_id), {"at": _now(), "by": started_by}, ttl_seconds=7 * 24 * 3600)
        return run_id

    def start(self, event: ExtractionRequested) -> None:
        """Handles ``extraction.requested``: one workflow per request id, duplicates acknowledged."""
        run_id = event.request_id
        if self._workflows.get_workflow_state(run_id, fetch_payloads=False) is not None:
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
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                log.warning("run %s: no workflow to receive %s; ignored", run_id, event_name)
                return
            raise

    def record_progress(self, progress: ExtractionProgress) -> None:
        self._platform.save_json(
            run_progress_key(progress.run_id), progress.model_dump(mode="json"), ttl_seconds=86_400
        )

    # -- reading ----------------------------------------------------------------------------------

    def _workflow_state(self, run_id: str) -> Any:
        """The workflow's state; a read that races the runtime's own save (seen as UNKNOWN) is retried."""
        for attempt in range(5):
            try:
                return self._workflows.get_workflow_state(run_id, fetch_payloads=True)
            except grpc.RpcError as exc:
                if exc.code() not in {grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE} or attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        return None

    def cancel(self, run_id: str) -> bool:
        """Terminates the run's workflow; False when there is none."""
        if self._workflow_state(run_id) is None:
            return False
        self._workflows.terminate_workflow(run_id)
        return True

    def view(self, run_id: str) -> RunView | None:
        state = self._workflow_state(run_id)
        requested = self._platform.get_json(run_requested_key(run_id))
        started_by = requested.get("by") if isinstance(requested, dict) else None
        if state is None:
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
            started_by=started_by,
        )
        if runtime == "COMPLETED":
            output = _loads(state.serialized_output) or {}
            view.status = "COMPLETED"
            view.counts = output.get("counts", view.counts)
            view.location = output.get("location")
            view.output = self._local_path(view.location)
        elif runtime in {"FAILED", "TERMINATED"}:
            view.status = "FAILED"
            details = state.failure_details
            view.error = custom.get("error") or (details.message if details else f"workflow {runtime.lower()}")
        elif runtime == "PENDING":
            view.status = "QUEUED"
        view.progress = self._platform.get_json(run_progress_key(run_id))
        return view

    def recent(self, limit: int) -> list[RunView]:
        index: list[dict[str, str]] = self._platform.get_json(RUNS_INDEX_KEY) or []
        views = [self.view(entry["run_id"]) for entry in index[:limit]]
        return [v for v in views if v is not None]

    def _local_path(self, location: str | None) -> str | None:
        if location is None:
            return None
        root = self._settings.objectstore_local_root
        return f"{root.rstrip('/')}/{location}" if root else f"objectstore:{location}"


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


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _now() -> str:
    return datetime.now(UTC).isoformat()
