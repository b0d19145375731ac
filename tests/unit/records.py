"""Raw catalog records shaped like the extractor's, for mapping tests."""

from typing import Any

CONNECTION_QN = "default/postgres/0123456789"


def relation(schema: str, name: str, relkind: str, **extra: Any) -> dict[str, Any]:
    row = {
        "kind": "relation", "database_name": "shop", "schema_name": schema, "relation_name": name,
        "relkind": relkind, "is_partition": False, "parent_schema": None, "parent_name": None,
        "partition_bound": None, "partition_strategy": None, "partition_count": 0, "owner": "postgres",
        "comment": None, "row_estimate": 10, "column_count": 2, "view_definition": None,
    }  # fmt: skip
    row.update(extra)
    return row


def column(schema: str, relation_name: str, name: str, relkind: str = "r", **extra: Any) -> dict[str, Any]:
    row = {
        "kind": "column", "database_name": "shop", "schema_name": schema, "relation_name": relation_name,
        "relkind": relkind, "is_partition": False, "ordinal": 1, "column_name": name, "data_type": "bigint",
        "is_nullable": False, "default_value": None, "comment": None, "is_primary": False, "is_foreign": False,
    }  # fmt: skip
    row.update(extra)
    return row


def sample_catalog() -> list[dict[str, Any]]:
    return [
        {"kind": "server", "database_name": "shop", "server_version": "18.1", "server_version_num": 180001},
        {"kind": "database", "database_name": "shop", "owner": "postgres", "comment": "demo", "encoding": "UTF8"},
        {"kind": "schema", "database_name": "shop", "schema_name": "sales", "owner": "postgres",
         "comment": "Sales", "table_count": 3, "view_count": 2},
        relation("sales", "orders", "p", partition_strategy="r", partition_count=1, comment="Orders"),
        relation("sales", "orders_2025", "r", is_partition=True, parent_schema="sales", parent_name="orders",
                 partition_bound="FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')"),
        relation("sales", "remote_rates", "f"),
        relation("sales", "v_orders", "v", view_definition=" SELECT 1;", row_estimate=None),
        relation("sales", "mv_orders", "m", view_definition=" SELECT 2;"),
        column("sales", "orders", "order_id", "p", is_primary=True, is_foreign=True, comment="Key"),
        column("sales", "orders_2025", "order_id", "r", is_partition=True, is_primary=True),
        column("sales", "remote_rates", "rate", "f", data_type="numeric(10,2)", is_nullable=True),
        column("sales", "v_orders", "one", "v", data_type="integer", is_nullable=True),
        column("sales", "mv_orders", "two", "m", data_type="integer", is_nullable=True, default_value="2"),
    ]  # fmt: skip
