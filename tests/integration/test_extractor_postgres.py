"""The extractor against real PostgreSQL 18 and 15, checked against what the catalog says (asked independently)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from pgmeta_devstack.postgres import PostgresServer
from pgmeta_extractor import extraction
from pgmeta_extractor.extraction import extract_database, preflight
from pgmeta_extractor.source import connect
from pgmeta_shared.claimcheck import decode_chunk
from pgmeta_shared.errors import (
    AuthenticationFailedError,
    DatabaseNotFoundError,
    InvalidRequestError,
    SourceUnreachableError,
)
from pgmeta_shared.events import (
    CredentialRef,
    DatabaseSelection,
    ExtractRequested,
    FilterSpec,
    PreflightCompleted,
    PreflightRequested,
    SourceSpec,
)
from pgmeta_shared.keys import ArtifactStage, chunk_key, extract_chunk_unit

from ..fakes import InMemoryPlatform

pytestmark = pytest.mark.integration

CONNECTION_QN = "default/postgres/0000000001"
USER_SCHEMAS = "table_schema NOT IN ('pg_catalog', 'information_schema')"
CREDENTIALS = CredentialRef(kind="secret", store="secretstore", key="pg")


def source_of(server: PostgresServer, **changes: Any) -> SourceSpec:
    spec = {"host": "127.0.0.1", "port": server.port, "username": "postgres", "database": "traps"} | changes
    return SourceSpec.model_validate(spec)


def platform_for(server: PostgresServer, password: str | None = None) -> InMemoryPlatform:
    return InMemoryPlatform(secrets={"secretstore": {"pg": {"password": password or server.password}}})


def run_preflight(server: PostgresServer, filters: FilterSpec | None = None, **source: Any) -> PreflightCompleted:
    password = source.pop("password", None)
    command = PreflightRequested(
        run_id="it", source=source_of(server, **source), credentials=CREDENTIALS, filters=filters or FilterSpec()
    )
    return preflight(command, platform_for(server, password))


def extract_all(
    server: PostgresServer, filters: FilterSpec | None = None, **source: Any
) -> tuple[PreflightCompleted, list[dict[str, Any]]]:
    """Preflight, then every selected database, as the workflow would; returns every record."""
    filters = filters or FilterSpec()
    platform = platform_for(server)
    spec = source_of(server, **source)
    checked = preflight(
        PreflightRequested(run_id="it", source=spec, credentials=CREDENTIALS, filters=filters), platform
    )
    records: list[dict[str, Any]] = []
    for selection in checked.databases:
        command = ExtractRequested(
            run_id="it",
            source=spec,
            credentials=CREDENTIALS,
            connection_qualified_name=CONNECTION_QN,
            selection=selection,
            filters=filters,
        )
        completed = extract_database(command, platform)
        unit_records = [
            record
            for index in range(completed.chunk_count)
            for record in decode_chunk(
                platform.chunks[
                    chunk_key(
                        "it", ArtifactStage.EXTRACT, extract_chunk_unit(selection.unit, completed.generation), index
                    )
                ]
            )
        ]
        assert completed.counts == dict(Counter(r["kind"] for r in unit_records))
        assert completed.problems == 0, platform.get_json(f"it/report/extract/{selection.unit}")
        records += unit_records
    return checked, records


@pytest.fixture(scope="module")
def extracted(postgres: PostgresServer) -> list[dict[str, Any]]:
    _, records = extract_all(postgres)
    return records


def catalog(server: PostgresServer, sql: str, database: str = "traps") -> list[tuple[Any, ...]]:
    with psycopg.connect(**server.connect_kwargs(database)) as conn:
        return conn.execute(sql).fetchall()


def of_kind(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in records if r["kind"] == kind]


def relations(records: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["schema_name"], r["relation_name"]) for r in of_kind(records, "relation")}


# -- completeness -------------------------------------------------------------------------------------


def test_every_relation_exactly_once(postgres: PostgresServer, extracted: list[dict[str, Any]]) -> None:
    expected = set(
        catalog(postgres, f"SELECT table_schema, table_name FROM information_schema.tables WHERE {USER_SCHEMAS}")
    )
    expected |= set(catalog(postgres, "SELECT schemaname, matviewname FROM pg_matviews"))
    got = [(r["schema_name"], r["relation_name"]) for r in of_kind(extracted, "relation")]
    assert len(got) == len(set(got))
    assert set(got) == expected


def test_every_column_exactly_once(postgres: PostgresServer, extracted: list[dict[str, Any]]) -> None:
    expected = set(
        catalog(
            postgres,
            f"SELECT table_schema, table_name, column_name FROM information_schema.columns WHERE {USER_SCHEMAS}",
        )
    )
    expected |= set(
        catalog(
            postgres,
            "SELECT m.schemaname, m.matviewname, a.attname FROM pg_matviews m "
            "JOIN pg_attribute a ON a.attrelid = format('%I.%I', m.schemaname, m.matviewname)::regclass "
            "WHERE a.attnum > 0 AND NOT a.attisdropped",
        )
    )
    got = [(r["schema_name"], r["relation_name"], r["column_name"]) for r in of_kind(extracted, "column")]
    assert len(got) == len(set(got)), "a column came out more than once"
    assert set(got) == expected
    assert not any("pg.dropped" in name for _, _, name in got)


def test_schemas_and_relation_kinds(extracted: list[dict[str, Any]]) -> None:
    schemas = {r["schema_name"]: r for r in of_kind(extracted, "schema")}
    assert set(schemas) == {"public", "alpha", "beta", "Mixed Case"}
    assert schemas["alpha"]["table_count"] == 6  # items, item_details, events + 2 partitions, scratch_tmp
    assert schemas["alpha"]["view_count"] == 1
    kinds = {
        (r["schema_name"], r["relation_name"]): (r["relkind"], r["is_partition"])
        for r in of_kind(extracted, "relation")
    }
    assert kinds[("alpha", "events")] == ("p", False)
    assert kinds[("alpha", "events_rest")] == ("r", True)
    assert kinds[("alpha", "item_counts")] == ("m", False)
    assert kinds[("beta", "item_labels_upper")] == ("v", False)
    assert kinds[("beta", "remote_rates")] == ("f", False)
    by_name = {r["relation_name"]: r for r in of_kind(extracted, "relation")}
    assert (by_name["events_2025"]["parent_schema"], by_name["events_2025"]["parent_name"]) == ("alpha", "events")
    assert "FOR VALUES FROM ('2025-01-01')" in by_name["events_2025"]["partition_bound"]
    assert by_name["events"]["partition_strategy"] == "r" and by_name["events"]["partition_count"] == 2
    assert by_name["remote_rates"]["foreign_server"] == "trap_server"
    assert by_name["Order/Lines"]["comment"] == "tricky <b>name</b>"
    assert by_name["items"]["owner"] == "postgres"


def test_column_facts_match_information_schema(postgres: PostgresServer, extracted: list[dict[str, Any]]) -> None:
    columns = {(r["schema_name"], r["relation_name"], r["column_name"]): r for r in of_kind(extracted, "column")}
    facts = catalog(
        postgres,
        "SELECT table_schema, table_name, column_name, ordinal_position, is_nullable = 'YES', "
        "column_default, generation_expression, character_maximum_length, numeric_precision, numeric_scale, "
        f"nullif(identity_generation, '') FROM information_schema.columns WHERE {USER_SCHEMAS}",
    )
    assert len(facts) > 20
    for schema, table, name, ordinal, nullable, default, generated, length, precision, scale, identity in facts:
        column = columns[(schema, table, name)]
        got = (
            column["ordinal"],
            column["is_nullable"],
            column["default_value"],
            column["generation_expression"],
            column["max_length"],
            column["numeric_precision"],
            column["numeric_scale"],
        )
        assert got == (ordinal, nullable, default, generated, length, precision, scale), (schema, table, name)
        assert (column["identity"] is not None) == (identity is not None)


def test_key_membership_one_row_per_column(extracted: list[dict[str, Any]]) -> None:
    columns = {(r["schema_name"], r["relation_name"], r["column_name"]): r for r in of_kind(extracted, "column")}
    detail_id = columns[("alpha", "item_details", "id")]
    assert (detail_id["is_primary"], detail_id["is_foreign"], detail_id["is_unique"]) == (True, True, True)
    assert detail_id["references"] == [["alpha", "items", "r", False, "id"]]
    assert columns[("beta", "items", "extra")]["is_primary"] is False
    assert columns[("Mixed Case", "Order/Lines", "prix €")]["data_type"] == "numeric(8,2)"
    tags = columns[("beta", "measures", "tags")]
    assert (tags["data_type"], tags["is_array"], tags["base_type"]) == ("text[]", True, "text")
    assert columns[("beta", "measures", "qty")]["base_type"] == "integer"  # the domain's base type
    assert columns[("beta", "feelings", "mood")]["data_type"] == "beta.mood"
    assert columns[("alpha", "events", "at")]["partition_key_position"] == 1


def test_constraints_and_indexes(extracted: list[dict[str, Any]]) -> None:
    constraints = {(r["relation_name"], r["constraint_type"]): r for r in of_kind(extracted, "constraint")}
    fk = constraints[("item_details", "f")]
    assert (fk["columns"], fk["referenced_schema"], fk["referenced_relation"], fk["referenced_columns"]) == (
        ["id"],
        "alpha",
        "items",
        ["id"],
    )
    assert constraints[("item_details", "u")]["columns"] == ["id", "note"]
    assert "CHECK" in next(r["definition"] for r in of_kind(extracted, "constraint") if r["constraint_type"] == "c")
    indexes = {r["index_name"]: r for r in of_kind(extracted, "index")}
    pkey = indexes["item_details_pkey"]
    assert (pkey["is_primary"], pkey["is_unique"], pkey["method"], pkey["columns"]) == (True, True, "btree", ["id"])
    assert indexes["items_label_partial"]["predicate"] == "(label IS NOT NULL)"


def test_routines_keep_overloads_apart_and_skip_extensions(extracted: list[dict[str, Any]]) -> None:
    routines = {
        (r["schema_name"], r["routine_name"], r["identity_arguments"]): r for r in of_kind(extracted, "routine")
    }
    assert set(routines) == {
        ("alpha", "area", "r numeric"),
        ("alpha", "area", "w numeric, h numeric"),
        ("beta", "archive", "IN before date"),
        ("alpha", "total", "numeric"),
    }
    assert routines[("beta", "archive", "IN before date")]["routine_kind"] == "p"
    assert routines[("alpha", "total", "numeric")]["routine_kind"] == "a"
    area = routines[("alpha", "area", "w numeric, h numeric")]
    assert (area["language"], area["return_type"], area["comment"]) == ("sql", "numeric", "Rectangle area")
    assert "CREATE OR REPLACE FUNCTION alpha.area(w numeric, h numeric)" in area["definition"]


def test_view_lineage_is_exact(extracted: list[dict[str, Any]]) -> None:
    lineage = {
        (r["schema_name"], r["relation_name"]): sorted(map(tuple, r["sources"])) for r in of_kind(extracted, "lineage")
    }
    assert lineage == {
        ("beta", "item_labels"): [("beta", "items", "r", False)],
        ("beta", "item_labels_upper"): [("beta", "item_labels", "v", False)],
        ("alpha", "item_counts"): [("alpha", "items", "r", False)],
    }


# -- preflight, databases and filters ---------------------------------------------------------------------


def test_view_definitions_read_in_batches_are_each_views_own(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Definitions are read in batches (their locks end with each batch) and merged into the relation rows by
    (schema, name): batches of two cross every boundary the traps catalog has."""
    monkeypatch.setattr(extraction, "VIEW_DEFINITION_BATCH", 2)
    _, records = extract_all(postgres)
    read = {
        (r["schema_name"], r["relation_name"]): r["view_definition"]
        for r in of_kind(records, "relation")
        if r["relkind"] in {"v", "m"}
    }
    expected = catalog(
        postgres,
        "SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('v', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
    )
    assert len(expected) == 3  # two batches
    assert read == {(schema, name): definition for schema, name, definition in expected}


def test_without_a_database_every_connectable_database_is_extracted(postgres: PostgresServer) -> None:
    checked, records = extract_all(postgres, database=None)
    # A superuser may connect anywhere, even where CONNECT was revoked from PUBLIC.
    assert [db.database for db in checked.databases] == ["crm", "locked", "postgres", "traps"]
    assert ("leads", "contacts") in relations(records)
    assert {r["database_name"] for r in of_kind(records, "relation")} == {"crm", "traps"}
    assert {r["database_name"] for r in of_kind(records, "schema")} == {"crm", "locked", "postgres", "traps"}


def test_preflight_counts_what_the_filters_select(postgres: PostgresServer) -> None:
    checked = run_preflight(postgres, FilterSpec(include={"traps": ["alpha"]}))
    tables = catalog(
        postgres,
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'alpha' AND c.relkind IN ('r', 'p', 'f')",
    )[0][0]
    assert checked.counts["tables"] == tables and checked.counts["views"] == 1
    assert checked.counts["databases"] == 1 and checked.server_version.split(".")[0] in {"15", "18"}


def test_preflight_without_the_column_count_still_counts_tables_and_views(postgres: PostgresServer) -> None:
    filters = FilterSpec(include={"traps": ["alpha"]})
    counted = run_preflight(postgres, filters)
    command = PreflightRequested(
        run_id="it-nocols", source=source_of(postgres), credentials=CREDENTIALS, filters=filters, count_columns=False
    )
    checked = preflight(command, platform_for(postgres, None))
    assert counted.counts["columns"] > 0
    assert checked.counts == {k: v for k, v in counted.counts.items() if k != "columns"}


def test_preflight_as_an_unprivileged_role_names_the_invisible_database(postgres: PostgresServer) -> None:
    checked = run_preflight(postgres, database=None, username="reader", password="reader-pw")
    assert "locked" not in [db.database for db in checked.databases]
    assert any("'locked'" in w and "CONNECT" in w for w in checked.warnings)


@pytest.mark.parametrize(
    ("filters", "expected_schemas"),
    [
        (FilterSpec(include={"traps": ["alpha"]}), {"alpha"}),
        (FilterSpec(include={"traps": ["alpha", "Mixed.*"]}), {"alpha", "Mixed Case"}),
        (FilterSpec(include={"tr.*": "*"}, exclude={"traps": ["beta", "public"]}), {"alpha", "Mixed Case"}),
        (FilterSpec(include={"t{1}raps": ["alph[a]{1}"]}), {"alpha"}),  # {n} in a regex is no format string
        (FilterSpec(include={"traps": ["a.*"]}), {"alpha"}),  # anchored: 'beta' has an a but does not start with one
    ],
)
def test_schema_filters(postgres: PostgresServer, filters: FilterSpec, expected_schemas: set[str]) -> None:
    _, records = extract_all(postgres, filters)
    assert {r["schema_name"] for r in of_kind(records, "schema")} == expected_schemas
    assert {r["schema_name"] for r in of_kind(records, "column")} <= expected_schemas


def test_a_schema_pattern_needs_to_match_in_one_of_the_databases_its_key_covers(postgres: PostgresServer) -> None:
    # The README's shape: one key for two databases, each schema pattern meant for one of them.
    checked, records = extract_all(postgres, FilterSpec(include={"traps|crm": ["alpha", "leads"]}), database=None)
    assert [db.database for db in checked.databases] == ["crm", "traps"]
    assert {(r["database_name"], r["schema_name"]) for r in of_kind(records, "schema")} == {
        ("crm", "leads"),
        ("traps", "alpha"),
    }
    with pytest.raises(InvalidRequestError) as caught:
        run_preflight(postgres, FilterSpec(include={"traps|crm": ["alpha", "nowhere"]}), database=None)
    assert "include schema pattern 'nowhere' (under 'traps|crm') matches no schema in database 'crm' or 'traps'" in (
        str(caught.value)
    )
    assert "'alpha'" not in str(caught.value)


def test_database_filters_select_and_exclude_whole_databases(postgres: PostgresServer) -> None:
    checked, records = extract_all(
        postgres, FilterSpec(include={"crm|traps": "*"}, exclude={"traps": "*"}), database=None
    )
    assert [db.database for db in checked.databases] == ["crm"]
    assert relations(records) == {("leads", "contacts")}


def test_relation_filters(postgres: PostgresServer) -> None:
    filters = FilterSpec(
        include={"traps": ["alpha", "beta"]}, temp_table_regex=".*_tmp", exclude_views=True, exclude_empty_tables=True
    )
    _, records = extract_all(postgres, filters)
    names = relations(records)
    assert ("alpha", "scratch_tmp") not in names
    assert not any(r["relkind"] in {"v", "m"} for r in of_kind(records, "relation"))
    assert ("alpha", "items") in names and ("beta", "items") in names  # they have rows
    assert ("alpha", "item_details") not in names  # empty
    assert ("alpha", "events") in names  # a partitioned parent holds no rows of its own and is kept
    assert {r["relation_name"] for r in of_kind(records, "column")} <= {n for _, n in names}


def test_a_schemas_counts_do_not_depend_on_the_runs_filters(postgres: PostgresServer) -> None:
    # Otherwise a run with --exclude-views reports every schema with views as updated (viewsCount 0).
    def schema_counts(filters: FilterSpec) -> list[tuple[str, int, int]]:
        _, records = extract_all(postgres, filters)
        return [(r["schema_name"], r["table_count"], r["view_count"]) for r in of_kind(records, "schema")]

    plain = schema_counts(FilterSpec(include={"traps": ["alpha"]}))
    narrower = FilterSpec(
        include={"traps": ["alpha"]}, temp_table_regex=".*_tmp", exclude_views=True, exclude_empty_tables=True
    )
    filtered = schema_counts(narrower)
    assert plain == filtered and plain[0][2] > 0


@pytest.mark.parametrize(
    ("filters", "says"),
    [
        (FilterSpec(include={"tra": "*"}), "include key 'tra' matches no database"),
        (FilterSpec(include={"traps": ["nomatch"]}), "pattern 'nomatch' (under 'traps') matches no schema"),
        (FilterSpec(include={"traps": ["alpha"]}, exclude={"traps": ["alpha"]}), "select 0 tables and 0 views"),
        (FilterSpec(include={"traps": ["alph("]}), "include schema pattern 'alph(' (under 'traps') is not a valid"),
        (FilterSpec(temp_table_regex="[unclosed"), "temp_table_regex is not a valid regular expression"),
    ],
)
def test_preflight_refuses_filters_that_select_nothing_or_do_not_compile(
    postgres: PostgresServer, filters: FilterSpec, says: str
) -> None:
    with pytest.raises(InvalidRequestError, match=None) as caught:
        run_preflight(postgres, filters)
    assert says in str(caught.value)


def test_a_failed_preflight_says_so_once_in_the_runs_error(postgres: PostgresServer) -> None:
    from pgmeta_orchestrator.workflow import StageFailedError, _unwrap
    from pgmeta_shared.events import Stage

    with pytest.raises(InvalidRequestError) as caught:
        run_preflight(postgres, FilterSpec(include={"tra": "*"}))
    outcome = {"ok": False, "error_code": caught.value.code, "error": str(caught.value)}
    with pytest.raises(StageFailedError) as failed:
        _unwrap(Stage.PREFLIGHT, None, outcome)
    said = str(failed.value)
    assert said.startswith("preflight failed (invalid_request): include key 'tra' matches no database"), said
    assert said.count("preflight failed") == 1, said


def test_hostile_patterns_execute_no_sql_and_do_not_hang(postgres: PostgresServer) -> None:
    hostile = ["'; DROP TABLE alpha.items; --", "alpha' OR '1'='1", "(a+)+$", "(a|aa)+(b|bb)+c", "x{1000}"]
    for pattern in hostile:
        started = time.monotonic()
        with pytest.raises(InvalidRequestError):
            run_preflight(postgres, FilterSpec(include={"traps": [pattern]}))
        assert time.monotonic() - started < 5, pattern
        with pytest.raises(InvalidRequestError):
            run_preflight(postgres, FilterSpec(include={pattern: "*"}))
    assert catalog(postgres, "SELECT count(*) FROM alpha.items")[0][0] == 2


# -- sessions and failures -----------------------------------------------------------------------------------


def test_session_is_read_only_and_bounded(postgres: PostgresServer) -> None:
    with connect(source_of(postgres), lambda: postgres.password) as connection:
        settings: dict[str, str] = dict(
            connection.execute(
                text(
                    "SELECT name, setting FROM pg_settings WHERE name IN "
                    "('default_transaction_read_only', 'statement_timeout', 'lock_timeout', 'application_name')"
                )
            ).all()
        )
    assert settings["default_transaction_read_only"] == "on"
    assert int(settings["statement_timeout"]) > 0 and int(settings["lock_timeout"]) > 0
    assert settings["application_name"] == "pgmeta"


def test_wrong_password_says_authentication_failed(postgres: PostgresServer) -> None:
    with pytest.raises(AuthenticationFailedError, match="authentication failed for user 'postgres'"):
        run_preflight(postgres, password="wrong")


def test_unknown_database_is_named(postgres: PostgresServer) -> None:
    with pytest.raises(DatabaseNotFoundError, match="database 'nope' does not exist"):
        run_preflight(postgres, database="nope")


def test_unreachable_host_fails_within_seconds(postgres: PostgresServer) -> None:
    started = time.monotonic()
    with pytest.raises(SourceUnreachableError, match="cannot connect to PostgreSQL at 127.0.0.1:1"):
        run_preflight(postgres, port=1)
    assert time.monotonic() - started < 5


def test_a_connection_lost_mid_extraction_is_retried(postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every session of the first attempt is killed from outside while its cursors stream; the unit is
    extracted again."""
    import pgmeta_extractor.extraction as extraction

    original = extraction.iter_catalog
    killed: list[int] = []

    def iter_and_kill(connection: Any, *args: Any) -> Any:
        for count, record in enumerate(original(connection, *args)):
            if count == 3 and not killed:
                with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as admin:
                    killed.extend(
                        row[0]
                        for row in admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = 'pgmeta' AND pid <> pg_backend_pid()"
                        )
                    )
            yield record

    monkeypatch.setattr(extraction, "iter_catalog", iter_and_kill)
    monkeypatch.setattr(time, "sleep", lambda _: None)
    _, records = extract_all(postgres)
    assert len(killed) >= 2, "the sessions reading the catalog were never killed"
    got = [(r["schema_name"], r["relation_name"], r["column_name"]) for r in of_kind(records, "column")]
    assert len(got) == len(set(got)) > 20


# -- the catalog queries, one computed ahead --------------------------------------------------------------


# A query failing with a data error, and one cancelled (QueryCanceled is an OperationalError, like a lock or
# statement timeout: a failed query, not a lost connection, so it is reported rather than read again).
FAILING_QUERIES = {
    "division by zero": "SELECT 1 / (count(*) - count(*)) AS broken FROM ({}) q",
    "canceling statement due to user request": "SELECT pg_cancel_backend(pg_backend_pid()), pg_sleep(5) FROM ({}) q",
}


@pytest.mark.parametrize("error", list(FAILING_QUERIES))
def test_a_failing_catalog_query_is_reported_and_the_next_ones_still_read(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, error: str
) -> None:
    import pgmeta_extractor.extraction as extraction
    from pgmeta_extractor.catalog_sql import CATALOG_QUERIES

    queries = dict(CATALOG_QUERIES)
    failing = FAILING_QUERIES[error].format(queries["constraint"])  # the same parameters
    broken = {"schema": queries["schema"], "broken": failing, "relation": queries["relation"]}
    monkeypatch.setattr(extraction, "CATALOG_QUERIES", broken | {k: v for k, v in queries.items() if k not in broken})
    report: list[dict[str, str]] = []
    selection = DatabaseSelection(database="traps", unit="db000")
    with connect(source_of(postgres), lambda: postgres.password, "traps") as connection:
        records = list(extraction.iter_catalog(connection, selection, FilterSpec(), report))
    kinds = Counter(r["kind"] for r in records)
    assert kinds["schema"] > 2 and kinds["relation"] > 5 and kinds["column"] > 20 and kinds["index"] > 2
    assert report == [{"object": "traps: all brokens", "error": error, "hint": "see the extractor log"}], report


def test_a_reader_that_stops_early_leaves_no_session_behind(postgres: PostgresServer) -> None:
    """The query computed ahead is cancelled and every connection of the pipeline closed."""
    from pgmeta_extractor.catalog_sql import CATALOG_QUERIES
    from pgmeta_extractor.selection import relation_params
    from pgmeta_extractor.source import stream_queries

    def sessions() -> int:
        with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as admin:
            row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmeta'").fetchone()
        assert row is not None
        return int(row[0])

    selection = DatabaseSelection(database="traps", unit="db000")
    sleep = f"SELECT pg_sleep(30) AS slept FROM ({CATALOG_QUERIES['schema']}) q LIMIT 1"  # same parameters
    slow = [("schema", CATALOG_QUERIES["schema"]), ("sleep", sleep)]
    with connect(source_of(postgres), lambda: postgres.password, "traps") as connection:
        before = sessions()
        started = time.monotonic()
        queries = stream_queries(connection, slow, relation_params(selection, FilterSpec()))
        name, rows = next(queries)
        assert name == "schema" and next(rows)["schema_name"]
        assert sessions() == before + 2
        queries.close()  # pg_sleep(30) still runs ahead: cancelled, not waited for
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 5  # a backend leaves pg_stat_activity a moment after its client
        while sessions() != before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sessions() == before


def pgmeta_sessions(server: PostgresServer) -> int:
    with psycopg.connect(**server.connect_kwargs(), autocommit=True) as admin:
        row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgmeta'").fetchone()
    assert row is not None
    return int(row[0])


def test_a_background_query_sees_the_catalog_as_it_was_when_the_block_began(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first run's fingerprints are computed while the catalog is read, and must still be older than it: a
    change the catalog read may see must make the next run read the schema again. The first query is declared
    (its snapshot taken) before the block begins, even when its rows are fetched later."""
    from pgmeta_extractor import source

    declared = source._declared

    def late(*args: Any) -> Any:
        time.sleep(1)  # in the block's thread: the table below is created before a later query starts
        return declared(*args)

    monkeypatch.setattr(source, "_declared", late)
    probe = "SELECT count(*) AS tables FROM pg_class WHERE relname = 'made_after_the_snapshot'"
    with psycopg.connect(**postgres.connect_kwargs("traps"), autocommit=True) as ddl:
        ddl.execute("DROP TABLE IF EXISTS public.made_after_the_snapshot")
        try:
            with (
                connect(source_of(postgres), lambda: postgres.password, "traps") as connection,
                source.rows_in_background(connection, [(probe, {}), (probe, {})]) as (first, second),
            ):
                ddl.execute("CREATE TABLE public.made_after_the_snapshot (id int)")
                assert first.result(timeout=30) == [{"tables": 0}]
                assert second.result(timeout=30) == [{"tables": 1}]  # declared later, in its own transaction
        finally:
            ddl.execute("DROP TABLE IF EXISTS public.made_after_the_snapshot")


def test_leaving_a_block_cancels_its_background_query_and_closes_its_session(postgres: PostgresServer) -> None:
    from pgmeta_extractor.source import rows_in_background

    with connect(source_of(postgres), lambda: postgres.password, "traps") as connection:
        before = pgmeta_sessions(postgres)
        started = time.monotonic()
        with rows_in_background(connection, [("SELECT pg_sleep(30) AS slept", {})]) as (pending,):
            assert pgmeta_sessions(postgres) == before + 1
            assert not pending.done()
        assert time.monotonic() - started < 10
        deadline = time.monotonic() + 5  # a backend leaves pg_stat_activity a moment after its client
        while pgmeta_sessions(postgres) != before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pgmeta_sessions(postgres) == before


def test_a_failed_background_query_is_raised_where_its_rows_are_taken(postgres: PostgresServer) -> None:
    from sqlalchemy import exc as sa_exc

    from pgmeta_extractor.source import rows_in_background

    with (
        connect(source_of(postgres), lambda: postgres.password, "traps") as connection,
        rows_in_background(connection, [("SELECT 1 AS one", {}), ("SELECT 1 / 0 AS never", {})]) as (one, never),
    ):
        assert one.result(timeout=30) == [{"one": 1}]
        with pytest.raises(sa_exc.DBAPIError, match="division by zero") as raised:
            never.result(timeout=30)
        assert not raised.value.connection_invalidated
