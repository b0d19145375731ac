"""Orchestrator settings."""

from __future__ import annotations

from pydantic import Field

from pgmeta_shared.settings import DaprSettings


class OrchestratorSettings(DaprSettings):
    credentials_store: str = Field(
        default="credentials",
        description="State store (with Dapr state encryption) for passwords given to the REST API.",
    )
    credentials_ttl_seconds: int = Field(default=24 * 3600, description="Backstop TTL of a stored password.")
    objectstore_local_root: str | None = Field(
        default=None,
        description="Local directory behind the objectstore binding, to report runs' output as a path.",
    )
    runs_index_size: int = Field(default=500, description="How many recent runs GET /runs remembers.")
    question_timeout_seconds: int = Field(default=60, description="How long POST /preflight and /metadata wait.")
    schedule_misfire_grace_seconds: int = Field(
        default=30, description="A schedule tick handled later than this counts as missed (see its 'missed' policy)."
    )
    schedule_reconcile_seconds: float = Field(
        default=60, description="How often each replica looks for overdue ticks and schedules without a job."
    )
    retention_keep_runs: int = Field(
        default=7, ge=1, description="Successful runs whose output `gc` keeps per connection (plus the baseline)."
    )
    retention_workflow_age_hours: float = Field(
        default=24, ge=0, description="Finished workflow instances older than this are purged by `gc`."
    )
    retention_gc_every: str = Field(
        default="@every 1h", description="Dapr job schedule of the automatic `gc` (empty: only on request)."
    )
    workflow_version: str | None = Field(
        default=None,
        description=(
            "The workflow version new runs start on (default: the newest). Runs in flight always finish on the "
            "version they started on. Pin the previous version for the first step of a rolling upgrade of "
            "several orchestrator replicas (docs/reliability.md, 'Changing the workflow')."
        ),
    )
