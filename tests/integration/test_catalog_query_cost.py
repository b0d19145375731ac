"""The extractor's per-database queries do work proportional to the catalog, never to schemas x catalog.

A correlated subquery per schema over a whole catalog table (pg_class, pg_attribute, pg_depend, ...) is right
on a small test catalog and quadratic on a real one: the fingerprint query once re-ran its schema-edge scans
per schema (4+ CPU-s of PostgreSQL per run on 50 schemas x 200 tables). Two databases with the same objects,
split into 2 schemas or into 40, must cost about the same: the extra cost per extra schema is bounded by a
few index probes (its namespace row, owner, comment), far below one scan of a catalog table.

Measured in shared buffer hits from EXPLAIN (ANALYZE, BUFFERS), which, unlike timings, do not depend on the
machine's load; parallel workers are off so the plan and its counts are the same on every run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgmeta_devstack.postgres import PostgresServer
from pgmeta_extractor.catalog_sql import CATALOG_QUERIES, COUNT_QUERY, VIEW_DEFINITIONS_QUERY, VIEW_LIST_QUERY
from pgmeta_extractor.change_sql import SCHEMA_FINGERPRINTS_QUERY

pytestmark = pytest.mark.integration

TABLES = 120
FEW_SCHEMAS, MANY_SCHEMAS = 2, 40
# Buffer hits one more schema may add: its own rows looked up by index. Scanning pg_class alone costs more
# (~20 pages here) and grows with the catalog.
HITS_PER_EXTRA_SCHEMA = 20

FILTERS: dict[str, Any] = {
    "schema_include": [],
    "schema_exclude": [],
    "temp_re": None,
    "exclude_views": False,
    "exclude_empty": False,
    "only_schemas": None,
}


def catalog_ddl(schemas: int) -> str:
    """``TABLES`` tables in ``schemas`` schemas: primary keys, a foreign key on every other table, a view on every
    third table."""
    per_schema = TABLES // schemas
    statements = []
    for s in range(schemas):
        statements.append(f"CREATE SCHEMA s{s}; COMMENT ON SCHEMA s{s} IS 'schema {s}';")
        for t in range(per_schema):
            foreign_key = f", prev bigint REFERENCES s{s}.t{t - 1} (id)" if t % 2 else ""
            statements.append(f"CREATE TABLE s{s}.t{t} (id bigint PRIMARY KEY, label text NOT NULL{foreign_key});")
            if t % 3 == 0:
                statements.append(f"CREATE VIEW s{s}.v{t} AS SELECT id, label FROM s{s}.t{t};")
    return "\n".join(statements)


@pytest.fixture(scope="module")
def split_catalogs(postgres: PostgresServer) -> Iterator[dict[int, str]]:
    """The same objects in two databases: split into ``FEW_SCHEMAS`` and into ``MANY_SCHEMAS`` schemas."""
    databases = {FEW_SCHEMAS: "cost_few_schemas", MANY_SCHEMAS: "cost_many_schemas"}
    with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
        for name in databases.values():
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
    for schemas, name in databases.items():
        with psycopg.connect(**postgres.connect_kwargs(name), autocommit=True) as conn:
            conn.execute(catalog_ddl(schemas))
    yield databases
    with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
        for name in databases.values():
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def buffer_hits(server: PostgresServer, database: str, sql: str) -> int:
    """Shared buffer hits of one execution of ``sql`` (``:name`` parameters bound as the extractor binds them)."""
    statement = re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", sql.replace("%", "%%"))
    with psycopg.connect(**server.connect_kwargs(database), options="-c max_parallel_workers_per_gather=0") as conn:
        row = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", FILTERS).fetchone()
    assert row is not None
    return int(row[0][0]["Plan"]["Shared Hit Blocks"])


QUERIES = {
    "SCHEMA_FINGERPRINTS_QUERY": SCHEMA_FINGERPRINTS_QUERY,
    "COUNT_QUERY": COUNT_QUERY,
    "VIEW_LIST_QUERY": VIEW_LIST_QUERY,
} | {f"CATALOG_QUERIES[{kind!r}]": sql for kind, sql in CATALOG_QUERIES.items()}


@pytest.mark.parametrize("name", list(QUERIES))
def test_query_cost_does_not_grow_with_schemas_times_catalog(
    postgres: PostgresServer, split_catalogs: dict[int, str], name: str
) -> None:
    few = buffer_hits(postgres, split_catalogs[FEW_SCHEMAS], QUERIES[name])
    many = buffer_hits(postgres, split_catalogs[MANY_SCHEMAS], QUERIES[name])
    per_extra_schema = (many - few) / (MANY_SCHEMAS - FEW_SCHEMAS)
    assert per_extra_schema <= HITS_PER_EXTRA_SCHEMA, (
        f"{name}: {few} buffer hits with {FEW_SCHEMAS} schemas, {many} with {MANY_SCHEMAS} "
        f"(same {TABLES} tables): {per_extra_schema:.0f} per extra schema, a per-schema scan of a catalog table"
    )


def deepest_node_computing(plan: dict[str, Any], expression: str) -> dict[str, Any] | None:
    """The lowest plan node whose output has ``expression``: where it is evaluated (nodes above pass it on)."""
    for child in plan.get("Plans", []):
        found = deepest_node_computing(child, expression)
        if found is not None:
            return found
    return plan if any(expression in output for output in plan.get("Output", [])) else None


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def test_a_batch_of_view_definitions_reads_no_catalog_table(
    postgres: PostgresServer, split_catalogs: dict[int, str]
) -> None:
    """pg_get_viewdef locks what a view reads until the transaction ends, so definitions are read in batches of
    their own transactions. Each batch once re-evaluated the whole selection (every relation of every selected
    schema) to find its next 500 views: the 10x benchmark catalog's 20 batches took 12 s of a 0.48 s job. The
    views are listed once; a batch is their oids, and its plan scans no catalog table (only pg_get_viewdef
    looks its own views up)."""
    statement = re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", VIEW_DEFINITIONS_QUERY.replace("%", "%%"))
    with psycopg.connect(**postgres.connect_kwargs(split_catalogs[MANY_SCHEMAS])) as conn:
        oids = [row[0] for row in conn.execute("SELECT oid FROM pg_class WHERE relkind = 'v' AND oid > 16384")]
        row = conn.execute(f"EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) {statement}", {"oids": oids[:3]}).fetchone()
    assert len(oids) > 10 and row is not None
    nodes = list(plan_nodes(row[0][0]["Plan"]))
    scans = [node for node in nodes if "Relation Name" in node]
    assert not scans, f"a batch of 3 view definitions scans {[(n['Node Type'], n['Relation Name']) for n in scans]}"
    node = deepest_node_computing(row[0][0]["Plan"], "pg_get_viewdef(")
    assert node is not None and node["Actual Rows"] == 3, "pg_get_viewdef evaluated for other rows than the batch's"


def test_columns_stream_in_order_without_sorting_the_catalogs_columns(
    postgres: PostgresServer, split_catalogs: dict[int, str]
) -> None:
    """The column query once sorted every column of the catalog before its first row (spilling to disk on the
    benchmark catalog, ~2.3 s before the first row, n log n): only relations may be sorted whole; columns come
    in attnum order per relation (an incremental sort, within one relation, is allowed)."""
    statement = re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", CATALOG_QUERIES["column"].replace("%", "%%"))
    with psycopg.connect(**postgres.connect_kwargs(split_catalogs[MANY_SCHEMAS])) as conn:
        relations = conn.execute("SELECT count(*) FROM pg_class WHERE relkind IN ('r', 'v') AND oid > 16384").fetchone()
        row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", FILTERS).fetchone()
    assert relations is not None and row is not None
    sorted_rows = [node["Actual Rows"] for node in plan_nodes(row[0][0]["Plan"]) if node["Node Type"] == "Sort"]
    assert all(rows <= relations[0] for rows in sorted_rows), f"sorts of {sorted_rows} rows ({relations[0]} relations)"
