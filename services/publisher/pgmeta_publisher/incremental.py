"""Incremental runs: this run's entity fingerprints against the previous successful run of the connection.

Fingerprints (qualifiedName, type, hash, scope) are stored by scope — the Connection, a Database, a schema —
and a very large scope in buckets by a stable hash of the qualifiedName, so comparing two runs holds one
bucket of one scope in memory at a time. A schema carried over unread is not compared at all: its entities are
the baseline's, unchanged by definition, and this run's index refers to the parts that hold them (written by the
run that last read the schema) instead of copying them. An entity missing from this run is "deleted" only when
this run's filters would have selected it: an entity filtered out this time is out of scope, not deleted.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import re2
from pydantic import BaseModel, ConfigDict

from pgmeta_shared.errors import ArtifactMissingError
from pgmeta_shared.events import FilterSpec
from pgmeta_shared.fingerprints import (
    Fingerprint,
    FingerprintIndex,
    ScopeFingerprints,
    buckets_for,
    ledger_part_keys,
    owned_part_keys,
)
from pgmeta_shared.keys import (
    ArtifactStage,
    fingerprint_chunk,
    fingerprint_chunk_part,
    fingerprint_chunk_part_key,
    fingerprint_folds_key,
    fingerprint_part_key,
    fingerprint_parts_key,
    fingerprint_scope_part_key,
)
from pgmeta_shared.outputfiles import compress, decompress
from pgmeta_shared.platform import NO_TTL, Platform
from pgmeta_shared.prefetch import prefetched

log = logging.getLogger(__name__)

FLUSH_AT = 5_000  # fingerprints per stored part (about 1 MB of JSON: well under Dapr's body limit)
MAX_BUFFERED = 32_000  # fingerprints held at most (the largest buffer is written out then): memory stays flat
CHANGE_KINDS = ("created", "updated", "unchanged", "deleted")

VIEW_TYPES = {"View", "MaterialisedView"}
TABLE_TYPES = {"Table", "TablePartition"}

ScopeKey = tuple[str | None, str | None]  # (database, schema): the Connection is (None, None)


def name_hash(qualified_name: str) -> int:
    """A stable hash of the qualifiedName; its bucket among ``n`` (a power of two) is ``name_hash % n``, so a
    bucket of 2n is part of one bucket of n: scopes stored with different bucket counts still compare."""
    return int.from_bytes(hashlib.blake2b(qualified_name.encode(), digest_size=4).digest(), "big")


def bucket_of(qualified_name: str, buckets: int) -> int:
    return name_hash(qualified_name) % buckets


class ScopePartWriter:
    """Regroups fingerprint rows by scope and bucket into stored parts of one run; returns the part counts.

    ``sizes`` (entities per scope, where known) sets each scope's bucket count: one for all but very large
    schemas, so that a run writes few, large parts. Rows arrive interleaved across scopes (the extractor
    reads kind by kind); when too many are held, every buffer but the one being filled is written out.
    """

    def __init__(self, platform: Platform, run_id: str, sizes: dict[ScopeKey, int] | None = None) -> None:
        self.platform = platform
        self.run_id = run_id
        self.parts: dict[ScopeKey, list[int]] = {}
        self._sizes = sizes or {}
        self._buffers: dict[tuple[ScopeKey, int], list[Any]] = {}
        self._buffered = 0

    def add(self, row: Sequence[Any]) -> None:
        scope = (row[3], row[4])
        counts = self.parts.get(scope)
        if counts is None:
            counts = self.parts[scope] = [0] * buckets_for(self._sizes.get(scope, 0))
        key = (scope, bucket_of(row[0], len(counts)) if len(counts) > 1 else 0)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = []
        buffer.append(row)
        self._buffered += 1
        if len(buffer) >= FLUSH_AT:
            self._flush(key)
        if self._buffered >= MAX_BUFFERED:
            # Everything but the scope being read goes out. Rows arrive kind by kind, each kind in schema order,
            # so the other buffers are done until the next kind; writing only the largest one wrote the scope
            # being read every few rows once many schemas held rows (parts of ~200 rows at 500 schemas).
            for other in [k for k in self._buffers if k != key]:
                self._flush(other)

    def _flush(self, key: tuple[ScopeKey, int]) -> None:
        rows = self._buffers.pop(key, [])
        if not rows:
            return
        (database, schema), bucket = key
        counts = self.parts[(database, schema)]
        part_key = fingerprint_scope_part_key(self.run_id, database, schema, bucket, counts[bucket])
        self.platform.save_json(part_key, rows, ttl_seconds=NO_TTL)
        counts[bucket] += 1
        self._buffered -= len(rows)

    def flush(self) -> None:
        for key in list(self._buffers):
            self._flush(key)

    def scopes(self) -> list[ScopeFingerprints]:
        self.flush()
        return [ScopeFingerprints(db, schema, self.run_id, parts) for (db, schema), parts in self.parts.items()]


CREATED_LINES = "created"  # the part of an ArtifactStage.CREATED chunk that holds its change lines


class FoldedChunk(BaseModel):
    """One chunk's fingerprints as the publisher stored them, by scope: what the publish stage indexes and counts
    without reading a fingerprint back."""

    model_config = ConfigDict(frozen=True)

    chunk_unit: str
    index: int
    # (database, schema, fingerprints), in the chunk's order: the n-th is stored as keys.fingerprint_chunk_part(…, n)
    scopes: list[tuple[str | None, str | None, int]]
    types: dict[str, int]  # fingerprints per entity type
    created_lines: bool  # its change lines as a run without a baseline lists them are stored (ArtifactStage.CREATED)


def fold_chunk(platform: Platform, run_id: str, chunk_unit: str, index: int, first_run: bool) -> FoldedChunk:
    """Stores one transformed chunk's fingerprints by scope (one part per scope it holds) and, when ``first_run``
    (the connection has no baseline yet), its change lines: everything in it is "created".

    Idempotent: the keys are the chunk's, so a chunk folded again (redelivered, early and then in ``publish``,
    or after a crash) replaces its parts. The run's ledger names every part before it is written, so that a run
    that never publishes (or a chunk of a superseded extraction) leaves nothing behind once it is forgotten.
    """
    rows = platform.load_chunk(run_id, ArtifactStage.FINGERPRINT, chunk_unit, index)
    by_scope: dict[ScopeKey, list[Any]] = {}
    types: dict[str, int] = {}
    for row in rows:  # rows stay rows here: they are only regrouped, not read
        by_scope.setdefault((row[3], row[4]), []).append(row)
        types[row[1]] = types.get(row[1], 0) + 1
    chunk = fingerprint_chunk(chunk_unit, index)
    platform.update_json(fingerprint_folds_key(run_id), lambda known: {**(known or {}), chunk: len(by_scope)})
    for n, scope_rows in enumerate(by_scope.values()):
        part = fingerprint_chunk_part(chunk, n)
        platform.save_json(fingerprint_chunk_part_key(run_id, part), scope_rows, ttl_seconds=NO_TTL)
    if first_run:
        lines = b"".join(
            orjson.dumps({"typeName": row[1], "qualifiedName": row[0], "change": "created"}) + b"\n" for row in rows
        )
        platform.save_parts(run_id, ArtifactStage.CREATED, chunk_unit, index, {CREATED_LINES: compress(lines)})
    return FoldedChunk(
        chunk_unit=chunk_unit,
        index=index,
        scopes=[(database, schema, len(scope_rows)) for (database, schema), scope_rows in by_scope.items()],
        types=types,
        created_lines=first_run,
    )


def created_lines(platform: Platform, run_id: str, chunk_unit: str, index: int) -> bytes:
    """A folded chunk's change lines as a run without a baseline lists them (JSON Lines)."""
    return decompress(platform.load_parts(run_id, ArtifactStage.CREATED, chunk_unit, index)[CREATED_LINES])


def index_folds(platform: Platform, run_id: str, folds: list[FoldedChunk]) -> list[ScopeFingerprints]:
    """This run's scopes from its folded chunks, in the order the chunks first hold them. A scope too large
    for one bucket (rare: a schema of more than ``BUCKET_ENTITIES`` entities) is regrouped into buckets from its
    chunks' parts, so that comparing it holds one bucket in memory; every other scope is read nowhere here."""
    chunks: dict[ScopeKey, list[str]] = {}
    sizes: dict[ScopeKey, int] = {}
    for fold in folds:
        for n, (database, schema, count) in enumerate(fold.scopes):
            chunks.setdefault((database, schema), []).append(
                fingerprint_chunk_part(fingerprint_chunk(fold.chunk_unit, fold.index), n)
            )
            sizes[(database, schema)] = sizes.get((database, schema), 0) + count
    scopes: list[ScopeFingerprints] = []
    large = {scope for scope, size in sizes.items() if buckets_for(size) > 1}
    writer = ScopePartWriter(platform, run_id, {scope: sizes[scope] for scope in large})
    for (database, schema), names in chunks.items():
        if (database, schema) in large:
            continue
        scopes.append(ScopeFingerprints(database, schema, run_id, [0], names))
    for database, schema in [scope for scope in chunks if scope in large]:  # chunk order: a redo writes the same parts
        loads = [
            functools.partial(platform.get_json, fingerprint_chunk_part_key(run_id, name))
            for name in chunks[(database, schema)]
        ]
        for stored in prefetched(loads):
            if stored is None:
                raise ArtifactMissingError(f"run {run_id}: fingerprints of schema {schema!r} of {database!r} are gone")
            for row in stored:
                writer.add(row)
        writer.flush()
    return scopes + writer.scopes()


def load_index(platform: Platform, run_id: str) -> FingerprintIndex | None:
    """A run's fingerprint index; a baseline stored in the layout before per-scope parts is migrated once."""
    return index_from(platform, run_id, platform.get_json(fingerprint_parts_key(run_id)))


def index_from(platform: Platform, run_id: str, stored: Any | None) -> FingerprintIndex | None:
    """A run's fingerprint index from its stored entry as read (``load_index``)."""
    if stored is None:
        return None
    if isinstance(stored, dict):
        return FingerprintIndex.from_json(stored)
    sizes: dict[ScopeKey, int] = {}
    for bucket, count in enumerate(stored):
        for part in range(count):
            for row in platform.get_json(fingerprint_part_key(run_id, bucket, part)) or []:
                sizes[(row[3], row[4])] = sizes.get((row[3], row[4]), 0) + 1
    writer = ScopePartWriter(platform, run_id, sizes)
    for bucket, count in enumerate(stored):
        for part in range(count):
            for row in platform.get_json(fingerprint_part_key(run_id, bucket, part)) or []:
                writer.add(row)
    index = FingerprintIndex(writer.scopes())
    platform.save_json(fingerprint_parts_key(run_id), index.to_json(), ttl_seconds=NO_TTL)
    for key in owned_part_keys(run_id, stored):
        platform.delete_json(key)
    return index


def bucket_part_keys(scope: ScopeFingerprints | None, bucket: int) -> list[str]:
    """The stored parts that hold bucket ``bucket`` of a scope (of however many buckets ``load_bucket`` is given)."""
    return [] if scope is None else scope.bucket_keys(bucket % len(scope.parts))


def load_bucket(
    stored_parts: dict[str, Any | None], scope: ScopeFingerprints | None, bucket: int, buckets: int
) -> dict[str, list[Any]]:
    """Bucket ``bucket`` of ``buckets`` of a scope, by qualifiedName: part of one stored bucket when the scope has
    fewer. ``stored_parts``: the entries of its ``bucket_part_keys``, as read. The rows stay rows (see ``compare``)."""
    rows: dict[str, list[Any]] = {}
    if scope is None:
        return rows
    narrower = len(scope.parts) < buckets
    for key in bucket_part_keys(scope, bucket):
        stored = stored_parts.get(key)
        if stored is None:  # compared as absent (its entities "created"), as a baseline without fingerprints is
            log.warning("fingerprint part %s is gone", key)
        elif narrower:
            rows.update((row[0], row) for row in stored if bucket_of(row[0], buckets) == bucket)
        else:
            rows.update((row[0], row) for row in stored)
    return rows


def forget_run(platform: Platform, run_id: str, successor: FingerprintIndex | None) -> None:
    """Removes a superseded baseline's fingerprint parts, except those its successor still refers to (the
    parts of schemas carried over unread), and its index and ledger of per-chunk parts.

    The index is read here, not taken from what the caller read earlier: a run of the same connection that
    overlapped the caller may have superseded and forgotten this baseline already, and a run planned on that one
    may refer to parts the caller's successor does not. Found gone, nothing of it is deleted again."""
    parts_key, folds_key = fingerprint_parts_key(run_id), fingerprint_folds_key(run_id)
    stored_entries = platform.get_json_many([parts_key, folds_key])
    stored = stored_entries[parts_key]
    kept_scopes = {(scope.owner, scope.scope) for scope in successor.scopes} if successor is not None else set()
    kept = {key for scope in successor.scopes for key in scope.part_keys()} if successor is not None else set()
    if isinstance(stored, list):
        doomed = owned_part_keys(run_id, stored)
    elif isinstance(stored, dict):
        doomed = [
            key
            for scope in FingerprintIndex.from_json(stored).scopes
            if (scope.owner, scope.scope) not in kept_scopes
            for key in scope.part_keys()
        ]
    else:
        doomed = []
    # The run's own per-chunk parts its index never named (a chunk of an extraction attempt that was replaced).
    listed = set(doomed)
    doomed += [
        key for key in ledger_part_keys(run_id, stored_entries[folds_key]) if key not in kept and key not in listed
    ]
    for key in doomed:
        platform.delete_json(key)
    platform.delete_json(parts_key)
    platform.delete_json(folds_key)


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
    changed: set[str] | None = field(default_factory=set)  # None: every entity (a run without a baseline)
    # Unchanged entities are counted, not listed: (database, schema, type) → entities.
    unchanged: dict[tuple[str | None, str | None, str], int] = field(default_factory=dict)

    def add(self, type_name: str, kind: str, count: int = 1) -> None:
        per_type = self.counts.setdefault(type_name, dict.fromkeys(CHANGE_KINDS, 0))
        per_type[kind] += count

    def add_unchanged(self, database: str | None, schema: str | None, type_name: str, count: int = 1) -> None:
        self.add(type_name, "unchanged", count)
        key = (database, schema, type_name)
        self.unchanged[key] = self.unchanged.get(key, 0) + count

    def total(self, kind: str) -> int:
        return sum(per_type[kind] for per_type in self.counts.values())

    def unchanged_lines(self) -> list[dict[str, Any]]:
        """The change list's summary lines: one per (database, schema, type) with unchanged entities."""
        return [
            {"database": database, "schema": schema, "typeName": type_name, "change": "unchanged", "count": count}
            for (database, schema, type_name), count in sorted(
                self.unchanged.items(), key=lambda item: (item[0][0] or "", item[0][1] or "", item[0][2])
            )
        ]


def compare(
    platform: Platform,
    own: list[ScopeFingerprints],
    previous: FingerprintIndex | None,
    scope: Scope,
    emit: Callable[[str, dict[str, Any]], None],
    keep_changed: bool,
    carried: dict[tuple[str, str], dict[str, int]] | None = None,
) -> Changes:
    """Marks every entity created / updated / unchanged and lists deletions, one bucket of one scope at a time.

    ``own`` are the scopes this run read; ``carried`` the (database, schema) scopes it took from the baseline
    unread, with their entities per type: counted unchanged without reading a fingerprint. ``emit(kind, line)``
    receives ``("change", {...})`` lines of created and updated entities, then one summary line per (database,
    schema, type) of unchanged ones, and ``("deleted", {...})`` lines as they are found.
    """
    changes = Changes()
    carried = carried or {}
    for (database, schema), per_type in carried.items():
        for type_name, count in per_type.items():
            changes.add_unchanged(database, schema, type_name, count)
    mine = {entry.scope: entry for entry in own}
    before_scopes = previous.by_scope() if previous is not None else {}
    compared = list(mine) + [key for key in before_scopes if key not in mine and key not in carried]

    def both(
        key: ScopeKey, now: ScopeFingerprints | None, then: ScopeFingerprints | None, bucket: int, buckets: int
    ) -> tuple[ScopeKey, dict[str, list[Any]], dict[str, list[Any]]]:
        # This run's parts and the baseline's in one round trip (a scope folded per chunk has a part per chunk).
        stored = platform.get_json_many(bucket_part_keys(now, bucket) + bucket_part_keys(then, bucket))
        return key, load_bucket(stored, now, bucket, buckets), load_bucket(stored, then, bucket, buckets)

    loads: list[Callable[[], tuple[ScopeKey, dict[str, list[Any]], dict[str, list[Any]]]]] = []
    for key in compared:
        now, then = mine.get(key), before_scopes.get(key)
        buckets = max(len(entry.parts) for entry in (now, then) if entry is not None)
        loads += [functools.partial(both, key, now, then, bucket, buckets) for bucket in range(buckets)]
    # A few buckets read ahead (each is at most about FLUSH_AT fingerprints per part: memory stays bounded).
    # Per entity, only its row's digest is looked at: most entities are unchanged, and are only counted (per type:
    # a bucket's rows are all of its scope); a Fingerprint is made only of a vanished one.
    for (bucket_database, bucket_schema), current, before in prefetched(loads, ahead=2):
        unchanged: dict[str, int] = {}
        for qn, row in current.items():
            old = before.get(qn)
            if old is not None and old[2] == row[2]:
                unchanged[row[1]] = unchanged.get(row[1], 0) + 1
                continue
            kind = "created" if old is None else "updated"
            changes.add(row[1], kind)
            if keep_changed and changes.changed is not None:
                changes.changed.add(qn)
            emit("change", {"typeName": row[1], "qualifiedName": qn, "change": kind})
        for type_name, count in unchanged.items():
            changes.add_unchanged(bucket_database, bucket_schema, type_name, count)
        for qn, old in before.items():
            if qn not in current:
                record = Fingerprint.from_row(old)
                if scope.selects(record):
                    changes.add(record.type_name, "deleted")
                    emit("deleted", {"typeName": record.type_name, "qualifiedName": qn})
    for line in changes.unchanged_lines():
        emit("change", line)
    return changes
