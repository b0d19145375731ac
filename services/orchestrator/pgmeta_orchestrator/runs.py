"""Runs as users see them: started from events, read back from the Dapr Workflow runtime."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import grpc
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_orchestrator.workflow import WORKFLOW_NAME
from pgmeta_shared.errors import InvalidRequestError
from pgmeta_shared.events import (
    ConnectionQualifiedName,
    CredentialRef,
    ExtractionProgress,
    ExtractionRequested,
    RunId,
    SourceSpec,
    TopicName,
)
from pgmeta_shared.platform import Platform

log = logging.getLogger(__name__)

RunStatus = Literal["QUEUED", "RUNNING", "COMPLETED", "FAILED"]
INDEX_KEY = "runs/index"


def progress_key(run_id: str) -> str:
    return f"{run_id}/progress"


class RunRequest(BaseModel):
    """Body of ``POST /runs``: the event's fields, with the password given inline or by reference."""

    model_config = ConfigDict(extra="forbid")

    request_id: RunId | None = Field(default=None, description="Idempotency key; generated when absent.")
    source: SourceSpec
    password: SecretStr | None = Field(
        default=None, description="Stored encrypted by Dapr for the run's lifetime; never put in an event."
    )
    credentials: CredentialRef | None = Field(default=None, description="Reference to an existing secret.")
    connection_qualified_name: ConnectionQualifiedName | None = None
    stage_timeout_seconds: int = Field(default=900, ge=5, le=86_400)

    @model_validator(mode="after")
    def _one_credential(self) -> RunRequest:
        if (self.password is None) == (self.credentials is None):
            raise ValueError("give exactly one of 'password' and 'credentials'")
        return self


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


class RunService:
    """Starts runs (idempotently) and reports them; the workflow runtime holds the truth."""

    def __init__(self, platform: Platform, workflows: Any, settings: OrchestratorSettings) -> None:
        self._platform = platform
        self._workflows = workflows
        self._settings = settings

    # -- starting ---------------------------------------------------------------------------------

    def submit(self, body: RunRequest) -> str:
        """Stores an inline password encrypted, then publishes ``extraction.requested``."""
        run_id = body.request_id or f"run-{uuid.uuid4().hex[:12]}"
        credentials = body.credentials
        if body.password is not None:
            key = f"cred/{run_id}"
            self._platform.save_state_json(
                self._settings.credentials_store,
                key,
                {"password": body.password.get_secret_value()},
                ttl_seconds=self._settings.credentials_ttl_seconds,
            )
            credentials = CredentialRef(kind="state", store=self._settings.credentials_store, key=key)
        assert credentials is not None
        event = ExtractionRequested(
            request_id=run_id,
            source=body.source,
            credentials=credentials,
            connection_qualified_name=body.connection_qualified_name,
            stage_timeout_seconds=body.stage_timeout_seconds,
        )
        self._platform.publish(TopicName.EXTRACTION_REQUESTED, event)
        self._platform.save_json(f"{run_id}/requested", {"at": _now()}, ttl_seconds=7 * 24 * 3600)
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

        self._platform.update_json(INDEX_KEY, add)

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
        self._platform.save_json(progress_key(progress.run_id), progress.model_dump(mode="json"), ttl_seconds=86_400)

    # -- reading ----------------------------------------------------------------------------------

    def view(self, run_id: str) -> RunView | None:
        state = self._workflows.get_workflow_state(run_id, fetch_payloads=True)
        if state is None:
            if self._platform.get_json(f"{run_id}/requested") is not None:
                return RunView(run_id=run_id, status="QUEUED")
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
        view.progress = self._platform.get_json(progress_key(run_id))
        return view

    def recent(self, limit: int) -> list[RunView]:
        index: list[dict[str, str]] = self._platform.get_json(INDEX_KEY) or []
        views = [self.view(entry["run_id"]) for entry in index[:limit]]
        return [v for v in views if v is not None]

    def _local_path(self, location: str | None) -> str | None:
        if location is None:
            return None
        root = self._settings.objectstore_local_root
        return f"{root.rstrip('/')}/{location}" if root else f"objectstore:{location}"


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
