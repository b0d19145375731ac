"""Which databases and schemas the filters select.

Regexes are never pasted into SQL: they are anchored here (a pattern matches a whole name) and bound as
parameters; PostgreSQL evaluates them, so the semantics are PostgreSQL's (ARE) everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pgmeta_shared.errors import InvalidRequestError
from pgmeta_shared.events import DatabaseSelection, FilterSpec, FilterValue


def anchor(pattern: str) -> str:
    return f"^(?:{pattern})$"


@dataclass(frozen=True)
class FilterPatterns:
    """The filter's regexes, flattened in a stable order for binding (1-based positions in SQL results)."""

    include_keys: list[str]
    include_values: list[FilterValue]
    exclude_keys: list[str]
    exclude_values: list[FilterValue]

    @classmethod
    def of(cls, filters: FilterSpec) -> FilterPatterns:
        include = filters.include or {}
        exclude = filters.exclude or {}
        return cls(list(include), list(include.values()), list(exclude), list(exclude.values()))

    def database_params(self) -> dict[str, Any]:
        return {
            "include_patterns": [anchor(k) for k in self.include_keys],
            "exclude_patterns": [anchor(k) for k in self.exclude_keys],
        }

    def all_regexes(self) -> list[tuple[str, str]]:
        """Every regex with a label naming where it came from, for validation messages."""
        labelled = [(f"include key {k!r}", k) for k in self.include_keys]
        labelled += [(f"exclude key {k!r}", k) for k in self.exclude_keys]
        for kind, keys, values in (
            ("include", self.include_keys, self.include_values),
            ("exclude", self.exclude_keys, self.exclude_values),
        ):
            for key, value in zip(keys, values, strict=True):
                if value != "*":
                    labelled += [(f"{kind} schema pattern {p!r} (under {key!r})", p) for p in value]
        return labelled


@dataclass
class DatabaseChoice:
    selected: list[DatabaseSelection] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unmatched_include_keys: list[str] = field(default_factory=list)


def choose_databases(
    rows: list[dict[str, Any]], filters: FilterSpec, only: str | None, patterns: FilterPatterns
) -> DatabaseChoice:
    """Applies the filters to the databases listed by DATABASES_QUERY (which matched the keys in SQL)."""
    choice = DatabaseChoice()
    matched_keys: set[int] = set()
    for row in rows:
        name = row["database_name"]
        include_hits = [patterns.include_values[i - 1] for i in row["include_matches"]]
        exclude_hits = [patterns.exclude_values[i - 1] for i in row["exclude_matches"]]
        matched_keys.update(row["include_matches"])
        if only is not None and name != only:
            continue
        if filters.include is not None and not include_hits:
            if only is not None:
                choice.skipped.append(f"database {name!r} is not selected by the include filter")
            continue
        if any(hit == "*" for hit in exclude_hits):
            choice.skipped.append(f"database {name!r} is excluded by the exclude filter")
            continue
        if not row["can_connect"]:
            choice.skipped.append(f"database {name!r}: the role lacks CONNECT privilege; its objects are invisible")
            continue
        include = [] if not include_hits or any(h == "*" for h in include_hits) else _patterns(include_hits)
        choice.selected.append(
            DatabaseSelection(
                database=name,
                unit=f"db{len(choice.selected):03d}",
                schema_include=include,
                schema_exclude=_patterns(exclude_hits),
            )
        )
    choice.unmatched_include_keys = [k for i, k in enumerate(patterns.include_keys, start=1) if i not in matched_keys]
    if only is not None and not any(r["database_name"] == only for r in rows):
        raise InvalidRequestError(f"database {only!r} does not exist or does not allow connections")
    return choice


def schema_patterns_matching_nowhere(
    rows: list[dict[str, Any]],
    selected: list[DatabaseSelection],
    patterns: FilterPatterns,
    unmatched: dict[str, set[str]],
) -> list[str]:
    """Include schema patterns that match no schema in any selected database their key covers.

    A key like ``"sales|crm"`` covers several databases and its patterns are meant for one or another of
    them: a pattern only has to match somewhere. ``unmatched`` holds, per selected database, the anchored
    patterns that matched none of its schemas.
    """
    selected_names = {selection.database for selection in selected}
    problems = []
    for index, (key, value) in enumerate(zip(patterns.include_keys, patterns.include_values, strict=True), start=1):
        covered = sorted(
            r["database_name"] for r in rows if index in r["include_matches"] and r["database_name"] in selected_names
        )
        if value == "*" or not covered:
            continue
        for pattern in value:
            if all(anchor(pattern) in unmatched.get(database, set()) for database in covered):
                names = " or ".join(repr(database) for database in covered)
                problems.append(
                    f"include schema pattern {pattern!r} (under {key!r}) matches no schema in database {names}"
                )
    return problems


def _patterns(values: list[FilterValue]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        if value != "*":
            for pattern in value:
                seen.setdefault(anchor(pattern), None)
    return list(seen)


def relation_params(selection: DatabaseSelection, filters: FilterSpec) -> dict[str, Any]:
    """Bind parameters of the SELECTION common table expression for one database."""
    return {
        "schema_include": selection.schema_include,
        "schema_exclude": selection.schema_exclude,
        "temp_re": anchor(filters.temp_table_regex) if filters.temp_table_regex else None,
        "exclude_views": filters.exclude_views,
        "exclude_empty": filters.exclude_empty_tables,
        "only_schemas": None,
    }
