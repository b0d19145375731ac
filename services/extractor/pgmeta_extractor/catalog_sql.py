"""Catalog queries: one bulk query per object kind for the whole database, never one per table.

Straight from pg_catalog (information_schema is ~6x slower and hides objects the role lacks
privileges on). Relations are always identified by schema AND name.
"""

from __future__ import annotations

# Schemas that are PostgreSQL's own, not the user's.
SYSTEM_SCHEMA_FILTER = """
    n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%'
    AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""

SERVER_QUERY = """
SELECT current_database() AS database_name,
       current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num
"""

DATABASE_QUERY = """
SELECT d.datname AS database_name,
       pg_get_userbyid(d.datdba) AS owner,
       shobj_description(d.oid, 'pg_database') AS comment,
       pg_encoding_to_char(d.encoding) AS encoding
FROM pg_database d
WHERE d.datname = current_database()
"""

COUNT_QUERY = f"""
SELECT (SELECT count(*) FROM pg_namespace n WHERE {SYSTEM_SCHEMA_FILTER}) AS schemas,
       (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {SYSTEM_SCHEMA_FILTER}) AS relations,
       (SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE a.attnum > 0 AND NOT a.attisdropped
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {SYSTEM_SCHEMA_FILTER}) AS columns
"""

SCHEMAS_QUERY = f"""
SELECT n.nspname AS schema_name,
       pg_get_userbyid(n.nspowner) AS owner,
       obj_description(n.oid, 'pg_namespace') AS comment,
       (SELECT count(*) FROM pg_class c
         WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p', 'f')) AS table_count,
       (SELECT count(*) FROM pg_class c
         WHERE c.relnamespace = n.oid AND c.relkind IN ('v', 'm')) AS view_count
FROM pg_namespace n
WHERE {SYSTEM_SCHEMA_FILTER}
ORDER BY n.nspname
"""

# relkind: r table, p partitioned table, v view, m materialized view, f foreign table.
RELATIONS_QUERY = f"""
SELECT n.nspname AS schema_name,
       c.relname AS relation_name,
       c.relkind::text AS relkind,
       c.relispartition AS is_partition,
       pn.nspname AS parent_schema,
       pc.relname AS parent_name,
       pg_get_expr(c.relpartbound, c.oid) AS partition_bound,
       pt.partstrat::text AS partition_strategy,
       (SELECT count(*) FROM pg_inherits ch WHERE ch.inhparent = c.oid) AS partition_count,
       pg_get_userbyid(c.relowner) AS owner,
       obj_description(c.oid, 'pg_class') AS comment,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END AS row_estimate,
       c.relnatts::int AS column_count,
       CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END AS view_definition
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
LEFT JOIN pg_class pc ON pc.oid = i.inhparent
LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace
LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {SYSTEM_SCHEMA_FILTER}
ORDER BY n.nspname, c.relname
"""

# One row per column, whatever number of constraints it belongs to (membership via EXISTS, not a join).
COLUMNS_QUERY = f"""
SELECT n.nspname AS schema_name,
       c.relname AS relation_name,
       c.relkind::text AS relkind,
       c.relispartition AS is_partition,
       a.attnum::int AS ordinal,
       a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS data_type,
       NOT a.attnotnull AS is_nullable,
       pg_get_expr(d.adbin, d.adrelid) AS default_value,
       col_description(c.oid, a.attnum) AS comment,
       EXISTS (SELECT 1 FROM pg_constraint k
               WHERE k.conrelid = c.oid AND k.contype = 'p' AND a.attnum = ANY (k.conkey)) AS is_primary,
       EXISTS (SELECT 1 FROM pg_constraint k
               WHERE k.conrelid = c.oid AND k.contype = 'f' AND a.attnum = ANY (k.conkey)) AS is_foreign
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attnum > 0 AND NOT a.attisdropped
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {SYSTEM_SCHEMA_FILTER}
ORDER BY n.nspname, c.relname, a.attnum
"""

CATALOG_QUERIES: dict[str, str] = {
    "database": DATABASE_QUERY,
    "schema": SCHEMAS_QUERY,
    "relation": RELATIONS_QUERY,
    "column": COLUMNS_QUERY,
}
