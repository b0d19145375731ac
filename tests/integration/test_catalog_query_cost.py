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
from pgmeta_extractor.change_sql import schema_fingerprints_query

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


def fingerprints_query_of(server: PostgresServer) -> str:
    """The fingerprint query the extractor sends this server (it depends on the version)."""
    with psycopg.connect(**server.connect_kwargs()) as conn:
        return schema_fingerprints_query(conn.info.server_version)


QUERIES = {
    "SCHEMA_FINGERPRINTS_QUERY": "",  # per server: fingerprints_query_of
    "COUNT_QUERY": COUNT_QUERY,
    "VIEW_LIST_QUERY": VIEW_LIST_QUERY,
} | {f"CATALOG_QUERIES[{kind!r}]": sql for kind, sql in CATALOG_QUERIES.items()}


@pytest.mark.parametrize("name", list(QUERIES))
def test_query_cost_does_not_grow_with_schemas_times_catalog(
    postgres: PostgresServer, split_catalogs: dict[int, str], name: str
) -> None:
    sql = QUERIES[name] or fingerprints_query_of(postgres)
    few = buffer_hits(postgres, split_catalogs[FEW_SCHEMAS], sql)
    many = buffer_hits(postgres, split_catalogs[MANY_SCHEMAS], sql)
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


def test_the_relation_query_groups_no_catalog_table(postgres: PostgresServer, split_catalogs: dict[int, str]) -> None:
    """Joining pg_stat_all_tables for live_tuples grouped all of pg_class (and pg_index) by relation in every run,
    however few schemas it read: ~80 ms of the 120 ms a one-schema read of the benchmark catalog took. The
    relation query's aggregates are per relation (plain aggregates over a few rows), never grouped."""
    statement = re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", CATALOG_QUERIES["relation"].replace("%", "%%"))
    with psycopg.connect(**postgres.connect_kwargs(split_catalogs[MANY_SCHEMAS])) as conn:
        row = conn.execute(f"EXPLAIN (FORMAT JSON) {statement}", FILTERS | {"only_schemas": ["s0"]}).fetchone()
    assert row is not None
    grouped = [n for n in plan_nodes(row[0][0]["Plan"]) if n["Node Type"] == "Aggregate" and n["Strategy"] != "Plain"]
    assert not grouped, f"the relation query groups rows: {[(n['Strategy'], n.get('Group Key')) for n in grouped]}"


def test_live_tuples_are_the_statistics_views(postgres: PostgresServer) -> None:
    """live_tuples is pg_stat_get_live_tuples() called directly: for every relation the relation query reads it is
    pg_stat_all_tables.n_live_tup, and NULL where that view has no row (views, foreign tables)."""
    with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS cost_live_tuples")
        conn.execute("CREATE DATABASE cost_live_tuples")
    try:
        with psycopg.connect(**postgres.connect_kwargs("cost_live_tuples"), autocommit=True) as conn:
            conn.execute("""
                CREATE SCHEMA k;
                CREATE TABLE k.filled (id int PRIMARY KEY, label text);
                INSERT INTO k.filled SELECT g, repeat('x', 3000) FROM generate_series(1, 40) g;
                CREATE TABLE k.empty (id int);
                CREATE VIEW k.seen AS SELECT id FROM k.filled;
                CREATE MATERIALIZED VIEW k.counted AS SELECT count(*) AS n FROM k.filled;
                CREATE TABLE k.events (id int, at date) PARTITION BY RANGE (at);
                CREATE TABLE k.events_2026 PARTITION OF k.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
                INSERT INTO k.events VALUES (1, '2026-05-01'), (2, '2026-06-01');
                CREATE FOREIGN DATA WRAPPER none_fdw;
                CREATE SERVER nowhere FOREIGN DATA WRAPPER none_fdw;
                CREATE FOREIGN TABLE k.remote (code text) SERVER nowhere;
            """)
            conn.execute("SELECT pg_stat_force_next_flush()")
        statement = re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", CATALOG_QUERIES["relation"].replace("%", "%%"))
        with psycopg.connect(**postgres.connect_kwargs("cost_live_tuples")) as conn:
            extracted = {
                (r[0], r[1]): r[2]
                for r in conn.execute(f"SELECT schema_name, relation_name, live_tuples FROM ({statement}) q", FILTERS)
            }
            expected = {
                (r[0], r[1]): r[2]
                for r in conn.execute(
                    "SELECT n.nspname, c.relname, st.n_live_tup FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " LEFT JOIN pg_stat_all_tables st ON st.relid = c.oid WHERE n.nspname = 'k'"
                    " AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
                )
            }
        assert extracted == expected
        assert extracted[("k", "filled")] == 40 and extracted[("k", "seen")] is None
        assert extracted[("k", "remote")] is None
    finally:
        with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS cost_live_tuples WITH (FORCE)")


def fingerprint_plan(server: PostgresServer, database: str) -> dict[str, Any]:
    statement = re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", fingerprints_query_of(server).replace("%", "%%"))
    with psycopg.connect(**server.connect_kwargs(database), options="-c max_parallel_workers_per_gather=0") as conn:
        row = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", FILTERS).fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


def test_the_fingerprint_query_reads_pg_attribute_once(
    postgres: PostgresServer, split_catalogs: dict[int, str]
) -> None:
    """The biggest catalog table is hashed in one pass, which also gathers the column types the schema edges need
    (a second scan for those cost ~60 ms of a benchmark run)."""
    scans = [
        n
        for n in plan_nodes(fingerprint_plan(postgres, split_catalogs[MANY_SCHEMAS]))
        if n.get("Relation Name") == "pg_attribute"
    ]
    assert len(scans) == 1, f"pg_attribute read by {[n['Node Type'] for n in scans]}"


def test_the_fingerprint_query_estimates_the_relations_it_reads(postgres: PostgresServer) -> None:
    """The user relations were estimated by a join to pg_namespace, whose statistics stay those initdb left while
    pg_class's are kept current by autovacuum: ~800 of the benchmark catalog's 21,000, so their TOAST tables were
    looked up by 10,000 index probes instead of one hash join. Here as there: pg_class analysed, pg_namespace not."""
    with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS cost_estimates")
        conn.execute("CREATE DATABASE cost_estimates")
    try:
        with psycopg.connect(**postgres.connect_kwargs("cost_estimates"), autocommit=True) as conn:
            conn.execute(catalog_ddl(MANY_SCHEMAS))
            conn.execute("ANALYZE pg_catalog.pg_class")
        relations = next(
            n for n in plan_nodes(fingerprint_plan(postgres, "cost_estimates")) if n.get("Subplan Name") == "CTE rel"
        )
    finally:
        with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS cost_estimates WITH (FORCE)")
    assert relations["Plan Rows"] * 2 >= relations["Actual Rows"], relations


def test_the_fingerprint_query_hashes_no_not_null_constraint(
    postgres: PostgresServer, split_catalogs: dict[int, str]
) -> None:
    """PostgreSQL 18 keeps a NOT NULL constraint row per non-null column (most of pg_constraint); nothing extracted
    reads them (nullability is pg_attribute.attnotnull, which SET / DROP NOT NULL rewrite), so they are not hashed."""
    database = split_catalogs[MANY_SCHEMAS]
    with psycopg.connect(**postgres.connect_kwargs(database)) as conn:
        row = conn.execute("SELECT count(*) FILTER (WHERE contype <> 'n') FROM pg_constraint").fetchone()
    assert row is not None
    scans = [n for n in plan_nodes(fingerprint_plan(postgres, database)) if n.get("Relation Name") == "pg_constraint"]
    assert scans and all(n["Actual Rows"] <= row[0] for n in scans), (row[0], [n["Actual Rows"] for n in scans])


def test_the_fingerprint_querys_column_pass_can_run_in_parallel(
    postgres: PostgresServer, split_catalogs: dict[int, str]
) -> None:
    """The pass over pg_attribute is most of the query: joined to pg_class itself (not to a CTE, whose scan keeps a
    join out of parallel workers), PostgreSQL may hand it to parallel workers when the query is run at once
    (``fetch_all``): ~0.27 s instead of ~0.42 s on the benchmark catalog. The test catalog is too small for the
    planner to choose that on its own, so its thresholds are lowered for this session only."""
    statement = re.sub(r"(?<!:):([a-z_]+)", r"%(\1)s", fingerprints_query_of(postgres).replace("%", "%%"))
    cheap_workers = "-c parallel_setup_cost=0 -c min_parallel_table_scan_size=0"
    with psycopg.connect(**postgres.connect_kwargs(split_catalogs[MANY_SCHEMAS]), options=cheap_workers) as conn:
        row = conn.execute(f"EXPLAIN (FORMAT JSON) {statement}", FILTERS).fetchone()
    assert row is not None
    columns = next(n for n in plan_nodes(row[0][0]["Plan"]) if n.get("Subplan Name") == "CTE att")
    gathered = [n for n in plan_nodes(columns) if n["Node Type"] in {"Gather", "Gather Merge"}]
    scans = [n for n in plan_nodes(columns) if n.get("Relation Name") == "pg_attribute"]
    assert gathered and scans and all(n.get("Parallel Aware") for n in scans), [
        n["Node Type"] for n in plan_nodes(columns)
    ]
