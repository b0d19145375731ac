"""The extractor against a real PostgreSQL, checked against what the catalog says (computed independently)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from pgmeta_devstack.postgres import PostgresServer
from pgmeta_extractor.extraction import extract
from pgmeta_extractor.source import connect
from pgmeta_shared.claimcheck import chunk_key, decode_chunk
from pgmeta_shared.errors import AuthenticationFailedError, DatabaseNotFoundError, SourceUnreachableError
from pgmeta_shared.events import CredentialRef, ExtractRequested, SourceSpec

from ..fakes import InMemoryPlatform

pytestmark = pytest.mark.integration

CONNECTION_QN = "default/postgres/0000000001"
USER_SCHEMAS = "table_schema NOT IN ('pg_catalog', 'information_schema')"


def request(server: PostgresServer, **source: Any) -> ExtractRequested:
    spec = {"host": "127.0.0.1", "port": server.port, "username": "postgres", "database": "traps"} | source
    return ExtractRequested(
        run_id="it-1",
        source=SourceSpec.model_validate(spec),
        credentials=CredentialRef(kind="secret", store="secretstore", key="pg"),
        connection_qualified_name=CONNECTION_QN,
    )


def platform_for(server: PostgresServer, password: str | None = None) -> InMemoryPlatform:
    return InMemoryPlatform(secrets={"secretstore": {"pg": {"password": password or server.password}}})


def records(platform: InMemoryPlatform, run_id: str = "it-1") -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    index = 0
    while chunk_key(run_id, "extract", index) in platform.chunks:
        out.extend(decode_chunk(platform.chunks[chunk_key(run_id, "extract", index)]))
        index += 1
    return out


@pytest.fixture(scope="module")
def extracted(postgres: PostgresServer) -> list[dict[str, Any]]:
    platform = platform_for(postgres)
    completed = extract(request(postgres), platform)
    rows = records(platform)
    assert completed.chunk_count >= 1
    assert completed.counts == dict(Counter(r["kind"] for r in rows))
    return rows


def catalog(server: PostgresServer, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(**server.connect_kwargs("traps")) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]


def test_every_relation_exactly_once(postgres: PostgresServer, extracted: list[dict[str, Any]]) -> None:
    expected = set(
        catalog(postgres, f"SELECT table_schema, table_name FROM information_schema.tables WHERE {USER_SCHEMAS}")
    )
    expected |= set(catalog(postgres, "SELECT schemaname, matviewname FROM pg_matviews"))
    got = [(r["schema_name"], r["relation_name"]) for r in extracted if r["kind"] == "relation"]
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
    got = [(r["schema_name"], r["relation_name"], r["column_name"]) for r in extracted if r["kind"] == "column"]
    assert len(got) == len(set(got)), "a column came out more than once"
    assert set(got) == expected
    assert not any("pg.dropped" in name for _, _, name in got)


def test_schemas_and_kinds(extracted: list[dict[str, Any]]) -> None:
    schemas = {r["schema_name"]: r for r in extracted if r["kind"] == "schema"}
    assert set(schemas) == {"public", "alpha", "beta", "Mixed Case"}
    assert schemas["alpha"]["table_count"] == 5  # items, item_details, events + 2 partitions
    assert schemas["alpha"]["view_count"] == 1
    kinds = {
        (r["schema_name"], r["relation_name"]): (r["relkind"], r["is_partition"])
        for r in extracted
        if r["kind"] == "relation"
    }
    assert kinds[("alpha", "events")] == ("p", False)
    assert kinds[("alpha", "events_rest")] == ("r", True)
    assert kinds[("alpha", "item_counts")] == ("m", False)
    assert kinds[("beta", "item_labels_upper")] == ("v", False)
    partition = next(r for r in extracted if r["kind"] == "relation" and r["relation_name"] == "events_2025")
    assert (partition["parent_schema"], partition["parent_name"]) == ("alpha", "events")
    assert "FOR VALUES FROM ('2025-01-01')" in partition["partition_bound"]


def test_key_membership_and_column_facts(postgres: PostgresServer, extracted: list[dict[str, Any]]) -> None:
    columns = {(r["schema_name"], r["relation_name"], r["column_name"]): r for r in extracted if r["kind"] == "column"}
    detail_id = columns[("alpha", "item_details", "id")]
    assert (detail_id["is_primary"], detail_id["is_foreign"]) == (True, True)
    assert columns[("beta", "items", "extra")]["is_primary"] is False
    assert columns[("Mixed Case", "Order/Lines", "prix €")]["data_type"] == "numeric(8,2)"
    assert columns[("beta", "measures", "tags")]["data_type"] == "text[]"
    facts = catalog(
        postgres,
        f"SELECT table_schema, table_name, column_name, ordinal_position, is_nullable = 'YES', "
        f"coalesce(column_default, generation_expression) FROM information_schema.columns WHERE {USER_SCHEMAS}",
    )
    for schema, table, name, ordinal, nullable, default in facts:
        column = columns[(schema, table, name)]
        assert (column["ordinal"], column["is_nullable"], column["default_value"]) == (ordinal, nullable, default)
    assert "qty" in columns[("beta", "measures", "doubled")]["default_value"]


def test_session_is_read_only_and_bounded(postgres: PostgresServer) -> None:
    with connect(request(postgres).source, lambda: postgres.password) as connection:
        settings = dict(
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
        extract(request(postgres), platform_for(postgres, password="wrong"))


def test_unknown_database_is_named(postgres: PostgresServer) -> None:
    with pytest.raises(DatabaseNotFoundError, match="database 'nope' does not exist"):
        extract(request(postgres, database="nope"), platform_for(postgres))


def test_unreachable_host_fails_within_seconds(postgres: PostgresServer) -> None:
    started = time.monotonic()
    with pytest.raises(SourceUnreachableError, match="cannot connect to PostgreSQL at 127.0.0.1:1"):
        extract(request(postgres, port=1), platform_for(postgres))
    assert time.monotonic() - started < 5
