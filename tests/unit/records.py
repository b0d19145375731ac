"""Raw catalog records shaped like the extractor's, for mapping tests."""

from typing import Any

CONNECTION_QN = "default/postgres/0123456789"


def relation(schema: str, name: str, relkind: str, **extra: Any) -> dict[str, Any]:
    row = {
        "kind": "relation", "database_name": "shop", "schema_name": schema, "relation_name": name,
        "relkind": relkind, "is_partition": False, "parent_schema": None, "parent_name": None,
        "parent_is_partition": None, "partition_bound": None, "partition_strategy": None, "partition_key": None,
        "partition_count": 0, "owner": "postgres", "comment": None, "persistence": "p", "row_estimate": 10,
        "live_tuples": 10, "column_count": 2, "table_bytes": 8192, "index_bytes": 16384, "toast_bytes": 0,
        "view_definition": None, "foreign_server": None, "foreign_options": None,
    }  # fmt: skip
    row.update(extra)
    return row


def column(schema: str, relation_name: str, name: str, relkind: str = "r", **extra: Any) -> dict[str, Any]:
    row = {
        "kind": "column", "database_name": "shop", "schema_name": schema, "relation_name": relation_name,
        "relkind": relkind, "is_partition": False, "ordinal": 1, "column_name": name, "data_type": "bigint",
        "base_type": "bigint", "is_array": False, "max_length": None, "numeric_precision": 64, "numeric_scale": 0,
        "is_nullable": False, "default_value": None, "generation_expression": None, "identity": None,
        "comment": None, "is_primary": False, "is_foreign": False, "references": None, "is_unique": False,
        "is_indexed": False, "partition_key_position": None,
    }  # fmt: skip
    row.update(extra)
    return row


def sample_catalog() -> list[dict[str, Any]]:
    return [
        {"kind": "server", "database_name": "postgres", "server_version": "18.1", "server_version_num": 180001,
         "host": "db.example.com", "port": 5432},
        {"kind": "database", "database_name": "shop", "owner": "postgres", "comment": "demo", "encoding": "UTF8"},
        {"kind": "schema", "database_name": "shop", "schema_name": "sales", "owner": "postgres",
         "comment": "Sales", "table_count": 3, "view_count": 2},
        relation("sales", "orders", "p", partition_strategy="r", partition_count=1, comment="Orders"),
        relation("sales", "orders_2025", "r", is_partition=True, parent_schema="sales", parent_name="orders",
                 partition_bound="FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')"),
        relation("sales", "remote_rates", "f", foreign_server="rates_srv", foreign_options="table_name=rates"),
        relation("sales", "customers", "r"),
        relation("sales", "v_orders", "v", view_definition=" SELECT 1;", row_estimate=None),
        relation("sales", "mv_orders", "m", view_definition=" SELECT 2;"),
        column("sales", "orders", "order_id", "p", is_primary=True, is_foreign=True, comment="<b>Key</b>",
               references=[["sales", "customers", "r", False, "id"]], partition_key_position=1),
        column("sales", "customers", "id", "r", is_primary=True, is_indexed=True),
        column("sales", "customers", "name", "r", data_type="character varying(80)", base_type="character varying",
               max_length=80, numeric_precision=None, numeric_scale=None, is_nullable=True),
        column("sales", "orders_2025", "order_id", "r", is_partition=True, is_primary=True),
        column("sales", "remote_rates", "rate", "f", data_type="numeric(10,2)", is_nullable=True),
        column("sales", "v_orders", "one", "v", data_type="integer", is_nullable=True),
        column("sales", "mv_orders", "two", "m", data_type="integer", is_nullable=True, default_value="2"),
        {"kind": "routine", "database_name": "shop", "schema_name": "sales", "routine_name": "total",
         "routine_kind": "f", "language": "sql", "identity_arguments": "integer", "arguments": "x integer",
         "return_type": "bigint", "definition": "CREATE FUNCTION sales.total(x integer) ...", "volatility": "s",
         "security_definer": False, "owner": "postgres", "comment": None},
        {"kind": "routine", "database_name": "shop", "schema_name": "sales", "routine_name": "total",
         "routine_kind": "f", "language": "sql", "identity_arguments": "text", "arguments": "x text",
         "return_type": "bigint", "definition": "CREATE FUNCTION sales.total(x text) ...", "volatility": "s",
         "security_definer": False, "owner": "postgres", "comment": None},
        {"kind": "routine", "database_name": "shop", "schema_name": "sales", "routine_name": "archive",
         "routine_kind": "p", "language": "plpgsql", "identity_arguments": "", "arguments": "",
         "return_type": None, "definition": "CREATE PROCEDURE sales.archive() ...", "volatility": "v",
         "security_definer": False, "owner": "postgres", "comment": "Moves old orders"},
        {"kind": "lineage", "database_name": "shop", "schema_name": "sales", "relation_name": "v_orders",
         "relkind": "v", "sources": [["sales", "orders", "p", False], ["sales", "customers", "r", False]]},
        {"kind": "constraint", "database_name": "shop", "schema_name": "sales", "relation_name": "orders",
         "constraint_name": "orders_pkey", "constraint_type": "p", "columns": ["order_id"],
         "referenced_schema": None, "referenced_relation": None, "referenced_columns": [],
         "definition": "PRIMARY KEY (order_id)", "is_deferrable": False, "comment": None},
        {"kind": "index", "database_name": "shop", "schema_name": "sales", "relation_name": "customers",
         "index_name": "customers_pkey", "method": "btree", "is_unique": True, "is_primary": True, "columns": ["id"],
         "include_columns": [], "predicate": None, "definition": "CREATE UNIQUE INDEX ...", "size_bytes": 8192,
         "comment": None},
    ]  # fmt: skip
