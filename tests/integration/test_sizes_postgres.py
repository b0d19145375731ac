"""Sizes and counts on real PostgreSQL 18 and 15: catalog sentinels (relpages / reltuples -1) never leak."""

from __future__ import annotations

from collections.abc import Iterator
from numbers import Number
from typing import Any

import psycopg
import pytest

from pgmeta_devstack.postgres import PostgresServer
from pgmeta_transformer.atlas import to_entities

from .test_extractor_postgres import CONNECTION_QN, extract_all

pytestmark = pytest.mark.integration

SIZES_SQL = """
CREATE SCHEMA sales;
CREATE TABLE sales.orders (id bigint, at date NOT NULL, note text) PARTITION BY RANGE (at);
CREATE INDEX orders_at ON sales.orders (at);
CREATE TABLE sales.orders_2025 PARTITION OF sales.orders FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE sales.orders_2026 PARTITION OF sales.orders FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')
    PARTITION BY LIST (id);
CREATE TABLE sales.orders_2026_all PARTITION OF sales.orders_2026 DEFAULT;
INSERT INTO sales.orders SELECT g, DATE '2025-01-01' + (g % 700), repeat('x', 200) FROM generate_series(1, 3000) g;
-- As the demo database does: ANALYZE sets a partitioned table's (and index's) relpages to -1.
ANALYZE;
-- Never vacuumed nor analysed: reltuples is -1 (PostgreSQL 14+).
CREATE TABLE sales.fresh (id int PRIMARY KEY);
CREATE MATERIALIZED VIEW sales.mv_fresh AS SELECT id FROM sales.fresh WITH NO DATA;
"""


@pytest.fixture(scope="module")
def sizes_server(postgres: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server with a database of its own, dropped after (other tests count databases)."""
    with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS sizes")
        conn.execute("CREATE DATABASE sizes")
    try:
        with psycopg.connect(**postgres.connect_kwargs("sizes"), autocommit=True) as conn:
            conn.execute(SIZES_SQL)
        yield postgres
    finally:
        with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS sizes")


@pytest.fixture(scope="module")
def sizes_records(sizes_server: PostgresServer) -> list[dict[str, Any]]:
    _, records = extract_all(sizes_server, database="sizes")
    return records


@pytest.fixture(scope="module")
def sizes_entities(sizes_records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    records = sizes_records
    entities = [e for e in to_entities(CONNECTION_QN, records) if "typeName" in e]
    return {e["attributes"]["qualifiedName"].removeprefix(f"{CONNECTION_QN}/sizes/"): e for e in entities}


def _numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(value, bool):
        return
    if isinstance(value, Number):
        yield path, float(value)  # type: ignore[arg-type]
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{path}[{index}]")


def test_no_numeric_attribute_of_any_entity_is_negative(sizes_entities: dict[str, dict[str, Any]]) -> None:
    negative = [
        f"{qn}{path} = {number}"
        for qn, entity in sizes_entities.items()
        for path, number in _numbers(entity["attributes"])
        if number < 0
    ]
    assert not negative, negative


def test_no_size_or_count_in_any_extracted_record_is_negative(sizes_records: list[dict[str, Any]]) -> None:
    """Indexes (a partitioned index has relpages -1 too) and every other record the extractor emits."""
    negative = [
        f"{record['kind']} {record.get('relation_name') or record.get('schema_name')}{path} = {number}"
        for record in sizes_records
        for path, number in _numbers(record)
        if number < 0
    ]
    assert not negative, negative
    indexes = {r["index_name"]: r for r in sizes_records if r["kind"] == "index"}
    assert indexes["orders_at"]["size_bytes"] > 0


def test_a_partitioned_tables_size_is_the_sum_of_its_partitions(
    sizes_server: PostgresServer, sizes_entities: dict[str, dict[str, Any]]
) -> None:
    with psycopg.connect(**sizes_server.connect_kwargs("sizes")) as conn:
        leaves = conn.execute(
            "SELECT sum(pg_relation_size(relid) + pg_indexes_size(relid)"
            " + coalesce(pg_relation_size((SELECT reltoastrelid FROM pg_class WHERE oid = relid)), 0))"
            " FROM pg_partition_tree('sales.orders') WHERE isleaf"
        ).fetchone()
    assert leaves is not None and leaves[0] > 0
    orders = sizes_entities["sales/orders"]["attributes"]
    assert orders["sizeBytes"] == leaves[0]
    partitions = ("sales/orders_2025", "sales/orders_2026")
    assert orders["sizeBytes"] == sum(sizes_entities[qn]["attributes"]["sizeBytes"] for qn in partitions)
    assert orders["rowCount"] == 3000
    assert sizes_entities["sales/orders_2026"]["attributes"]["rowCount"] > 0
