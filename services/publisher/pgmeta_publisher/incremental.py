"""Incremental runs: this run's entity fingerprints against the previous successful run of the connection.

Fingerprints (qualifiedName, type, hash, scope) are regrouped into a fixed number of buckets by a stable hash
of the qualifiedName, so comparing two runs holds one bucket in memory at a time, whatever the catalog size.
An entity missing from this run is "deleted" only when this run's filters would have selected it: an entity
filtered out this time is out of scope, not deleted.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import re2

from pgmeta_shared.events import FilterSpec, UnitChunks
from pgmeta_shared.fingerprints import Fingerprint
from pgmeta_shared.keys import ArtifactStage, extract_chunk_unit, fingerprint_part_key, fingerprint_parts_key
from pgmeta_shared.platform import NO_TTL, Platform

BUCKETS = 64
FLUSH_AT = 500  # fingerprints per stored part: bounds the buffers to BUCKETS × FLUSH_AT entries
CHANGE_KINDS = ("created", "updated", "unchanged", "deleted")

VIEW_TYPES = {"View", "MaterialisedView"}
TABLE_TYPES = {"Table", "TablePartition"}


def bucket_of(qualified_name: str) -> int:
    return hashlib.blake2b(qualified_name.encode(), digest_size=2).digest()[0] % BUCKETS


def bucketize(platform: Platform, run_id: str, units: list[UnitChunks]) -> list[int]:
    """Regroups the transformer's per-chunk fingerprints into buckets; returns the part count per bucket."""
    buffers: list[list[list[Any]]] = [[] for _ in range(BUCKETS)]
    parts = [0] * BUCKETS

    def flush(bucket: int) -> None:
        platform.save_json(fingerprint_part_key(run_id, bucket, parts[bucket]), buffers[bucket], ttl_seconds=NO_TTL)
        parts[bucket] += 1
        buffers[bucket] = []

    for unit in units:
        chunk_unit = extract_chunk_unit(unit.unit, unit.generation)
        for index in range(unit.chunk_count):
            # Rows stay rows here: they are only regrouped, not read.
            for record in platform.load_chunk(run_id, ArtifactStage.FINGERPRINT, chunk_unit, index):
                bucket = bucket_of(record[0])
                buffers[bucket].append(record)
                if len(buffers[bucket]) >= FLUSH_AT:
                    flush(bucket)
    for bucket in range(BUCKETS):
        if buffers[bucket]:
            flush(bucket)
    platform.save_json(fingerprint_parts_key(run_id), parts, ttl_seconds=NO_TTL)
    return parts


def load_bucket(platform: Platform, run_id: str, bucket: int, parts: int) -> dict[str, Fingerprint]:
    records: dict[str, Fingerprint] = {}
    for part in range(parts):
        for row in platform.get_json(fingerprint_part_key(run_id, bucket, part)) or []:
            record = Fingerprint.from_row(row)
            records[record.qualified_name] = record
    return records


REWRITE_PART = 5_000  # fingerprints per part when a bucket is rewritten whole (well under Dapr's body limit)


def _rewrite_bucket(
    platform: Platform, run_id: str, bucket: int, parts: list[int], records: dict[str, Fingerprint]
) -> None:
    """One bucket of this run, written again in whole parts; ``parts`` is updated (the caller saves it)."""
    rows = [list(r) for r in records.values()]
    written = 0
    for written, start in enumerate(range(0, len(rows), REWRITE_PART), start=1):
        platform.save_json(
            fingerprint_part_key(run_id, bucket, written - 1), rows[start : start + REWRITE_PART], ttl_seconds=NO_TTL
        )
    for part in range(written, parts[bucket]):
        platform.delete_json(fingerprint_part_key(run_id, bucket, part))
    parts[bucket] = written


def forget_run(platform: Platform, run_id: str) -> None:
    """Removes a superseded run's fingerprint buckets (they carry no TTL: a snapshot may be old)."""
    parts = platform.get_json(fingerprint_parts_key(run_id)) or []
    for bucket, count in enumerate(parts):
        for part in range(count):
            platform.delete_json(fingerprint_part_key(run_id, bucket, part))
    platform.delete_json(fingerprint_parts_key(run_id))


@dataclass(frozen=True)
class Scope:
    """What this run's request selects; decides whether a vanished entity is deleted or just not selected.

    Regexes are evaluated with Python's ``re`` here (PostgreSQL evaluated them during extraction); the two
    dialects agree on the patterns filters use in practice (classes, alternation, quantifiers, anchors).
    """

    filters: FilterSpec
    database: str | None

    def database_selected(self, database: str) -> bool:
        if self.database is not None and database != self.database:
            return False
        include = self.filters.include
        if include is not None and not any(_matches(key, database) for key in include):
            return False
        exclude = self.filters.exclude or {}
        return not any(value == "*" and _matches(key, database) for key, value in exclude.items())

    def schema_selected(self, database: str, schema: str) -> bool:
        include = self.filters.include
        if include is not None:
            values = [v for k, v in include.items() if _matches(k, database)]
            if not any(v == "*" or any(_matches(p, schema) for p in v) for v in values):
                return False
        exclude = self.filters.exclude or {}
        for key, value in exclude.items():
            if value != "*" and _matches(key, database) and any(_matches(p, schema) for p in value):
                return False
        return True

    def selects(self, record: Fingerprint) -> bool:
        database, schema, relation = record.database, record.schema, record.relation
        if database is None:
            return True  # the connection itself
        if not self.database_selected(database):
            return False
        if schema is not None and not self.schema_selected(database, schema):
            return False
        if relation is None:
            return True
        if self.filters.exclude_views and record.relation_type in VIEW_TYPES:
            return False
        if self.filters.temp_table_regex and _matches(self.filters.temp_table_regex, relation):
            return False
        # A table missing under exclude_empty_tables may just have become empty: never call it deleted.
        return not (self.filters.exclude_empty_tables and record.relation_type in TABLE_TYPES)


def _matches(pattern: str, name: str) -> bool:
    """Whole-name match (anchored, as the extractor's SQL anchors it) in linear time: filters are user input,
    and a backtracking engine would let ``(a+)+c`` hold the GIL for minutes."""
    compiled = _compiled(pattern)
    return compiled is not None and compiled.fullmatch(name) is not None


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    try:
        return re2.compile(pattern)
    except re2.error:
        return None


@dataclass
class Changes:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    changed: set[str] = field(default_factory=set)

    def add(self, type_name: str, kind: str) -> None:
        per_type = self.counts.setdefault(type_name, dict.fromkeys(CHANGE_KINDS, 0))
        per_type[kind] += 1

    def total(self, kind: str) -> int:
        return sum(per_type[kind] for per_type in self.counts.values())


def compare(
    platform: Platform,
    run_id: str,
    parts: list[int],
    previous: dict[str, Any] | None,
    scope: Scope,
    emit: Callable[[str, dict[str, Any]], None],
    keep_changed: bool,
    carried: set[tuple[str, str]] | None = None,
) -> Changes:
    """Marks every entity created / updated / unchanged and lists deletions, one bucket at a time.

    ``emit(kind, line)`` receives ``("change", {...})`` and ``("deleted", {...})`` lines as they are found.
    ``carried`` names the (database, schema) scopes this run took from the previous one unread: their
    fingerprints are the previous run's, added to this run's buckets (rewritten) for the run after.
    """
    changes = Changes()
    rewritten = False
    previous_run: str | None = previous["run_id"] if previous else None
    previous_parts: list[int] = (platform.get_json(fingerprint_parts_key(previous_run)) or []) if previous_run else []
    for bucket in range(BUCKETS):
        current = load_bucket(platform, run_id, bucket, parts[bucket])
        before = (
            load_bucket(platform, previous_run, bucket, previous_parts[bucket])
            if previous_run and previous_parts
            else {}
        )
        if carried:
            kept = {qn: r for qn, r in before.items() if (r.database or "", r.schema or "") in carried}
            if kept:
                current.update(kept)
                _rewrite_bucket(platform, run_id, bucket, parts, current)
                rewritten = True
        for qn, record in current.items():
            old = before.get(qn)
            kind = "created" if old is None else ("unchanged" if old.digest == record.digest else "updated")
            changes.add(record.type_name, kind)
            if keep_changed and kind != "unchanged":
                changes.changed.add(qn)
            emit("change", {"typeName": record.type_name, "qualifiedName": qn, "change": kind})
        for qn, old in before.items():
            if qn not in current and scope.selects(old):
                changes.add(old.type_name, "deleted")
                emit("deleted", {"typeName": old.type_name, "qualifiedName": qn})
    if rewritten:
        platform.save_json(fingerprint_parts_key(run_id), parts, ttl_seconds=NO_TTL)
    return changes
