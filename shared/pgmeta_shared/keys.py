"""Every key in the artifacts and credentials stores, and every name inside a transformed chunk: one home.

Services build keys only through these functions; a test greps the services for key strings written
anywhere else. Keys are scoped by run id first, so everything of one run shares a prefix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pgmeta_shared.events import Stage


class ArtifactStage(StrEnum):
    """Whose chunks a claim-check key names: the stages, plus the transformer's fingerprints."""

    PREFLIGHT = "preflight"
    EXTRACT = "extract"
    TRANSFORM = "transform"
    PUBLISH = "publish"
    FINGERPRINT = "fingerprint"
    # The publisher's change lines of one chunk as a first run lists them (every entity created).
    CREATED = "created"


# A pipeline stage (events.Stage) names its keys by the same value.
StageName = ArtifactStage | Stage


# -- claim-check chunks and per-chunk markers -------------------------------------------------------------


def extract_chunk_unit(unit: str, generation: int) -> str:
    """Where an extraction attempt's chunks live: a retried extraction never overwrites what a stage
    that started early may have read."""
    return unit if generation == 1 else f"{unit}-g{generation}"


def chunk_key(run_id: str, stage: StageName, chunk_unit: str, index: int) -> str:
    return f"{run_id}/{stage.value}/{chunk_unit}/{index:06d}"


def chunk_done_key(run_id: str, stage: StageName, chunk_unit: str, index: int) -> str:
    """A stage's marker that one chunk is done (what it produced): a redelivery finds it and skips the work."""
    return f"{chunk_key(run_id, stage, chunk_unit, index)}/done"


# -- stage outcomes -------------------------------------------------------------------------------------------


def stage_result_key(run_id: str, stage: StageName, unit: str | None = None) -> str:
    """A stage's recorded completion (of the run, or of one unit): a replayed command re-announces it."""
    return f"{run_id}/{stage.value}/result" if unit is None else f"{run_id}/{stage.value}/{unit}/result"


def stage_failure_key(run_id: str, stage: StageName, unit: str | None) -> str:
    return f"{run_id}/{stage.value}/{unit or '-'}/failed"


def stage_report_key(run_id: str, stage: StageName, unit: str) -> str:
    """The per-object problems a stage recorded for one unit (the run report is assembled from these)."""
    return f"{run_id}/report/{stage.value}/{unit}"


def metadata_answer_key(request_id: str) -> str:
    return f"{request_id}/metadata/result"


# -- runs as the orchestrator keeps them ------------------------------------------------------------------------

RUNS_INDEX_KEY = "runs/index"


def run_requested_key(run_id: str) -> str:
    return f"{run_id}/requested"


def run_progress_key(run_id: str) -> str:
    return f"{run_id}/progress"


def run_trace_key(run_id: str) -> str:
    """The run's trace context (traceparent), so later reads and retries join the run's trace."""
    return f"{run_id}/trace"


def run_fence_key(run_id: str) -> str:
    """The run's fence: once it says the run ended, no late work may commit anything visible for it."""
    return f"{run_id}/fence"


def work_lease_key(run_id: str, stage: StageName, unit: str | None) -> str:
    """Who is working on one stage unit right now (heartbeated), so a redelivery never robs a live worker."""
    return f"{run_id}/{stage.value}/{unit or '-'}/lease"


def credentials_key(run_id: str) -> str:
    """Where an inline password given to the REST API waits for its run (in the credentials store)."""
    return f"cred/{run_id}"


# -- schedules and retention ----------------------------------------------------------------------------------

SCHEDULES_INDEX_KEY = "schedules/index"
RETENTION_CONNECTIONS_KEY = "retention/connections"


def schedule_key(schedule_id: str) -> str:
    return f"schedules/{schedule_id}"


def retention_runs_key(connection_qn: str) -> str:
    """Finished runs of one connection, newest first (written when ``extraction.completed`` arrives)."""
    return f"retention/runs/{connection_qn}"


# -- incremental baselines --------------------------------------------------------------------------------------


def snapshot_key(connection_qn: str) -> str:
    """The connection's baseline: the last successful run, which the next run compares with."""
    return f"snapshot/{connection_qn}"


def extract_scopes_key(run_id: str, unit: str) -> str:
    """The extractor's plan for one database unit: each schema's change fingerprint, read or carried over."""
    return f"{run_id}/extract/{unit}/scopes"


def baseline_scopes_key(run_id: str, database: str) -> str:
    """A published run's files per schema of one database, with the fingerprints they were read at: what the
    next run carries over for schemas that did not change (kept while the run is the baseline)."""
    digest = hashlib.blake2b(database.encode(), digest_size=8).hexdigest()
    return f"scopes/{run_id}/{digest}"


def scope_id(schema: str) -> str:
    """A schema's token in published file names (schema names may hold any character)."""
    return hashlib.blake2b(schema.encode(), digest_size=6).hexdigest()


def fingerprint_parts_key(run_id: str) -> str:
    """A run's fingerprint index: where each scope's fingerprints are (``fingerprints.FingerprintIndex``)."""
    return f"{run_id}/fpb/parts"


def fingerprint_part_key(run_id: str, bucket: int, part: int) -> str:
    """A part of a fingerprint bucket in the layout before per-scope parts (read once, to migrate a baseline)."""
    return f"{run_id}/fpb/{bucket:02d}/{part:05d}"


def fingerprint_scope_part_key(
    owner_run_id: str, database: str | None, schema: str | None, bucket: int, part: int
) -> str:
    """A part of one scope's (database, schema) fingerprints, written by the run that read the scope; later runs
    that carry the scope over refer to it instead of copying it."""
    token = hashlib.blake2b(repr((database, schema)).encode(), digest_size=8).hexdigest()
    return f"{owner_run_id}/fps/{token}/{bucket:02d}/{part:05d}"


def fingerprint_chunk(chunk_unit: str, index: int) -> str:
    """A transformed chunk as the run's ledger of per-chunk fingerprint parts names it."""
    return f"{chunk_unit}/{index:06d}"


def fingerprint_chunk_part(chunk: str, scope_ordinal: int) -> str:
    """Names the fingerprints of the ``scope_ordinal``-th scope (database, schema) that chunk ``chunk`` holds."""
    return f"{chunk}/{scope_ordinal}"


def fingerprint_chunk_part_key(owner_run_id: str, chunk_part: str) -> str:
    """The fingerprints of one scope in one transformed chunk (``fingerprint_chunk_part``): written as the chunk
    is published, so that the publish stage regroups nothing; later runs that carry the scope over refer to it."""
    return f"{owner_run_id}/fps/c/{chunk_part}"


def fingerprint_folds_key(run_id: str) -> str:
    """The run's ledger of per-chunk fingerprint parts: ``{"<chunk unit>/<index>": scopes}``, whether or not its
    index came to name them: what is deleted with the run (a failed run has no index; a replaced extraction
    attempt's chunks are in no index)."""
    return f"{run_id}/fpb/folds"


# -- the parts of a transformed chunk (transformer → publisher) ---------------------------------------------------

FINGERPRINTS_PART = "fingerprints"


SCOPE_SEPARATOR = "@"  # never in a type name or an extra kind; a schema name may follow it whatever it holds


def entity_part(type_name: str, schema: str | None = None) -> str:
    """The JSON Lines of one Atlas type (of one schema, for entities that belong to one) in a transformed chunk."""
    return f"entity:{type_name}" if schema is None else f"entity:{type_name}{SCOPE_SEPARATOR}{schema}"


def extra_part(extra_kind: str, schema: str | None = None) -> str:
    """The JSON Lines of one kind of catalog extra (constraints, indexes) of one schema in a transformed chunk."""
    return f"extra:{extra_kind}" if schema is None else f"extra:{extra_kind}{SCOPE_SEPARATOR}{schema}"


@dataclass(frozen=True)
class PartName:
    """A transformed chunk's part name, parsed: entity lines of a type, extra lines of a kind, or fingerprints;
    with the schema the lines belong to (files are per schema, so an unchanged schema's files carry over)."""

    kind: Literal["entity", "extra", "fingerprints"]
    name: str
    schema: str | None = None

    @classmethod
    def parse(cls, part: str) -> PartName:
        if part == FINGERPRINTS_PART:
            return cls("fingerprints", part)
        kind, sep, rest = part.partition(":")
        name, scoped, schema = rest.partition(SCOPE_SEPARATOR)
        if not sep or kind not in {"entity", "extra"} or not name:
            raise ValueError(f"not a transformed-chunk part name: {part!r}")
        return cls("entity" if kind == "entity" else "extra", name, schema if scoped else None)

    @property
    def count_key(self) -> str:
        """How a part's line count is reported in stage counts: the type name, or ``extra:<kind>``."""
        return self.name if self.kind == "entity" else extra_part(self.name)


# -- the published output ---------------------------------------------------------------------------------

OBJECTSTORE_BINDING = "objectstore"
"""The output binding the publisher writes runs to and the console reads them back from."""
# -- the registry store (orchestrator only): API tokens and registered connections -------------------------------

API_TOKENS_INDEX_KEY = "auth/tokens"
CONNECTIONS_INDEX_KEY = "connections"


def api_token_key(token_id: str) -> str:
    """One API token's record: name, role and the SHA-256 of the token (never the token)."""
    return f"auth/token/{token_id}"


def connection_key(name: str) -> str:
    return f"connections/{name}"
