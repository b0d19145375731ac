"""Orchestrator settings."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

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
    # -- access --------------------------------------------------------------------------------------
    registry_store: str = Field(
        default="registry", description="State store (orchestrator only) for API tokens and registered connections."
    )
    bootstrap_token_sha256: SecretStr | None = Field(
        default=None, description="SHA-256 (hex) of an admin token accepted before any token exists."
    )
    bootstrap_token_sha256_file: Path | None = Field(
        default=None, description="File holding that SHA-256 (e.g. a mounted Kubernetes secret)."
    )
    oidc_issuer: str | None = Field(default=None, description="OIDC issuer whose JWTs are accepted (iss claim).")
    oidc_audience: str = Field(default="pgmeta", description="Required aud claim of OIDC JWTs.")
    oidc_jwks_url: str | None = Field(default=None, description="JWKS URL; default <issuer>/.well-known/jwks.json.")
    oidc_role_claim: str = Field(default="pgmeta_role", description="Claim holding viewer/operator/admin (or a list).")
    oidc_username_claim: str = Field(default="sub", description="Claim naming the caller in the audit trail.")
    adhoc_allowed_hosts: list[str] = Field(
        default=["*"],
        description="Hosts ad-hoc sources (inline password, no registered connection) may name: '*', host patterns "
        "('*.db.internal') or CIDRs ('10.0.0.0/8'), as a JSON list. The chart sets [] (connections only).",
    )
    sslrootcert_dir: Path | None = Field(
        default=None, description="Directory of CA bundles a source's sslrootcert may name; none: only 'system'."
    )
    audit_log_path: Path | None = Field(
        default=None, description="Append audit records to this JSON Lines file; default: stdout ('audit' logger)."
    )

    def bootstrap_token_digest(self) -> str | None:
        if self.bootstrap_token_sha256 is not None:
            return self.bootstrap_token_sha256.get_secret_value().strip().lower() or None
        if self.bootstrap_token_sha256_file is not None and self.bootstrap_token_sha256_file.exists():
            return self.bootstrap_token_sha256_file.read_text().strip().lower() or None
        return None

    workflow_version: str | None = Field(
        default=None,
        description=(
            "The workflow version new runs start on (default: the newest). Runs in flight always finish on the "
            "version they started on. Pin the previous version for the first step of a rolling upgrade of "
            "several orchestrator replicas (docs/reliability.md, 'Changing the workflow')."
        ),
    )
