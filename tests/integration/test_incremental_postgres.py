"""Incremental runs against real PostgreSQL 18 and 15: after each kind of DDL the extractor reads, an incremental
run publishes exactly what a full run publishes (entity and extra lines, byte for byte, and the change lists),
and reads only the schema the DDL touched and the schemas whose output names it.

The stages run in-process (extract → transform → publish) over an in-memory platform; the stack through Dapr
is covered by tests/e2e/test_incremental.py.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from pgmeta_devstack.postgres import PostgresServer
from pgmeta_extractor import ahead, extraction
from pgmeta_extractor.extraction import extract_database, fingerprints_ahead, preflight, schema_params
from pgmeta_publisher.publishing import publish
from pgmeta_shared.events import (
    SERVER_UNIT,
    CredentialRef,
    DatabaseSelection,
    ExtractRequested,
    FilterSpec,
    PreflightRequested,
    PublishRequested,
    SourceSpec,
    TransformRequested,
    UnitChunks,
)
from pgmeta_shared.keys import extract_scopes_key
from pgmeta_shared.outputfiles import decode
from pgmeta_shared.scopes import ScopePlan
from pgmeta_transformer.transformation import transform

from ..fakes import InMemoryPlatform

pytestmark = pytest.mark.integration

CONNECTION_QN = "default/postgres/0000000042"
CREDENTIALS = CredentialRef(kind="secret", store="secretstore", key="pg")

# Schemas and what names what: a's orders reference b's customers (a names b); c's views read a (c names a);
# d holds a partitioned table, its partitions and a foreign table; e stands alone.
BASE_CATALOG = """
CREATE SCHEMA a; CREATE SCHEMA b; CREATE SCHEMA c; CREATE SCHEMA d; CREATE SCHEMA e;
COMMENT ON SCHEMA a IS 'orders';
CREATE TYPE b.mood AS ENUM ('ok', 'bad');
CREATE TABLE b.customers (id bigint PRIMARY KEY, name text NOT NULL, mood b.mood);
CREATE TABLE a.orders (
    id bigint PRIMARY KEY,
    customer_id bigint REFERENCES b.customers (id),
    total numeric(10, 2) DEFAULT 0,
    note varchar(20)
);
CREATE INDEX orders_total ON a.orders (total);
COMMENT ON TABLE a.orders IS 'every order';
COMMENT ON COLUMN a.orders.total IS 'in euros';
CREATE SEQUENCE a.ticket_seq;
CREATE TABLE a.tickets (id bigint DEFAULT nextval('a.ticket_seq'), title text);
CREATE FUNCTION a.double_it(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2';
CREATE PROCEDURE a.noop() LANGUAGE sql AS 'SELECT 1';
CREATE VIEW c.big_orders AS SELECT o.id, o.total FROM a.orders o WHERE o.total > 100;
CREATE MATERIALIZED VIEW c.order_totals AS SELECT customer_id, sum(total) AS total FROM a.orders GROUP BY 1;
CREATE TABLE d.events (id bigint, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE d.events_2025 PARTITION OF d.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE d.events_2026 (id bigint, at date NOT NULL);
CREATE FOREIGN DATA WRAPPER dummy_fdw;
CREATE SERVER remote FOREIGN DATA WRAPPER dummy_fdw;
CREATE FOREIGN TABLE d.remote_rates (code text, rate numeric) SERVER remote OPTIONS (table_name 'rates');
CREATE TABLE e.lonely (id int PRIMARY KEY, label text);
INSERT INTO e.lonely SELECT g, 'x' FROM generate_series(1, 10) g;
"""


@dataclass(frozen=True)
class Ddl:
    """One change to the base catalog and the schemas an incremental run must read after it."""

    name: str
    sql: str
    touched: frozenset[str]
    visible: bool = True  # False: nothing the extractor reads changes (the schema is read again all the same)


def ddl(name: str, sql: str, *touched: str, visible: bool = True) -> Ddl:
    return Ddl(name, sql, frozenset(touched), visible)


A = ("a", "c")  # a change in a is one in c too: c's views name a's columns
B = ("a", "b")  # a's foreign keys name b's columns
DDLS = [
    ddl("create table", "CREATE TABLE a.refunds (id int)", *A),
    ddl("create table (alone)", "CREATE TABLE e.more (id int)", "e"),
    ddl("drop table", "DROP TABLE e.lonely", "e"),
    ddl("rename table read by a view", "ALTER TABLE a.orders RENAME TO purchases", *A),
    ddl("rename table", "ALTER TABLE e.lonely RENAME TO alone", "e"),
    ddl("add column", "ALTER TABLE e.lonely ADD COLUMN extra date", "e"),
    ddl("drop column", "ALTER TABLE a.orders DROP COLUMN note", *A),
    ddl("alter column type", "ALTER TABLE a.orders ALTER COLUMN note TYPE varchar(50)", *A),
    ddl("rename column named by a foreign key", "ALTER TABLE b.customers RENAME COLUMN id TO customer_id", *B),
    ddl("rename column", "ALTER TABLE e.lonely RENAME COLUMN label TO title", "e"),
    ddl("set not null", "ALTER TABLE e.lonely ALTER COLUMN label SET NOT NULL", "e"),
    # PostgreSQL 18 drops a NOT NULL constraint row too, which the fingerprint does not hash: pg_attribute shows it.
    ddl("drop not null", "ALTER TABLE b.customers ALTER COLUMN name DROP NOT NULL", *B),
    ddl("set default", "ALTER TABLE e.lonely ALTER COLUMN label SET DEFAULT 'y'", "e"),
    ddl("create view", "CREATE VIEW c.small_orders AS SELECT id FROM a.orders WHERE total < 10", "c"),
    ddl("drop view", "DROP VIEW c.big_orders", "c"),
    ddl(
        "view replaced",
        "CREATE OR REPLACE VIEW c.big_orders AS SELECT o.id, o.total FROM a.orders o WHERE o.total > 500",
        "c",
    ),
    ddl("rename view", "ALTER VIEW c.big_orders RENAME TO large_orders", "c"),
    ddl("create matview", "CREATE MATERIALIZED VIEW e.counted AS SELECT count(*) AS n FROM e.lonely", "e"),
    ddl("drop matview", "DROP MATERIALIZED VIEW c.order_totals", "c"),
    ddl("create function", "CREATE FUNCTION e.triple(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 3'", "e"),
    ddl(
        "function replaced",
        "CREATE OR REPLACE FUNCTION a.double_it(x int) RETURNS int LANGUAGE sql AS 'SELECT x + x'",
        *A,
    ),
    ddl("rename function", "ALTER FUNCTION a.double_it(int) RENAME TO twice", *A),
    ddl("drop function", "DROP FUNCTION a.double_it(int)", *A),
    ddl("create procedure", "CREATE PROCEDURE e.nothing() LANGUAGE sql AS 'SELECT 1'", "e"),
    ddl("drop procedure", "DROP PROCEDURE a.noop()", *A),
    ddl("create index", "CREATE INDEX lonely_label ON e.lonely (label)", "e"),
    ddl("drop index", "DROP INDEX a.orders_total", *A),
    ddl("rename index", "ALTER INDEX a.orders_total RENAME TO orders_by_total", *A),
    ddl("add check constraint", "ALTER TABLE e.lonely ADD CONSTRAINT positive CHECK (id > 0)", "e"),
    ddl("add unique constraint", "ALTER TABLE e.lonely ADD CONSTRAINT one_label UNIQUE (id, label)", "e"),
    ddl("drop foreign key", "ALTER TABLE a.orders DROP CONSTRAINT orders_customer_id_fkey", *A),
    ddl("create sequence", "CREATE SEQUENCE e.numbers", "e", visible=False),
    ddl(
        "attach partition",
        "ALTER TABLE d.events ATTACH PARTITION d.events_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')",
        "d",
    ),  # fmt: skip
    ddl("detach partition", "ALTER TABLE d.events DETACH PARTITION d.events_2025", "d"),
    ddl("alter foreign table", "ALTER FOREIGN TABLE d.remote_rates OPTIONS (SET table_name 'rates_2')", "d"),
    ddl("add foreign table column", "ALTER FOREIGN TABLE d.remote_rates ADD COLUMN since date", "d"),
    ddl("comment on table", "COMMENT ON TABLE e.lonely IS 'alone'", "e"),
    ddl("comment on column", "COMMENT ON COLUMN e.lonely.label IS 'what it says'", "e"),
    ddl("comment changed", "COMMENT ON TABLE a.orders IS 'all orders'", *A),
    ddl("comment dropped", "COMMENT ON COLUMN a.orders.total IS NULL", *A),
    ddl("comment on schema", "COMMENT ON SCHEMA e IS 'by itself'", "e"),
    ddl("comment on function", "COMMENT ON FUNCTION a.double_it(int) IS 'x2'", *A),
    ddl("grant", "GRANT SELECT ON e.lonely TO reader", "e", visible=False),
    ddl("owner change", "ALTER TABLE e.lonely OWNER TO reader", "e"),
    ddl("schema owner change", "ALTER SCHEMA e OWNER TO reader", "e"),
    ddl("rename type used by a column", "ALTER TYPE b.mood RENAME TO feeling", *B),
    ddl("rename schema", "ALTER SCHEMA e RENAME TO e2", "e2"),
    ddl("create schema", "CREATE SCHEMA f; CREATE TABLE f.t (id int)", "f"),
    ddl("drop schema", "DROP SCHEMA e CASCADE"),
    ddl(
        "statistics: rows added and analysed",
        "INSERT INTO e.lonely SELECT g, 'y' FROM generate_series(11, 500) g; ANALYZE e.lonely",
        "e",
    ),  # fmt: skip
]


# -- the pipeline, in-process ------------------------------------------------------------------------------------


@dataclass
class Published:
    lines: list[bytes]  # every entity and extra line, sorted
    changes: list[bytes]
    deleted: list[bytes]
    manifest: dict[str, Any]
    extracted: set[str]


_run_ids = itertools.count()


def run_pipeline(
    server: PostgresServer,
    platform: InMemoryPlatform,
    database: str,
    *,
    full: bool = False,
    after_preflight: Callable[[], None] | None = None,
) -> Published:
    """One run, its stages in order, as the workflow sends them (preflight names the connection unless ``full``)."""
    run_id = f"r{next(_run_ids)}"
    source = SourceSpec(host="127.0.0.1", port=server.port, username="postgres", database=database)
    incremental_for = None if full else CONNECTION_QN
    checked = preflight(
        PreflightRequested(run_id=run_id, source=source, credentials=CREDENTIALS, incremental_for=incremental_for),
        platform,
    )
    if after_preflight is not None:
        after_preflight()
    units = [UnitChunks(unit=SERVER_UNIT, chunk_count=1)]
    extracted: set[str] = set()
    for selection in checked.databases:
        done = extract_database(
            ExtractRequested(
                run_id=run_id,
                source=source,
                credentials=CREDENTIALS,
                connection_qualified_name=CONNECTION_QN,
                selection=selection,
                full=full,
            ),
            platform,
        )
        units.append(UnitChunks(unit=selection.unit, chunk_count=done.chunk_count, generation=done.generation))
        plan = ScopePlan.model_validate(platform.stored_json(extract_scopes_key(run_id, selection.unit)))
        extracted |= set(plan.extracted)
    for unit in units:
        transform(
            TransformRequested(
                run_id=run_id,
                connection_qualified_name=CONNECTION_QN,
                unit=unit.unit,
                chunk_count=unit.chunk_count,
                generation=unit.generation,
            ),
            platform,
        )
    command = PublishRequested(
        run_id=run_id, connection_qualified_name=CONNECTION_QN, units=units, counts={}, database=database
    )
    publish(command, platform)
    prefix = f"{CONNECTION_QN}/{run_id}"
    manifest = json.loads(platform.objects[("objectstore", f"{prefix}/manifest.json")])

    def lines_of(selected: list[dict[str, Any]]) -> list[bytes]:
        stored = {
            entry["name"]: platform.objects[("objectstore", f"{entry.get('folder', prefix)}/{entry['name']}")]
            for entry in selected
        }
        return sorted(line for name, blob in stored.items() for line in decode(name, blob).splitlines())

    files = manifest["files"]
    return Published(
        lines=lines_of([f for f in files if "type" in f or "extra" in f]),
        changes=lines_of([f for f in files if f["name"].startswith("changes-")]),
        deleted=lines_of([f for f in files if f["name"].startswith("deleted-")]),
        manifest=manifest,
        extracted=extracted,
    )


@pytest.fixture(scope="module")
def base_database(postgres: PostgresServer) -> Iterator[str]:
    """The base catalog in a template database, analysed so its statistics hold still; dropped afterwards (the
    PostgreSQL server is shared by the whole session, and other modules extract every database on it)."""
    with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS incr_base")
        conn.execute("CREATE DATABASE incr_base")
    with psycopg.connect(**postgres.connect_kwargs("incr_base"), autocommit=True) as conn:
        conn.execute(BASE_CATALOG)
        conn.execute("VACUUM ANALYZE")
    try:
        yield "incr_base"
    finally:
        with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS incr_base WITH (FORCE)")


_databases = itertools.count()


@pytest.fixture
def case_database(postgres: PostgresServer, base_database: str) -> Iterator[str]:
    name = f"incr_case_{next(_databases)}"
    with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {base_database}")
    try:
        yield name
    finally:
        with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def apply(server: PostgresServer, database: str, sql: str) -> None:
    with psycopg.connect(**server.connect_kwargs(database), autocommit=True) as conn:
        conn.execute(sql)


def assert_same_output(incremental: Published, full: Published) -> None:
    assert incremental.lines == full.lines
    assert incremental.changes == full.changes
    assert incremental.deleted == full.deleted
    assert incremental.manifest["counts"] == full.manifest["counts"]
    assert incremental.manifest["changes"] == full.manifest["changes"]


def platform_for(server: PostgresServer) -> InMemoryPlatform:
    return InMemoryPlatform(secrets={"secretstore": {"pg": {"password": server.password}}})


# -- the tests ---------------------------------------------------------------------------------------------------


def test_nothing_changed_reads_no_schema_and_publishes_the_same(postgres: PostgresServer, case_database: str) -> None:
    platform = platform_for(postgres)
    first = run_pipeline(postgres, platform, case_database)
    assert first.extracted == {"public", "a", "b", "c", "d", "e"}
    again = run_pipeline(postgres, platform, case_database)
    assert again.extracted == set()
    assert again.manifest["schemas"] == {"extracted": 0, "skipped": 6}
    assert again.lines == first.lines
    assert again.manifest["counts"] == first.manifest["counts"]
    assert again.manifest["changes"]["unchanged"] == sum(first.manifest["counts"].values())
    assert {k: v for k, v in again.manifest["changes"].items() if k != "unchanged"} == {
        "created": 0,
        "updated": 0,
        "deleted": 0,
    }
    # The carried schemas' files are referred to in the first run's folder, not copied; the rest are the run's.
    own_folder, first_folder = (f"{CONNECTION_QN}/{m['run_id']}" for m in (again.manifest, first.manifest))
    for entry in again.manifest["files"]:
        assert entry.get("folder", own_folder) == (first_folder if "schema" in entry else own_folder), entry
        assert ("objectstore", f"{entry.get('folder', own_folder)}/{entry['name']}") in platform.objects
    carried = [entry["name"] for entry in again.manifest["files"] if "schema" in entry]
    assert carried and not any(("objectstore", f"{own_folder}/{name}") in platform.objects for name in carried)


@pytest.mark.parametrize("change", DDLS, ids=lambda change: change.name)
def test_each_ddl_kind(postgres: PostgresServer, case_database: str, change: Ddl) -> None:
    platform = platform_for(postgres)
    baseline = run_pipeline(postgres, platform, case_database)
    full_platform = copy.deepcopy(platform)  # the same baseline, compared by a full run
    apply(postgres, case_database, change.sql)
    incremental = run_pipeline(postgres, platform, case_database)
    full = run_pipeline(postgres, full_platform, case_database, full=True)
    assert incremental.extracted == change.touched
    assert_same_output(incremental, full)
    assert (incremental.lines != baseline.lines) == change.visible, "the DDL must show in the output (or not)"


def test_random_ddl_sequences(postgres: PostgresServer, case_database: str) -> None:
    """Seeded random sequences of DDL, an incremental run after each step equal to a full run of the same step."""
    rng = random.Random(13)
    independent = [d for d in DDLS if d.name not in {"drop schema", "rename schema", "drop table", "rename table"}]
    platform = platform_for(postgres)
    run_pipeline(postgres, platform, case_database)
    applied: list[str] = []
    for change in rng.sample(independent, 8):
        try:
            apply(postgres, case_database, change.sql)
        except psycopg.Error:
            continue  # an earlier step removed what this one alters
        applied.append(change.name)
        full_platform = copy.deepcopy(platform)
        incremental = run_pipeline(postgres, platform, case_database)
        full = run_pipeline(postgres, full_platform, case_database, full=True)
        assert incremental.extracted <= {"a", "b", "c", "d", "e", "public"}, applied
        assert_same_output(incremental, full)
    assert len(applied) >= 5


# -- fingerprints started ahead by preflight (pgmeta_extractor.ahead) ------------------------------------------------


def ahead_queries_finished(timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(t.name == "pgmeta-fingerprints-ahead" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the fingerprint query started ahead did not finish"
        time.sleep(0.01)


def test_the_extract_takes_the_fingerprints_preflight_started_and_a_change_in_between_is_read_next_time(
    postgres: PostgresServer, case_database: str
) -> None:
    platform = platform_for(postgres)
    first = run_pipeline(postgres, platform, case_database)
    full_platform = copy.deepcopy(platform)

    def comment_after_the_fingerprints() -> None:
        ahead_queries_finished()
        apply(postgres, case_database, "COMMENT ON TABLE e.lonely IS 'alone'")

    # The extract stage compared the fingerprints taken during preflight, before the comment: nothing read.
    between = run_pipeline(postgres, platform, case_database, after_preflight=comment_after_the_fingerprints)
    assert between.extracted == set()
    assert between.lines == first.lines
    # The change is not lost: the next run's fingerprints differ from the ones kept, so e is read.
    after = run_pipeline(postgres, platform, case_database)
    full = run_pipeline(postgres, full_platform, case_database, full=True)
    assert after.extracted == {"e"}
    assert_same_output(after, full)
    assert after.lines != first.lines


def test_preflight_starts_fingerprints_only_for_a_run_that_compares_them(
    postgres: PostgresServer, case_database: str
) -> None:
    platform = platform_for(postgres)
    source = SourceSpec(host="127.0.0.1", port=postgres.port, username="postgres", database=case_database)

    def started_by(run_id: str, incremental_for: str | None) -> bool:
        checked = preflight(
            PreflightRequested(run_id=run_id, source=source, credentials=CREDENTIALS, incremental_for=incremental_for),
            platform,
        )
        (selection,) = checked.databases
        return fingerprints_ahead.take(run_id, case_database, schema_params(selection, FilterSpec())) is not None

    assert not started_by("no-baseline-yet", CONNECTION_QN)
    run_pipeline(postgres, platform, case_database)
    assert not started_by("full-run", None)
    assert not started_by("other-connection", "default/postgres/0000000043")
    assert started_by("re-run", CONNECTION_QN)
    ahead_queries_finished()


def test_fingerprints_ahead_that_failed_are_asked_again(
    postgres: PostgresServer, case_database: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    platform = platform_for(postgres)
    first = run_pipeline(postgres, platform, case_database)
    monkeypatch.setattr(ahead, "schema_fingerprints_query", lambda version: "SELECT 1 / 0 AS schema_name")
    with caplog.at_level(logging.WARNING, logger="pgmeta_extractor.extraction"):
        again = run_pipeline(postgres, platform, case_database)
    assert "fingerprints started ahead failed" in caplog.text
    assert again.extracted == set()
    assert again.lines == first.lines


def test_fingerprints_ahead_are_taken_once_and_forgotten_when_not_taken(
    postgres: PostgresServer, case_database: str
) -> None:
    source = SourceSpec(host="127.0.0.1", port=postgres.port, username="postgres", database=case_database)
    params = schema_params(DatabaseSelection(database=case_database, unit="db000"), FilterSpec())
    started = ahead.FingerprintsAhead(ttl_seconds=0.0)
    started.start("kept", source, lambda: postgres.password, case_database, params)
    future = started.take("kept", case_database, params)
    assert future is not None and {r["schema_name"] for r in future.result(timeout=30)} >= {"a", "b", "e"}
    assert started.take("kept", case_database, params) is None
    started.start("never-taken", source, lambda: postgres.password, case_database, params)
    time.sleep(0.01)
    started.start("next", source, lambda: postgres.password, case_database, params)  # forgets what expired
    assert started.take("never-taken", case_database, params) is None
    assert started.take("next", case_database, params | {"schema_exclude": ["^e$"]}) is None, "other filters"
    ahead_queries_finished()


def test_preflight_does_not_fail_for_fingerprints_it_cannot_start(
    postgres: PostgresServer, case_database: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Starting them is a speed-up: a state store error on the way is logged, and the extract stage asks itself."""
    platform = platform_for(postgres)
    first = run_pipeline(postgres, platform, case_database)

    def store_down(*args: object) -> None:
        raise ConnectionError("state store unavailable")

    monkeypatch.setattr(extraction, "baseline_for", store_down)
    with caplog.at_level(logging.WARNING, logger="pgmeta_extractor.extraction"):
        checked = preflight(
            PreflightRequested(
                run_id="store-down",
                source=SourceSpec(host="127.0.0.1", port=postgres.port, username="postgres", database=case_database),
                credentials=CREDENTIALS,
                incremental_for=CONNECTION_QN,
            ),
            platform,
        )
    assert checked.databases and "fingerprints not started ahead (ConnectionError)" in caplog.text
    monkeypatch.undo()
    again = run_pipeline(postgres, platform, case_database)
    assert again.extracted == set() and again.lines == first.lines
