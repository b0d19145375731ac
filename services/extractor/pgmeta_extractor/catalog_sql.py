"""Catalog queries: one bulk query per object kind for a whole database, never one per table.

Straight from pg_catalog (information_schema is ~6x slower and hides objects the role lacks privileges
on). Every relation is identified by schema AND name. Filters arrive as bind parameters only:

- ``schema_include`` / ``schema_exclude``: text[] of anchored regexes (empty include = every schema);
- ``temp_re``: text or NULL; ``exclude_views``, ``exclude_empty``: booleans;
- ``only_schemas``: text[] of exact schema names an incremental run reads, or NULL for every selected schema.

Nothing here takes a lock on a user table: sizes and row counts come from pg_class / pg_stat (as of the
last VACUUM / ANALYZE / stats flush), never from pg_relation_size(), which would queue behind DDL.
"""

from __future__ import annotations

SYSTEM_SCHEMA_FILTER = """
    n.nspname NOT IN ('pg_catalog', 'information_schema')
    AND n.nspname NOT LIKE 'pg\\_toast%'
    AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""

# The selection every query starts from: schemas and relations that pass the filters.
SELECTION = f"""
WITH sel_ns AS (
    SELECT n.oid, n.nspname
    FROM pg_namespace n
    WHERE {SYSTEM_SCHEMA_FILTER}
      AND (cardinality(CAST(:schema_include AS text[])) = 0
           OR n.nspname ~ ANY (CAST(:schema_include AS text[])))
      AND NOT (n.nspname ~ ANY (CAST(:schema_exclude AS text[])))
      AND (CAST(:only_schemas AS text[]) IS NULL OR n.nspname = ANY (CAST(:only_schemas AS text[])))
      AND NOT EXISTS (SELECT 1 FROM pg_depend e
                      WHERE e.classid = 'pg_namespace'::regclass AND e.objid = n.oid AND e.deptype = 'e')
),
-- MATERIALIZED: planned on its own, pg_class is hash-joined to the few schemas once. Inlined into a bigger
-- query, the planner may scan pg_class once per schema instead when it believes there is a single schema
-- (pg_namespace's statistics are stale: 50 schemas created after initdb stay under autovacuum's analyze
-- threshold, and the planner keeps assuming the 4 rows initdb left).
sel_rel AS MATERIALIZED (
    SELECT c.oid, c.relname, c.relkind, c.relnamespace, n.nspname
    FROM pg_class c
    JOIN sel_ns n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND (CAST(:temp_re AS text) IS NULL OR c.relname !~ CAST(:temp_re AS text))
      AND (NOT CAST(:exclude_views AS boolean) OR c.relkind NOT IN ('v', 'm'))
      -- pg_stat_all_tables.n_live_tup, called directly: joining the view groups all of pg_class (and
      -- pg_index) in every query that starts from this selection, filter or not.
      AND (NOT CAST(:exclude_empty AS boolean) OR c.relkind <> 'r'
           OR NOT (c.reltuples <= 0 AND pg_stat_get_live_tuples(c.oid) = 0))
)
"""

SERVER_QUERY = """
SELECT current_database() AS database_name,
       current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       current_user AS current_user
"""

# Databases the role may connect to, with the indexes of the include / exclude keys each one matches
# (regexes evaluated by PostgreSQL, bound as parameters).
DATABASES_QUERY = """
SELECT d.datname AS database_name,
       pg_get_userbyid(d.datdba) AS owner,
       shobj_description(d.oid, 'pg_database') AS comment,
       pg_encoding_to_char(d.encoding) AS encoding,
       has_database_privilege(d.oid, 'CONNECT') AS can_connect,
       ARRAY(SELECT k.i::int FROM unnest(CAST(:include_patterns AS text[])) WITH ORDINALITY AS k(p, i)
             WHERE d.datname ~ k.p) AS include_matches,
       ARRAY(SELECT k.i::int FROM unnest(CAST(:exclude_patterns AS text[])) WITH ORDINALITY AS k(p, i)
             WHERE d.datname ~ k.p) AS exclude_matches
FROM pg_database d
WHERE NOT d.datistemplate AND d.datallowconn
ORDER BY d.datname
"""

DATABASE_QUERY = """
SELECT d.datname AS database_name,
       pg_get_userbyid(d.datdba) AS owner,
       shobj_description(d.oid, 'pg_database') AS comment,
       pg_encoding_to_char(d.encoding) AS encoding
FROM pg_database d
WHERE d.datname = current_database()
"""

RELATION_COUNTS = """
SELECT (SELECT count(*) FROM sel_ns) AS schemas,
       (SELECT count(*) FROM sel_rel WHERE relkind IN ('r', 'p', 'f')) AS tables,
       (SELECT count(*) FROM sel_rel WHERE relkind IN ('v', 'm')) AS views"""

COUNT_QUERY = (
    SELECTION
    + RELATION_COUNTS
    + """,
       (SELECT count(*) FROM pg_attribute a JOIN sel_rel c ON c.oid = a.attrelid
         WHERE a.attnum > 0 AND NOT a.attisdropped) AS columns
"""
)

# The same without columns: pg_class only. Counting columns reads all of pg_attribute (~0.25 s of a 208,000-column
# catalog), which a run's preflight does not need: its extract stage counts what it reads.
RELATION_COUNT_QUERY = SELECTION + RELATION_COUNTS + "\n"

SCHEMAS_QUERY = (
    SELECTION
    + """,
-- What each schema holds, whatever the run's relation filters: a filtered run must not make the schema look
-- changed (docs/atlas-mapping.md). One pass over pg_class (there is no index on relnamespace alone).
held AS (
    SELECT c.relnamespace AS nsp,
           count(*) FILTER (WHERE c.relkind IN ('r', 'p', 'f')) AS table_count,
           count(*) FILTER (WHERE c.relkind IN ('v', 'm')) AS view_count
    FROM pg_class c JOIN sel_ns n ON n.oid = c.relnamespace
    GROUP BY c.relnamespace
)
SELECT n.nspname AS schema_name,
       pg_get_userbyid(ns.nspowner) AS owner,
       obj_description(n.oid, 'pg_namespace') AS comment,
       coalesce(h.table_count, 0) AS table_count,
       coalesce(h.view_count, 0) AS view_count
FROM sel_ns n
JOIN pg_namespace ns ON ns.oid = n.oid
LEFT JOIN held h ON h.nsp = n.oid
ORDER BY n.nspname
"""
)

# relkind: r table, p partitioned table, v view, m materialized view, f foreign table.
RELATIONS_QUERY = (
    SELECTION
    + """
SELECT s.nspname AS schema_name,
       c.relname AS relation_name,
       c.relkind::text AS relkind,
       c.relispartition AS is_partition,
       pn.nspname AS parent_schema,
       pc.relname AS parent_name,
       pc.relispartition AS parent_is_partition,
       pg_get_expr(c.relpartbound, c.oid) AS partition_bound,
       pt.partstrat::text AS partition_strategy,
       CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partition_key,
       (SELECT count(*) FROM pg_inherits ch WHERE ch.inhparent = c.oid) AS partition_count,
       pg_get_userbyid(c.relowner) AS owner,
       obj_description(c.oid, 'pg_class') AS comment,
       c.relpersistence::text AS persistence,
       (SELECT sum(sc.reltuples)::bigint FROM pg_class sc
         WHERE sc.oid = ANY (storage.oids) AND sc.reltuples >= 0) AS row_estimate,
       -- pg_stat_all_tables.n_live_tup, called directly under the view's own relkind condition (NULL
       -- elsewhere, as the view's LEFT JOIN gave): joining the view groups all of pg_class and pg_index, ~80 ms
       -- of the 120 ms this query takes to read one schema of the benchmark catalog.
       CASE WHEN c.relkind IN ('r', 't', 'm', 'p') THEN pg_stat_get_live_tuples(c.oid) END AS live_tuples,
       (SELECT count(*) FROM pg_attribute a
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)::int AS column_count,
       CASE WHEN c.relkind IN ('r', 'm', 't', 'p') THEN
           (SELECT (coalesce(sum(greatest(sc.relpages, 0)), 0) * current_setting('block_size')::int)::bigint
              FROM pg_class sc WHERE sc.oid = ANY (storage.oids)) END AS table_bytes,
       (SELECT (coalesce(sum(greatest(ic.relpages, 0)), 0) * current_setting('block_size')::int)::bigint
          FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
         WHERE i.indrelid = ANY (storage.oids)) AS index_bytes,
       (SELECT (coalesce(sum(greatest(tc.relpages, 0)), 0) * current_setting('block_size')::int)::bigint
          FROM pg_class sc JOIN pg_class tc ON tc.oid = sc.reltoastrelid
         WHERE sc.oid = ANY (storage.oids)) AS toast_bytes,
       fs.srvname AS foreign_server,
       array_to_string(ft.ftoptions, ', ') AS foreign_options
FROM sel_rel s
JOIN pg_class c ON c.oid = s.oid
-- Where the relation's rows live: a partitioned table has no storage (relpages and reltuples are -1 once
-- analysed); its size and row estimate are those of its leaf partitions.
CROSS JOIN LATERAL (SELECT CASE WHEN c.relkind = 'p'
                                THEN ARRAY(SELECT t.relid FROM pg_partition_tree(c.oid) t WHERE t.isleaf)
                                ELSE ARRAY[c.oid] END AS oids) AS storage
LEFT JOIN pg_inherits i ON c.relispartition AND i.inhrelid = c.oid
LEFT JOIN pg_class pc ON pc.oid = i.inhparent
LEFT JOIN pg_namespace pn ON pn.oid = pc.relnamespace
LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
LEFT JOIN pg_foreign_table ft ON ft.ftrelid = c.oid
LEFT JOIN pg_foreign_server fs ON fs.oid = ft.ftserver
ORDER BY s.nspname, c.relname
"""
)

# One row per column, streamed in (schema, relation, attnum) order without sorting the columns: the relations
# are sorted (few), and each one's key, index and partition-key memberships are gathered once, by index, before
# its columns are read by index in attnum order (PostgreSQL only sorts within a relation). Sorting all columns
# instead (and hash-joining memberships per (relation, attnum)) spilled to disk, grew faster than the catalog
# (n log n) and held back the first row until the last was computed: ~2.3 s of the default benchmark catalog.
# A default or generation expression is looked up only for a column that has one. Length / precision / scale
# follow the rules information_schema uses (_pg_char_max_length, _pg_numeric_precision, _pg_numeric_scale),
# inlined: calling those functions per row costs more than the rest of the query.
COLUMNS_QUERY = (
    SELECTION
    + """
SELECT m.nspname AS schema_name,
       m.relname AS relation_name,
       m.relkind::text AS relkind,
       c.relispartition AS is_partition,
       a.attnum::int AS ordinal,
       a.attname AS column_name,
       format_type(a.atttypid, a.atttypmod) AS data_type,
       CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
            WHEN t.typcategory = 'A' THEN format_type(t.typelem, NULL)
            ELSE format_type(a.atttypid, NULL) END AS base_type,
       t.typcategory = 'A' OR (t.typtype = 'd' AND bt.typcategory = 'A') AS is_array,
       CASE WHEN tt.typid IN (1042, 1043) AND tt.typmod <> -1 THEN tt.typmod - 4
            WHEN tt.typid IN (1560, 1562) AND tt.typmod <> -1 THEN tt.typmod END AS max_length,
       CASE tt.typid WHEN 21 THEN 16 WHEN 23 THEN 32 WHEN 20 THEN 64 WHEN 700 THEN 24 WHEN 701 THEN 53
                     WHEN 1700 THEN CASE WHEN tt.typmod <> -1 THEN ((tt.typmod - 4) >> 16) & 65535 END
       END AS numeric_precision,
       CASE WHEN tt.typid IN (21, 23, 20) THEN 0
            WHEN tt.typid = 1700 AND tt.typmod <> -1 THEN (tt.typmod - 4) & 65535 END AS numeric_scale,
       NOT a.attnotnull AS is_nullable,
       CASE WHEN a.atthasdef AND a.attgenerated = '' THEN
           (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
             WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum) END AS default_value,
       CASE WHEN a.atthasdef AND a.attgenerated <> '' THEN
           (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
             WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum) END AS generation_expression,
       nullif(a.attidentity, '')::text AS identity,
       col_description(a.attrelid, a.attnum) AS comment,
       coalesce(a.attnum = ANY (m.primary_cols), false) AS is_primary,
       coalesce(a.attnum = ANY (m.foreign_cols), false) AS is_foreign,
       coalesce(a.attnum = ANY (m.unique_cols), false) AS is_unique,
       coalesce(a.attnum = ANY (m.indexed_cols), false) AS is_indexed,
       CASE WHEN a.attnum = ANY (m.foreign_cols) THEN
           (SELECT json_agg(json_build_array(rn.nspname, rc.relname, rc.relkind, rc.relispartition, ra.attname)
                            ORDER BY k.conname)
              FROM pg_constraint k
              CROSS JOIN LATERAL unnest(k.conkey, k.confkey) AS u(src, dst)
              JOIN pg_class rc ON rc.oid = k.confrelid
              JOIN pg_namespace rn ON rn.oid = rc.relnamespace
              JOIN pg_attribute ra ON ra.attrelid = k.confrelid AND ra.attnum = u.dst
             WHERE k.conrelid = a.attrelid AND k.contype = 'f' AND u.src = a.attnum) END AS references,
       array_position(m.partition_cols, a.attnum)::int AS partition_key_position
FROM (
    SELECT r.oid, r.nspname, r.relname, r.relkind, keys.primary_cols, keys.foreign_cols, keys.unique_cols,
           ix.indexed_cols, (pt.partattrs::int2[])[:] AS partition_cols  -- int2vector counts from 0, a slice from 1
    FROM sel_rel r
    CROSS JOIN LATERAL (
        SELECT array_agg(u.attnum) FILTER (WHERE k.contype = 'p') AS primary_cols,
               array_agg(u.attnum) FILTER (WHERE k.contype = 'f') AS foreign_cols,
               array_agg(u.attnum) FILTER (WHERE k.contype = 'u') AS unique_cols
        FROM pg_constraint k
        CROSS JOIN LATERAL unnest(k.conkey) AS u(attnum)
        WHERE k.conrelid = r.oid AND k.contype IN ('p', 'f', 'u')) keys
    CROSS JOIN LATERAL (
        SELECT array_agg(u.attnum) AS indexed_cols
        FROM pg_index x
        CROSS JOIN LATERAL unnest(x.indkey::int2[]) AS u(attnum)
        WHERE x.indrelid = r.oid AND u.attnum > 0) ix
    LEFT JOIN pg_partitioned_table pt ON pt.partrelid = r.oid
    ORDER BY r.nspname, r.relname
    OFFSET 0
) m
JOIN pg_class c ON c.oid = m.oid
JOIN pg_attribute a ON a.attrelid = m.oid
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type bt ON bt.oid = t.typbasetype
CROSS JOIN LATERAL (SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END AS typid,
                           CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END AS typmod) AS tt
WHERE a.attnum > 0 AND NOT a.attisdropped
ORDER BY m.nspname, m.relname, a.attnum
"""
)

CONSTRAINTS_QUERY = (
    SELECTION
    + """
SELECT s.nspname AS schema_name,
       s.relname AS relation_name,
       k.conname AS constraint_name,
       k.contype::text AS constraint_type,
       ARRAY(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY AS u(attnum, pos)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum ORDER BY u.pos)::text[]
           AS columns,
       rn.nspname AS referenced_schema,
       rc.relname AS referenced_relation,
       ARRAY(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY AS u(attnum, pos)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.attnum ORDER BY u.pos)::text[]
           AS referenced_columns,
       pg_get_constraintdef(k.oid, true) AS definition,
       k.condeferrable AS is_deferrable,
       obj_description(k.oid, 'pg_constraint') AS comment
FROM sel_rel s
JOIN pg_constraint k ON k.conrelid = s.oid
LEFT JOIN pg_class rc ON rc.oid = k.confrelid
LEFT JOIN pg_namespace rn ON rn.oid = rc.relnamespace
WHERE k.contype IN ('p', 'f', 'u', 'c', 'x')
ORDER BY s.nspname, s.relname, k.conname
"""
)

INDEXES_QUERY = (
    SELECTION
    + """
SELECT s.nspname AS schema_name,
       s.relname AS relation_name,
       ic.relname AS index_name,
       am.amname AS method,
       x.indisunique AS is_unique,
       x.indisprimary AS is_primary,
       ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true)
             FROM generate_series(1, x.indnkeyatts) AS k ORDER BY k)::text[] AS columns,
       ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true)
             FROM generate_series(x.indnkeyatts + 1, x.indnatts) AS k ORDER BY k)::text[] AS include_columns,
       pg_get_expr(x.indpred, x.indrelid) AS predicate,
       pg_get_indexdef(x.indexrelid) AS definition,
       (CASE WHEN ic.relkind = 'I'  -- a partitioned index: the sum of its leaf indexes
             THEN (SELECT coalesce(sum(greatest(lc.relpages, 0)), 0) FROM pg_partition_tree(ic.oid) t
                   JOIN pg_class lc ON lc.oid = t.relid WHERE t.isleaf)
             ELSE greatest(ic.relpages, 0) END)::bigint * current_setting('block_size')::int AS size_bytes,
       obj_description(ic.oid, 'pg_class') AS comment
FROM sel_rel s
JOIN pg_index x ON x.indrelid = s.oid
JOIN pg_class ic ON ic.oid = x.indexrelid
JOIN pg_am am ON am.oid = ic.relam
ORDER BY s.nspname, s.relname, ic.relname
"""
)

# Functions and procedures; overloads are told apart by their identity arguments. Routines that belong
# to an extension are the extension's, not the user's.
ROUTINES_QUERY = (
    SELECTION
    + """
SELECT n.nspname AS schema_name,
       p.proname AS routine_name,
       p.prokind::text AS routine_kind,
       l.lanname AS language,
       pg_get_function_identity_arguments(p.oid) AS identity_arguments,
       pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS return_type,
       CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END AS definition,
       p.provolatile::text AS volatility,
       p.prosecdef AS security_definer,
       pg_get_userbyid(p.proowner) AS owner,
       obj_description(p.oid, 'pg_proc') AS comment
FROM pg_proc p
JOIN sel_ns n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE NOT EXISTS (SELECT 1 FROM pg_depend e
                  WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid AND e.deptype = 'e')
ORDER BY n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)
"""
)

# The selected views, in the relation query's order (schema, name), listed once per database.
VIEW_LIST_QUERY = (
    SELECTION
    + """
SELECT s.oid, s.nspname AS schema_name, s.relname AS relation_name
FROM sel_rel s
WHERE s.relkind IN ('v', 'm')
ORDER BY s.nspname, s.relname
"""
)

# The definitions of a batch of listed views, in the batch's order. pg_get_viewdef() locks every relation a
# view reads until the transaction ends, so one statement over 10,000 views runs out of PostgreSQL's lock
# table: each batch runs in a transaction of its own. A batch is the views' oids, not a keyset over the
# selection: re-evaluating the selection per batch made 20 batches of the 10x benchmark catalog cost 12 s.
# A view dropped since it was listed has no definition (pg_get_viewdef answers NULL for an unknown oid).
VIEW_DEFINITIONS_QUERY = """
SELECT pg_get_viewdef(b.oid) AS view_definition
FROM unnest(CAST(:oids AS oid[])) WITH ORDINALITY AS b(oid, position)
ORDER BY b.position
"""

# View lineage, exact: what each view's rewrite rule depends on (no SQL parsing), one row per view.
LINEAGE_QUERY = (
    SELECTION
    + """
SELECT v.nspname AS schema_name,
       v.relname AS relation_name,
       v.relkind::text AS relkind,
       json_agg(DISTINCT jsonb_build_array(sn.nspname, src.relname, src.relkind, src.relispartition)) AS sources
FROM sel_rel v
JOIN pg_rewrite r ON r.ev_class = v.oid
JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid
                AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> v.oid
JOIN pg_class src ON src.oid = d.refobjid
JOIN pg_namespace sn ON sn.oid = src.relnamespace
WHERE v.relkind IN ('v', 'm') AND src.relkind IN ('r', 'p', 'v', 'm', 'f')
GROUP BY v.nspname, v.relname, v.relkind
ORDER BY 1, 2
"""
)

# Per database, in the order the records are written.
CATALOG_QUERIES: dict[str, str] = {
    "schema": SCHEMAS_QUERY,
    "relation": RELATIONS_QUERY,
    "column": COLUMNS_QUERY,
    "constraint": CONSTRAINTS_QUERY,
    "index": INDEXES_QUERY,
    "routine": ROUTINES_QUERY,
    "lineage": LINEAGE_QUERY,
}
