"""Entity fingerprints: what an incremental run compares, written by the transformer, read by the publisher.

Stored as JSON arrays (compact: one per entity, hundreds of thousands per run) and read back as the typed
``Fingerprint``; the field order is the array order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple


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
