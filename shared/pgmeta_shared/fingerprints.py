"""Entity fingerprints: what an incremental run compares, written by the transformer, read by the publisher.

Stored as JSON arrays (compact: one per entity, hundreds of thousands per run) and read back as the typed
``Fingerprint``; the field order is the array order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple, Protocol

from pgmeta_shared.keys import (
    fingerprint_chunk_part,
    fingerprint_chunk_part_key,
    fingerprint_folds_key,
    fingerprint_part_key,
    fingerprint_scope_part_key,
)


class Fingerprint(NamedTuple):
    """One entity: its qualifiedName and type, a hash of its JSON line, and its scope.

    The scope (database, schema, relation, relation type) lets the publisher tell "deleted" from
    "filtered out this time" without the entity itself.
    """

    qualified_name: str
    type_name: str
    digest: str
    database: str | None
    schema: str | None
    relation: str | None
    relation_type: str | None

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Fingerprint:
        return cls(*row)


def to_rows(fingerprints: Iterable[Fingerprint]) -> list[list[Any]]:
    return [list(fingerprint) for fingerprint in fingerprints]


def from_rows(rows: Iterable[Sequence[Any]]) -> list[Fingerprint]:
    return [Fingerprint(*row) for row in rows]


# -- where a run's fingerprints are stored ---------------------------------------------------------------------

# A scope's fingerprints are split into buckets by a stable hash of the qualifiedName when the scope is large, so
# that comparing holds one bucket of one scope in memory: a power of two, about this many entities each.
BUCKET_ENTITIES = 20_000
MAX_BUCKETS = 256


def buckets_for(entities: int) -> int:
    """The bucket count of a scope of ``entities`` (1 for all but very large schemas)."""
    buckets = 1
    while buckets < MAX_BUCKETS and entities > buckets * BUCKET_ENTITIES:
        buckets *= 2
    return buckets


class ScopeFingerprints(NamedTuple):
    """One scope's (database, schema) fingerprints: the run whose parts hold them and the part count per bucket
    (as many buckets as the list is long), plus the chunks whose parts hold them (``chunks``: written as each
    chunk was published; a scope stored so has one bucket).

    The Connection's scope is (None, None), a Database's (database, None). A run that carries a schema over
    names the run that read it (``owner``), so an unchanged schema's fingerprints are written once.
    """

    database: str | None
    schema: str | None
    owner: str
    parts: list[int]
    chunks: Sequence[str] = ()  # keys.fingerprint_chunk_part names

    @property
    def scope(self) -> tuple[str | None, str | None]:
        return (self.database, self.schema)

    def bucket_keys(self, bucket: int) -> list[str]:
        """The keys of the parts that hold stored bucket ``bucket``."""
        numbered = [
            fingerprint_scope_part_key(self.owner, self.database, self.schema, bucket, part)
            for part in range(self.parts[bucket])
        ]
        folded = [fingerprint_chunk_part_key(self.owner, chunk) for chunk in self.chunks]
        return numbered + (folded if bucket == 0 else [])

    def part_keys(self) -> list[str]:
        return [key for bucket in range(len(self.parts)) for key in self.bucket_keys(bucket)]


class FingerprintIndex(NamedTuple):
    """A run's fingerprints, scope by scope; stored as ``{"scopes": [[database, schema, owner, parts], …]}``."""

    scopes: list[ScopeFingerprints]

    def to_json(self) -> dict[str, Any]:
        # A scope without chunk parts is stored as before them: an index stays readable by the version before.
        return {"scopes": [[*scope[:4], list(scope.chunks)] if scope.chunks else [*scope[:4]] for scope in self.scopes]}

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> FingerprintIndex:
        return cls([ScopeFingerprints(*row) for row in stored["scopes"]])

    def by_scope(self) -> dict[tuple[str | None, str | None], ScopeFingerprints]:
        return {scope.scope: scope for scope in self.scopes}


class FoldLedger(Protocol):
    def get_json(self, key: str) -> Any | None: ...


def folded_part_keys(store: FoldLedger, run_id: str) -> list[str]:
    """Every per-chunk fingerprint part the run wrote (its index may name fewer: see ``fingerprint_folds_key``)."""
    return ledger_part_keys(run_id, store.get_json(fingerprint_folds_key(run_id)))


def ledger_part_keys(run_id: str, ledger: dict[str, int] | None) -> list[str]:
    """``folded_part_keys`` from the run's ledger as read (None: no ledger)."""
    ledger = ledger or {}
    return [
        fingerprint_chunk_part_key(run_id, fingerprint_chunk_part(chunk, n))
        for chunk, scopes in ledger.items()
        for n in range(scopes)
    ]


def owned_part_keys(run_id: str, stored: Any) -> list[str]:
    """The fingerprint parts a run wrote itself, from its stored index (either layout): what may be deleted when
    the run is no longer a baseline, unless a later run refers to them."""
    if isinstance(stored, list):  # the layout before per-scope parts: part counts of 64 buckets
        return [
            fingerprint_part_key(run_id, bucket, part) for bucket, count in enumerate(stored) for part in range(count)
        ]
    if not isinstance(stored, dict):
        return []
    return [
        key for scope in FingerprintIndex.from_json(stored).scopes if scope.owner == run_id for key in scope.part_keys()
    ]
