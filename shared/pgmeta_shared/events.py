"""Event contracts: one frozen, versioned pydantic model per pub/sub topic.

Events stay small (ids, keys, counts): bulk data travels by claim-check through the artifacts store.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Re-exported: topic names have their own light module (the CLI starts without importing these models).
from pgmeta_shared.topics import TopicName as TopicName

SCHEMA_VERSION: Literal[1] = 1
SERVER_UNIT = "server"  # the unit holding the server and its selected databases, written by preflight
MESSAGE_MAX = 4000  # characters of an error or progress message in an event; longer ones are cut


class Stage(StrEnum):
    PREFLIGHT = "preflight"
    EXTRACT = "extract"
    TRANSFORM = "transform"
    PUBLISH = "publish"


RunId = Annotated[str, StringConstraints(max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]
UnitId = Annotated[str, StringConstraints(max_length=32, pattern=r"^[a-z0-9-]{1,32}$")]
ConnectionQualifiedName = Annotated[
    str, StringConstraints(max_length=81, pattern=r"^default/postgres/[A-Za-z0-9._-]{1,64}$")
]
# Every string and collection of an event is bounded (tests/unit/test_model_bounds.py): no event is a vehicle
# for an arbitrarily large payload.
ShortText = Annotated[str, StringConstraints(max_length=200)]
MessageText = Annotated[str, StringConstraints(max_length=MESSAGE_MAX)]
Counts = Annotated[dict[ShortText, int], Field(max_length=500)]


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
    store: Annotated[str, StringConstraints(max_length=64, pattern=r"^[A-Za-z0-9._-]{1,64}$")] = Field(
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
    aws_region: Annotated[str, StringConstraints(max_length=64)] | None = Field(
        default=None, description="Region of the RDS/Aurora instance (IAM only)."
    )
    role_arn: Annotated[str, StringConstraints(max_length=2048)] | None = Field(
        default=None, description="Role to assume (iam_role only)."
    )
    external_id: Annotated[str, StringConstraints(max_length=1224)] | None = Field(
        default=None, description="External id for the role assumption, if required."
    )


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
    username: Annotated[str, StringConstraints(min_length=1, max_length=63)] = Field(description="Role to connect as.")
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = Field(
        default="prefer", description="libpq sslmode."
    )
    sslrootcert: Annotated[str, StringConstraints(max_length=1024)] | None = Field(
        default=None, description="Path (as the extractor sees it) of the CA bundle for verify-ca / verify-full."
    )
    connect_timeout_seconds: int = Field(default=10, ge=1, le=120, description="TCP connect timeout.")
    auth: AuthSpec = Field(default_factory=AuthSpec)
    password_exchange: Literal["scram-sha-256", "any"] = Field(
        default="scram-sha-256",
        description="Password exchanges libpq may take part in (basic auth): by default only SCRAM, which never "
        "hands the password to the server; 'any' also allows cleartext and MD5 (a server asking for those "
        "receives the password). IAM tokens are cleartext by design and need sslmode verify-full instead.",
    )

    @property
    def discovery_database(self) -> str:
        return self.database or self.maintenance_database


FilterPattern = Annotated[str, StringConstraints(min_length=1, max_length=500)]
FilterValue = Annotated[list[FilterPattern], Field(max_length=100)] | Literal["*"]
FilterMap = Annotated[dict[FilterPattern, FilterValue], Field(max_length=100)]


class FilterSpec(BaseModel):
    """What to extract. Regexes match whole names (they are anchored); validated before any SQL runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    include: FilterMap | None = Field(
        default=None,
        description='Atlan\'s format {"<database regex>": ["<schema regex>", ...] | "*"}; none: everything.',
    )
    exclude: FilterMap | None = Field(default=None, description="Same format; wins over include.")
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
    full: bool = Field(
        default=False,
        description="Read every schema even when its catalog fingerprint equals the last successful run's.",
    )


class StageCommand(EventModel):
    """A command to one stage service for one run."""

    run_id: RunId

    def work_unit(self) -> str | None:
        """The unit of work within the run this command is for, if the stage fans out."""
        return None


class DatabaseSelection(BaseModel):
    """One database to extract, as one unit of work, with the schema regexes the filters give it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database: DatabaseName
    unit: UnitId
    schema_include: list[FilterPattern] = Field(
        default_factory=list, max_length=100, description="Anchored regexes; empty: all."
    )
    schema_exclude: list[FilterPattern] = Field(default_factory=list, max_length=100, description="Anchored regexes.")


class UnitChunks(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: UnitId
    chunk_count: int = Field(ge=0)
    generation: int = Field(default=1, ge=1, description="The extraction attempt the chunks come from.")


class PreflightRequested(StageCommand):
    source: SourceSpec
    credentials: CredentialRef
    filters: FilterSpec = Field(default_factory=FilterSpec)
    count_columns: bool = Field(
        default=True,
        description="Count the selected columns too. A run's preflight does not: its extract stage counts what it "
        "reads, and the column count reads all of pg_attribute.",
    )
    incremental_for: ConnectionQualifiedName | None = Field(
        default=None,
        description="Set by a run that is not --full: the connection whose baseline its extract stage compares "
        "with. When that baseline is comparable, preflight starts the discovered database's change fingerprints "
        "for the extract stage to take (pgmeta_extractor.ahead).",
    )


class PreflightCompleted(EventModel):
    run_id: RunId
    server_version: ShortText
    databases: list[DatabaseSelection] = Field(max_length=100_000)
    counts: Counts = Field(
        description="Objects the filters select: databases, schemas, tables, views, and columns when asked for."
    )
    warnings: list[MessageText] = Field(default_factory=list, max_length=1000)


class MetadataRequested(StageCommand):
    """Lists databases (or one database's schemas) for filter pickers; the answer goes to the artifacts store."""

    source: SourceSpec
    credentials: CredentialRef
    listing: Literal["databases", "schemas"]


class ExtractRequested(StageCommand):
    source: SourceSpec
    credentials: CredentialRef
    connection_qualified_name: ConnectionQualifiedName
    selection: DatabaseSelection
    filters: FilterSpec = Field(default_factory=FilterSpec)
    full: bool = Field(default=False, description="Read every schema, whatever the baseline says.")

    def work_unit(self) -> str | None:
        return self.selection.unit


class ExtractCompleted(EventModel):
    run_id: RunId
    unit: UnitId
    generation: int = Field(default=1, ge=1, description="Extraction attempt whose chunks are final.")
    chunk_count: int = Field(ge=0)
    counts: Counts
    problems: int = Field(default=0, ge=0, description="Per-object problems recorded in the run report.")
    schemas_extracted: int = Field(default=0, ge=0, description="Schemas read from the catalog.")
    schemas_skipped: int = Field(default=0, ge=0, description="Unchanged schemas carried over from the baseline.")


class TransformRequested(StageCommand):
    connection_qualified_name: ConnectionQualifiedName
    unit: UnitId
    generation: int = Field(default=1, ge=1, description="Which extraction attempt's chunks to read.")
    chunk_count: int = Field(ge=0)

    def work_unit(self) -> str | None:
        return self.unit


class TransformCompleted(EventModel):
    run_id: RunId
    unit: UnitId
    chunk_count: int = Field(ge=0)
    counts: Counts
    problems: int = Field(default=0, ge=0)


def nothing_to_transform(run_id: str, unit: str) -> TransformCompleted:
    """The transform result of a unit with no chunk (every schema carried over): what the transformer answers to
    a command with ``chunk_count`` 0, so the workflow need not send one. Nothing else of the transform stage
    exists for such a unit — no chunk markers, parts or problem report — and readers take a missing report
    as no problems."""
    return TransformCompleted(run_id=run_id, unit=unit, chunk_count=0, counts={}, problems=0)


class PublishRequested(StageCommand):
    connection_qualified_name: ConnectionQualifiedName
    units: list[UnitChunks] = Field(max_length=100_001)
    counts: Counts
    filters: FilterSpec = Field(default_factory=FilterSpec, description="The run's filters: its scope.")
    database: DatabaseName | None = Field(default=None, description="The one database requested, if any.")


class PublishCompleted(EventModel):
    run_id: RunId
    location: Annotated[str, StringConstraints(max_length=1024)] = Field(
        description="Object-store prefix that holds the run's files and manifest.json."
    )
    file_count: int = Field(ge=0)
    counts: Counts
    problems: int = Field(default=0, ge=0)
    changes: Counts = Field(
        default_factory=dict, description="Entities created / updated / unchanged / deleted since the last run."
    )


class ChunkReady(EventModel):
    """One chunk of a unit is in the artifacts store: the next stage may start on it before the whole stage ends.

    Only an optimisation: the stage's own command (sent by the workflow when the previous stage completed)
    still does any chunk nobody did early, so a lost ChunkReady delays nothing but itself.
    """

    run_id: RunId
    unit: UnitId
    generation: int = Field(default=1, ge=1)
    index: int = Field(ge=0)
    connection_qualified_name: ConnectionQualifiedName


class StageFailed(EventModel):
    run_id: RunId
    stage: Stage
    unit: UnitId | None = None
    error_code: Annotated[str, StringConstraints(max_length=64)] = Field(
        description="Stable machine-readable error class, e.g. 'authentication_failed'."
    )
    error: MessageText = Field(description="Human-readable message naming the problem.")
    retryable: bool = False


class ExtractionProgress(EventModel):
    run_id: RunId
    stage: Stage
    done: int = Field(ge=0)
    total: int | None = Field(default=None, ge=0)
    measure: Annotated[str, StringConstraints(max_length=32)] = Field(
        default="objects", description="What done/total count: objects, chunks, …"
    )
    work_unit: UnitId | None = Field(default=None, description="The database unit this progress is for.")
    message: MessageText = ""


class ExtractionCompleted(EventModel):
    run_id: RunId
    status: Literal["COMPLETED", "FAILED"]
    counts: Counts = Field(default_factory=dict)
    location: Annotated[str, StringConstraints(max_length=1024)] | None = None
    error: MessageText | None = None
    problems: int = Field(default=0, ge=0)
    changes: Counts = Field(default_factory=dict)
    schemas: Counts = Field(
        default_factory=dict, description="Schemas 'extracted' from the catalog and 'skipped' (carried over)."
    )


class ServiceName(StrEnum):
    """Who publishes and who consumes a topic: the four app ids, and anyone outside them."""

    USER = "user"
    ORCHESTRATOR = "orchestrator"
    EXTRACTOR = "extractor"
    TRANSFORMER = "transformer"
    PUBLISHER = "publisher"


_STAGES = (ServiceName.EXTRACTOR, ServiceName.TRANSFORMER, ServiceName.PUBLISHER)


@dataclass(frozen=True)
class Topic:
    """One pub/sub topic: its payload model, who may publish it and who subscribes to it."""

    name: TopicName
    model: type[BaseModel] | None
    producers: tuple[ServiceName, ...]
    consumers: tuple[ServiceName, ...]
    stage: Stage | None = None  # for a stage's command and completion topics: which stage


# The one table of topics: subscriptions, the workflow's commands, pub/sub scopes and the README's event
# table are all read off it (tests check the README and the components against it).
TOPICS: tuple[Topic, ...] = (
    Topic(TopicName.EXTRACTION_REQUESTED, ExtractionRequested, (ServiceName.USER, ServiceName.ORCHESTRATOR),
          (ServiceName.ORCHESTRATOR,)),
    Topic(TopicName.PREFLIGHT_REQUESTED, PreflightRequested, (ServiceName.ORCHESTRATOR,), (ServiceName.EXTRACTOR,),
          Stage.PREFLIGHT),
    Topic(TopicName.PREFLIGHT_COMPLETED, PreflightCompleted, (ServiceName.EXTRACTOR,), (ServiceName.ORCHESTRATOR,),
          Stage.PREFLIGHT),
    Topic(TopicName.METADATA_REQUESTED, MetadataRequested, (ServiceName.ORCHESTRATOR,), (ServiceName.EXTRACTOR,)),
    Topic(TopicName.EXTRACT_REQUESTED, ExtractRequested, (ServiceName.ORCHESTRATOR,), (ServiceName.EXTRACTOR,),
          Stage.EXTRACT),
    Topic(TopicName.EXTRACT_COMPLETED, ExtractCompleted, (ServiceName.EXTRACTOR,), (ServiceName.ORCHESTRATOR,),
          Stage.EXTRACT),
    Topic(TopicName.EXTRACT_CHUNK_READY, ChunkReady, (ServiceName.EXTRACTOR,), (ServiceName.TRANSFORMER,)),
    Topic(TopicName.TRANSFORM_REQUESTED, TransformRequested, (ServiceName.ORCHESTRATOR,),
          (ServiceName.TRANSFORMER,), Stage.TRANSFORM),
    Topic(TopicName.TRANSFORM_COMPLETED, TransformCompleted, (ServiceName.TRANSFORMER,),
          (ServiceName.ORCHESTRATOR,), Stage.TRANSFORM),
    Topic(TopicName.TRANSFORM_CHUNK_READY, ChunkReady, (ServiceName.TRANSFORMER,), (ServiceName.PUBLISHER,)),
    Topic(TopicName.PUBLISH_REQUESTED, PublishRequested, (ServiceName.ORCHESTRATOR,), (ServiceName.PUBLISHER,),
          Stage.PUBLISH),
    Topic(TopicName.PUBLISH_COMPLETED, PublishCompleted, (ServiceName.PUBLISHER,), (ServiceName.ORCHESTRATOR,),
          Stage.PUBLISH),
    # The orchestrator consumes its own announcement too: schedules (overlap) and retention record each end.
    Topic(TopicName.EXTRACTION_COMPLETED, ExtractionCompleted, (ServiceName.ORCHESTRATOR,),
          (ServiceName.ORCHESTRATOR, ServiceName.USER)),
    Topic(TopicName.STAGE_FAILED, StageFailed, _STAGES, (ServiceName.ORCHESTRATOR,)),
    Topic(TopicName.EXTRACTION_PROGRESS, ExtractionProgress, _STAGES, (ServiceName.ORCHESTRATOR,)),
    # Dapr itself moves a DROPped message here; nothing in pgmeta publishes to it. The orchestrator turns
    # each into a visible failure of its run (pgmeta_orchestrator/deadletter.py).
    Topic(TopicName.DEAD_LETTER, None, (), (ServiceName.ORCHESTRATOR,)),
)  # fmt: skip


def topic(name: TopicName) -> Topic:
    return next(t for t in TOPICS if t.name == name)


def consumed_by(service: ServiceName) -> list[Topic]:
    return [t for t in TOPICS if service in t.consumers]


def published_by(service: ServiceName) -> list[Topic]:
    return [t for t in TOPICS if service in t.producers]


def stage_topic(stage: Stage, *, completion: bool) -> Topic:
    """A stage's command topic (``<stage>.requested``) or its completion topic (``<stage>.completed``)."""
    producer = ServiceName.ORCHESTRATOR
    return next(t for t in TOPICS if t.stage is stage and (producer in t.consumers) == completion)


def stage_result_event(stage: Stage, unit: str | None = None) -> str:
    """Name of the workflow external event that carries a stage's (or one of its units') outcome."""
    return f"{stage.value}_result" if unit is None else f"{stage.value}_result_{unit}"


def clip(text: str, limit: int = MESSAGE_MAX) -> str:
    """A message cut to what an event may carry."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def to_payload(event: BaseModel) -> dict[str, Any]:
    return event.model_dump(mode="json")
