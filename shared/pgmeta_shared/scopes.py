"""Incremental runs by schema: what the extractor decided (read or carried over) and what a published run
leaves for the next one. The extractor writes ``ScopePlan``; the publisher reads it, copies carried schemas'
files and fingerprints from the baseline, and writes ``ScopeIndex`` for the run that comes after.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from pgmeta_shared.events import FilterSpec

# Bump when the extractor's queries or the transformer's mapping change what an unchanged catalog produces:
# a baseline of another format is never carried over (the next run reads everything). Also bumped when what
# a baseline stores changes shape: 2, fingerprint parts stored per chunk (a publisher of format 1 cannot read
# them), so the first run after an upgrade, or a roll-back, is a full one.
INCREMENTAL_FORMAT = 2


class ScopePlan(BaseModel):
    """One database unit of one run: every selected schema's fingerprint, and which schemas were read."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database: str
    unit: str
    fingerprints: dict[str, str] = Field(description="Schema name → catalog change fingerprint, as extracted.")
    extracted: list[str] = Field(description="Schemas read from the catalog in this run.")
    carried: list[str] = Field(default_factory=list, description="Schemas whose output is the baseline's.")
    baseline_run_id: str | None = Field(default=None, description="The run the carried schemas come from.")
    reason: str = Field(description="Why the schemas were read or carried (full requested, no baseline, …).")


class ScopeFiles(BaseModel):
    """One schema's published files (as the manifest lists them) and entities per type."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fingerprint: str
    files: list[dict[str, Any]]
    counts: dict[str, int]


class ScopeIndex(BaseModel):
    """A published run's schemas of one database: what the next run may carry over."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database: str
    unit: str
    schemas: dict[str, ScopeFiles]


def request_scope(filters: FilterSpec, database: str | None) -> str:
    """A digest of what a run selects: a baseline taken under other filters is not carried over."""
    blob = orjson.dumps({"filters": filters.model_dump(mode="json"), "database": database}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()


class Baseline(BaseModel):
    """The snapshot record of a connection: the last successful run and what it can be compared with."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: str
    at: str | None = None
    format: int | None = None
    scope: str | None = None
    databases: list[str] = Field(default_factory=list)
