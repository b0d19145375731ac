"""The synthetic catalog: its shape, its DDL, and the cached PostgreSQL cluster that holds it."""

from __future__ import annotations

import fcntl
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from pgmeta_bench.common import (
    BENCH_DATABASE,
    CATALOG_VERSION,
    USER_SCHEMA_FILTER,
    BenchError,
    say,
)
from pgmeta_devstack.layout import free_port_block
from pgmeta_devstack.postgres import PostgresServer, embedded_bin_dir

TABLES_PER_BATCH = 200  # a few hundred locks per implicit transaction, far below the shared lock table
VIEW_EVERY = 10  # one two-table join view per this many tables
VIEW_COLUMNS_PER_SIDE = 3  # plus each side's id: 8 view columns, as in the FINDINGS catalog
COLUMN_TYPES = (
    "integer",
    "text",
    "varchar(64)",
    "numeric(12,2)",
    "timestamptz",
    "boolean",
    "jsonb",
    "date",
    "uuid",
    "bigint",
    "varchar(255)",
    "smallint",
    "double precision",
    "numeric(18,4)",
    "timestamp",
    "real",
    "bytea",
    "char(8)",
    "interval",
    "inet",
)
# Each stage is a command topic and a result topic; with fan-out a stage has one pair per work unit.
# Preflight is optional, so the harness also measures pgmeta versions that have none.


@dataclass(frozen=True)
class CatalogShape:
    """S schemas x T tables x C columns, with FKs, comments and join views derived from the three numbers."""

    schemas: int
    tables: int
    columns: int

    def __post_init__(self) -> None:
        if self.schemas < 1 or self.tables < 1 or self.columns < 2:
            raise ValueError("need at least 1 schema, 1 table per schema and 2 columns per table")

    @property
    def key(self) -> str:
        return f"{self.schemas}x{self.tables}x{self.columns}"

    @property
    def views_per_schema(self) -> int:
        return self.tables // VIEW_EVERY

    @property
    def view_columns(self) -> int:
        return 2 * (1 + min(VIEW_COLUMNS_PER_SIDE, self.columns - 2))

    def expected_counts(self) -> dict[str, int]:
        """What the generator creates; compared with pg_catalog to catch a stale or half-built cache."""
        views = self.schemas * self.views_per_schema
        return {
            "Table": self.schemas * self.tables,
            "View": views,
            "Column": self.schemas * self.tables * self.columns + views * self.view_columns,
        }

    @property
    def marker(self) -> str:
        """Written as the database comment once the catalog is complete: the cache's proof of completeness."""
        return f"pgmeta bench catalog v{CATALOG_VERSION}: {self.key}"


def _schema_name(s: int) -> str:
    return f"s{s:04d}"


def _table_name(t: int) -> str:
    return f"t{t:04d}"


def _table_ddl(shape: CatalogShape, schema: str, t: int) -> str:
    """One table: bigint primary key, a foreign key to the previous table on odd tables, mixed column types."""
    columns = ["id bigint PRIMARY KEY"]
    if t % 2 == 1:
        columns.append(f"neighbour_id bigint REFERENCES {schema}.{_table_name(t - 1)} (id)")
    else:
        columns.append("c01 bigint")
    for c in range(2, shape.columns):
        column_type = COLUMN_TYPES[(c + t) % len(COLUMN_TYPES)]
        not_null = " NOT NULL" if c % 5 == 0 else ""
        columns.append(f"c{c:02d} {column_type}{not_null}")
    name = f"{schema}.{_table_name(t)}"
    body = ",\n  ".join(columns)
    return (
        f"CREATE TABLE {name} (\n  {body}\n);\n"
        f"COMMENT ON TABLE {name} IS 'synthetic table {t} of schema {schema}, {shape.columns} columns';\n"
    )


def _view_ddl(shape: CatalogShape, schema: str, v: int) -> str:
    """View ``v`` joins table 10v+1 to its neighbour 10v along the foreign key."""
    left, right = _table_name(VIEW_EVERY * v), _table_name(VIEW_EVERY * v + 1)
    picked = [f"c{c:02d}" for c in range(2, 2 + min(VIEW_COLUMNS_PER_SIDE, shape.columns - 2))]
    select = [
        "a.id AS a_id",
        *(f"a.{c} AS a_{c}" for c in picked),
        "b.id AS b_id",
        *(f"b.{c} AS b_{c}" for c in picked),
    ]
    name = f"{schema}.v{v:04d}"
    return (
        f"CREATE VIEW {name} AS SELECT {', '.join(select)}\n"
        f"  FROM {schema}.{right} b JOIN {schema}.{left} a ON a.id = b.neighbour_id;\n"
        f"COMMENT ON VIEW {name} IS 'join of {left} and {right}';\n"
    )


def catalog_batches(shape: CatalogShape) -> Iterator[str]:
    """The catalog's DDL as a few large multi-statement batches (each one implicit transaction, one round trip).

    A view follows the second of its two tables, so every batch only refers to objects already created.
    """
    yield "".join(
        f"CREATE SCHEMA {_schema_name(s)};\nCOMMENT ON SCHEMA {_schema_name(s)} IS 'synthetic schema {s}';\n"
        for s in range(shape.schemas)
    )
    batch: list[str] = []
    tables_in_batch = 0
    for s in range(shape.schemas):
        schema = _schema_name(s)
        for t in range(shape.tables):
            batch.append(_table_ddl(shape, schema, t))
            if t % VIEW_EVERY == 1 and t // VIEW_EVERY < shape.views_per_schema:
                batch.append(_view_ddl(shape, schema, t // VIEW_EVERY))
            tables_in_batch += 1
            if tables_in_batch == TABLES_PER_BATCH:
                yield "".join(batch)
                batch, tables_in_batch = [], 0
    if batch:
        yield "".join(batch)


def ensure_catalog(server: PostgresServer, shape: CatalogShape) -> None:
    """Builds the catalog in database ``bench`` unless a complete one (same marker) is already there."""
    with psycopg.connect(**server.connect_kwargs(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (BENCH_DATABASE,)
        ).fetchone()
        if row is not None and row[0] == shape.marker:
            say(f"reusing the cached catalog {shape.key} in {server.data_dir}")
            return
        say(f"building the catalog {shape.key} (once; cached in {server.data_dir})")
        conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE}")
        conn.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    started = time.monotonic()
    total = shape.schemas * shape.tables
    with psycopg.connect(**server.connect_kwargs(BENCH_DATABASE), autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        reported = 0.0
        for index, batch in enumerate(catalog_batches(shape)):
            conn.execute(batch)
            done = min(total, index * TABLES_PER_BATCH)
            if done / total - reported >= 0.1:
                reported = done / total
                say(f"  {done}/{total} tables ({time.monotonic() - started:.0f} s)")
        conn.execute(f"COMMENT ON DATABASE {BENCH_DATABASE} IS '{shape.marker}'")
    say(f"catalog {shape.key} built in {time.monotonic() - started:.1f} s")


def catalog_counts(server: PostgresServer) -> dict[str, int]:
    """The entities pgmeta must write, counted straight from pg_catalog, independently of the extractor."""
    relations = f"""
        SELECT c.relkind::text, c.relispartition, count(*) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {USER_SCHEMA_FILTER}
        GROUP BY 1, 2"""
    columns = f"""
        SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {USER_SCHEMA_FILTER}"""
    schemas = f"SELECT count(*) FROM pg_namespace n WHERE {USER_SCHEMA_FILTER}"
    kinds = {"r": "Table", "p": "Table", "f": "Table", "v": "View", "m": "MaterialisedView"}
    counts: dict[str, int] = {"Connection": 1, "Database": 1}
    with psycopg.connect(**server.connect_kwargs(BENCH_DATABASE)) as conn:
        for relkind, is_partition, n in conn.execute(relations):
            type_name = "TablePartition" if is_partition else kinds[relkind]
            counts[type_name] = counts.get(type_name, 0) + int(n)
        counts["Schema"] = int(scalar(conn, schemas))
        counts["Column"] = int(scalar(conn, columns))
    return counts


def scalar(conn: psycopg.Connection[Any], sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


@contextmanager
def bench_postgres(shape: CatalogShape, cache_dir: Path, pg_port_start: int) -> Iterator[PostgresServer]:
    """The cached PostgreSQL holding ``shape``'s catalog, started on a free port and stopped afterwards."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One bench at a time per cached cluster: start-up stops whatever server still runs on the data dir,
    # which is only safe when no other bench is using it. The lock goes with the process, even on SIGKILL.
    with open(cache_dir / f"pg-{shape.key}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BenchError(f"another pgmeta-bench is using the cached catalog {shape.key} in {cache_dir}") from None
        yield from _started_bench_postgres(shape, cache_dir, pg_port_start)


def _started_bench_postgres(shape: CatalogShape, cache_dir: Path, pg_port_start: int) -> Iterator[PostgresServer]:
    """Starts the cluster (initialised on first use, with a password kept beside it) and builds the catalog."""
    data_dir = cache_dir / f"pg-{shape.key}"
    password_file = cache_dir / f"pg-{shape.key}.password"
    if not password_file.exists():
        # A cluster whose password is lost cannot be logged into: start over.
        shutil.rmtree(data_dir, ignore_errors=True)
        password_file.write_text(secrets.token_urlsafe(18))
        password_file.chmod(0o600)
    server = PostgresServer(
        data_dir, free_port_block(pg_port_start, size=1), password_file.read_text().strip(), embedded_bin_dir()
    )
    server.stop()  # a server left by an interrupted run listens on its old port
    server.start()
    try:
        say(f"bench PostgreSQL on 127.0.0.1:{server.port} ({server.version})")
        ensure_catalog(server, shape)
        yield server
    finally:
        server.stop()
