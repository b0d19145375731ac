"""Event contracts: one frozen, versioned pydantic model per pub/sub topic.

Events stay small (ids, keys, counts): bulk data travels by claim-check through the artifacts store.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SCHEMA_VERSION: Literal[1] = 1


class TopicName(StrEnum):
    EXTRACTION_REQUESTED = "extraction.requested"
    EXTRACT_REQUESTED = "extract.requested"
    EXTRACT_COMPLETED = "extract.completed"
    TRANSFORM_REQUESTED = "transform.requested"
    TRANSFORM_COMPLETED = "transform.completed"
    PUBLISH_REQUESTED = "publish.requested"
    PUBLISH_COMPLETED = "publish.completed"
    EXTRACTION_COMPLETED = "extraction.completed"
    STAGE_FAILED = "stage.failed"
    EXTRACTION_PROGRESS = "extraction.progress"
    DEAD_LETTER = "pgmeta.deadletter"


class Stage(StrEnum):
    EXTRACT = "extract"
    TRANSFORM = "transform"
    PUBLISH = "publish"


RunId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
ConnectionQualifiedName = Annotated[str, StringConstraints(pattern=r"^default/postgres/[A-Za-z0-9._-]{1,64}$")]
Counts = dict[str, int]


class EventModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION


class CredentialRef(BaseModel):
    """Where the source password lives: never the password itself."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["secret", "state"] = Field(
        description="'secret': a Dapr secret store entry; 'state': an entry of a state store with Dapr's "
        "state encryption on (written by the orchestrator's REST API)."
    )
    store: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = Field(
        description="Dapr component name of the secret or state store."
    )
    key: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="Secret name or state key. A secret may hold 'password' (and optionally 'username')."
    )


DatabaseName = Annotated[str, StringConstraints(min_length=1, max_length=63)]


class AuthSpec(BaseModel):
    """How to authenticate: a password, or an AWS IAM token for RDS/Aurora made fresh per connection."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["basic", "iam_user", "iam_role"] = Field(
        default="basic",
        description="'basic': the referenced password; 'iam_user': an RDS auth token signed with the access "
        "key in the referenced secret (aws_access_key_id, aws_secret_access_key); 'iam_role': the same after "
        "assuming role_arn through STS.",
    )
    aws_region: str | None = Field(default=None, description="Region of the RDS/Aurora instance (IAM only).")
    role_arn: str | None = Field(default=None, description="Role to assume (iam_role only).")
    external_id: str | None = Field(default=None, description="External id for the role assumption, if required.")


class SourceSpec(BaseModel):
    """The PostgreSQL server to read. No secret in here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: Annotated[str, StringConstraints(min_length=1, max_length=255)] = Field(description="Server host.")
    port: int = Field(default=5432, ge=1, le=65535, description="Server port.")
    database: DatabaseName | None = Field(
        default=None, description="The one database to extract; none: every database the filters admit."
    )
    maintenance_database: DatabaseName = Field(
        default="postgres", description="Database to connect to for discovering the others."
    )
    username: Annotated[str, StringConstraints(min_length=1, max_length=63)] = Field(
        description="Role to connect as."
    )
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        default="prefer", description="libpq sslmode."
    )
    sslrootcert: str | None = Field(
        default=None, description="Path (as the extractor sees it) of the CA bundle for verify-ca / verify-full."
    )
    connect_timeout_seconds: int = Field(default=10, ge=1, le=120, description="TCP connect timeout.")
    auth: AuthSpec = Field(default_factory=AuthSpec)

    @property
    def discovery_database(self) -> str:
        return self.database or self.maintenance_database


FilterValue = list[Annotated[str, StringConstraints(min_length=1, max_length=500)]] | Literal["*"]


class FilterSpec(BaseModel):
    """What to extract. Regexes match whole names (they are anchored); validated before any SQL runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    include: dict[Annotated[str, StringConstraints(min_length=1, max_length=500)], FilterValue] | None = Field(
        default=None,
        description='Atlan\'s format {"<database regex>": ["<schema regex>", ...] | "*"}; none: everything.',
    )
    exclude: dict[Annotated[str, StringConstraints(min_length=1, max_length=500)], FilterValue] | None = Field(
        default=None, description="Same format; wins over include."
    )
    temp_table_regex: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = Field(
        default=None, description="Tables and views whose name matches are skipped."
    )
    exclude_views: bool = Field(default=False, description="Skip views and materialized views.")
    exclude_empty_tables: bool = Field(default=False, description="Skip tables with no rows.")


class ExtractionRequested(EventModel):
    """A user's request for the metadata of one PostgreSQL server (topic ``extraction.requested``)."""

    request_id: RunId = Field(description="Caller-chosen id; the run id. A duplicate id starts no second run.")
    source: SourceSpec
    credentials: CredentialRef
    connection_qualified_name: ConnectionQualifiedName | None = Field(
        default=None,
        description="Atlan connection qualifiedName; default derived from host and port (stable per server).",
    )
    filters: FilterSpec = Field(default_factory=FilterSpec)
    stage_timeout_seconds: int = Field(default=900, ge=5, le=86_400, description="Per-stage time limit.")


class StageCommand(EventModel):
    """A command to one stage service for one run."""

    run_id: RunId


class ExtractRequested(StageCommand):
    source: SourceSpec
    credentials: CredentialRef
    connection_qualified_name: ConnectionQualifiedName


class ExtractCompleted(EventModel):
    run_id: RunId
    chunk_count: int = Field(ge=0)
    counts: Counts


class TransformRequested(StageCommand):
    connection_qualified_name: ConnectionQualifiedName
    chunk_count: int = Field(ge=0)


class TransformCompleted(EventModel):
    run_id: RunId
    chunk_count: int = Field(ge=0)
    counts: Counts


class PublishRequested(StageCommand):
    connection_qualified_name: ConnectionQualifiedName
    chunk_count: int = Field(ge=0)
    counts: Counts


class PublishCompleted(EventModel):
    run_id: RunId
    location: str = Field(description="Object-store prefix that holds the run's files and manifest.json.")
    file_count: int = Field(ge=0)
    counts: Counts


class StageFailed(EventModel):
    run_id: RunId
    stage: Stage
    error_code: str = Field(description="Stable machine-readable error class, e.g. 'authentication_failed'.")
    error: str = Field(description="Human-readable message naming the problem.")
    retryable: bool = False


class ExtractionProgress(EventModel):
    run_id: RunId
    stage: Stage
    done: int = Field(ge=0)
    total: int | None = Field(default=None, ge=0)
    unit: str = "objects"
    message: str = ""


class ExtractionCompleted(EventModel):
    run_id: RunId
    status: Literal["COMPLETED", "FAILED"]
    counts: Counts = Field(default_factory=dict)
    location: str | None = None
    error: str | None = None


STAGE_COMPLETION_TOPICS: dict[Stage, TopicName] = {
    Stage.EXTRACT: TopicName.EXTRACT_COMPLETED,
    Stage.TRANSFORM: TopicName.TRANSFORM_COMPLETED,
    Stage.PUBLISH: TopicName.PUBLISH_COMPLETED,
}


def stage_result_event(stage: Stage) -> str:
    """Name of the workflow external event that carries a stage's outcome."""
    return f"{stage.value}_result"


def to_payload(event: BaseModel) -> dict[str, Any]:
    return event.model_dump(mode="json")
