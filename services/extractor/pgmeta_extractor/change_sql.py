"""The catalog change fingerprint of every schema, in one query: what an incremental run compares.

A schema's own part sums a hash of (identity, ``xmin``) over every catalog row the extractor reads for it:
any DDL that changes what is extracted inserts, deletes or rewrites (new ``xmin``) one of those rows.
Statistics are updated in place (no new ``xmin``), so ``reltuples`` / ``relpages`` (and the live-tuple count
where ``reltuples`` says nothing or zero: the row count falls back to it, and ``exclude_empty_tables`` reads it)
are hashed by value. Names of other schemas' objects appear in a schema's
output (foreign keys, view definitions, partitions, column types, defaults): a schema folds in the own part of
every schema it names that way (found through ``pg_depend``, ``pg_constraint``, ``pg_inherits``, column types),
so a change there is a change here too; the other direction only for partitions (a parent sums its
partitions). Role names (owners) and the server version go into every fingerprint. Index rows are not read:
every index DDL creates, drops or rewrites the index's pg_class row. NOT NULL constraint rows (PostgreSQL 18
keeps one per non-null column, most of pg_constraint) are not read either, nor comments on them: nothing
extracted names them, and nullability is pg_attribute.attnotnull, rewritten by SET / DROP NOT NULL. The filter
selects which schemas are reported; dependencies are followed into every user schema.

Sums of 64-bit hashes need no sort and no per-row text; a rename, drop or create of any row changes them.
"""

from __future__ import annotations

from pgmeta_extractor.catalog_sql import SYSTEM_SCHEMA_FILTER


def _schema_fingerprints_query(column_hash: str) -> str:
    """The query, with ``column_hash`` the hash of one pg_attribute row ``a`` (key and ``xmin``)."""
    return f"""
WITH user_ns AS (
    SELECT n.oid, n.nspname, n.xmin
    FROM pg_namespace n
    WHERE {SYSTEM_SCHEMA_FILTER}
),
-- Every relation outside the system schemas, as "not in a system schema": estimated at about half of pg_class
-- (close: indexes and tables), where a join to user_ns is estimated from pg_namespace's statistics, which stay
-- those initdb left (schemas created since stay under autovacuum's analyze threshold): ~800 rows for 21,000,
-- and every join to it planned as one index probe per relation.
rel AS MATERIALIZED (
    SELECT c.oid, c.relnamespace AS nsp, c.xmin, c.reltuples, c.relpages, c.relkind, c.reltoastrelid
    FROM pg_class c
    WHERE c.relnamespace NOT IN (SELECT n.oid FROM pg_namespace n WHERE NOT ({SYSTEM_SCHEMA_FILTER}))
),
-- Columns, summed per schema and user column type in one pass over pg_attribute, hash-joined to the relations:
-- the types give the column-type edges below without a second pass. (Summed per relation first, the biggest
-- catalog went through a 40,000-group aggregate: ~0.25 s more on a 200,000-column catalog.) Index relations'
-- columns are in: an expression index's column may be the only one of a type. Joined to pg_class itself, not to
-- rel: a CTE's scan keeps the join out of parallel workers, and this pass is most of the query (run at once, not by
-- cursor, PostgreSQL may give it its workers: ~0.27 s instead of ~0.42 s on the benchmark catalog).
att AS MATERIALIZED (
    SELECT c.relnamespace AS nsp, CASE WHEN a.atttypid >= 16384 THEN a.atttypid END AS user_type, count(*) AS n,
           sum({column_hash}) AS h
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    WHERE a.attnum > 0
      AND c.relnamespace NOT IN (SELECT n.oid FROM pg_namespace n WHERE NOT ({SYSTEM_SCHEMA_FILTER}))
    GROUP BY 1, 2
),
rows_of(nsp, h) AS (
    SELECT n.oid, hashint8extended((n.oid::int8 << 32) | n.xmin::text::int8, 1) FROM user_ns n
    UNION ALL
    -- Statistics change in place, without a new xmin: hashed by value.
    SELECT r.nsp, hashint8extended((r.oid::int8 << 32) | r.xmin::text::int8, 2)
                  # hashfloat8extended(r.reltuples::float8, r.relpages::int8)
                  # CASE WHEN r.reltuples <= 0 AND r.relkind IN ('r', 'p', 'm')
                         THEN hashint8extended(pg_stat_get_live_tuples(r.oid), r.oid::int8) ELSE 0 END
    FROM rel r
    UNION ALL
    SELECT r.nsp, hashint8extended(t.relpages::int8, r.oid::int8)  -- TOAST pages: toast_bytes
    FROM rel r JOIN pg_class t ON t.oid = r.reltoastrelid
    UNION ALL
    SELECT r.nsp, hashint8extended((d.oid::int8 << 32) | d.xmin::text::int8, 4)
    FROM pg_attrdef d JOIN rel r ON r.oid = d.adrelid
    UNION ALL
    SELECT k.connamespace, hashint8extended((k.oid::int8 << 32) | k.xmin::text::int8, 5)
    FROM pg_constraint k JOIN user_ns n ON n.oid = k.connamespace
    WHERE k.contype <> 'n'
    UNION ALL
    SELECT p.pronamespace, hashint8extended((p.oid::int8 << 32) | p.xmin::text::int8, 7)
    FROM pg_proc p JOIN user_ns n ON n.oid = p.pronamespace
    UNION ALL
    SELECT r.nsp, hashint8extended((w.oid::int8 << 32) | w.xmin::text::int8, 8)
    FROM pg_rewrite w JOIN rel r ON r.oid = w.ev_class
    UNION ALL
    SELECT r.nsp, hashint8extended((i.inhrelid::int8 << 32) | i.xmin::text::int8, 9 + i.inhparent::int8)
    FROM pg_inherits i JOIN rel r ON r.oid = i.inhrelid
    UNION ALL
    SELECT r.nsp, hashint8extended((f.ftrelid::int8 << 32) | f.xmin::text::int8, 10)
                  # hashint8extended((s.oid::int8 << 32) | s.xmin::text::int8, 11)
    FROM pg_foreign_table f JOIN rel r ON r.oid = f.ftrelid JOIN pg_foreign_server s ON s.oid = f.ftserver
    UNION ALL
    SELECT r.nsp, hashint8extended((pt.partrelid::int8 << 32) | pt.xmin::text::int8, 12)
    FROM pg_partitioned_table pt JOIN rel r ON r.oid = pt.partrelid
    UNION ALL
    SELECT t.typnamespace, hashint8extended((t.oid::int8 << 32) | t.xmin::text::int8, 13)
    FROM pg_type t JOIN user_ns n ON n.oid = t.typnamespace
    UNION ALL
    -- Comments: on relations and their columns, routines, constraints, the schema itself.
    SELECT o.nsp, hashint8extended((d.objoid::int8 << 32) | d.xmin::text::int8, 14 + d.objsubid)
    FROM pg_description d
    JOIN (SELECT r.oid, r.nsp, 'pg_class'::regclass::oid AS cls FROM rel r
          UNION ALL SELECT p.oid, p.pronamespace, 'pg_proc'::regclass::oid FROM pg_proc p
          UNION ALL SELECT k.oid, k.connamespace, 'pg_constraint'::regclass::oid FROM pg_constraint k
                    WHERE k.contype <> 'n'
          UNION ALL SELECT n.oid, n.oid, 'pg_namespace'::regclass::oid FROM user_ns n) o
      ON o.oid = d.objoid AND o.cls = d.classoid
    WHERE d.objoid >= 16384
    UNION ALL
    -- Extension membership hides routines: ALTER EXTENSION ADD / DROP touches only pg_depend.
    SELECT p.pronamespace, hashint8extended((e.objid::int8 << 32) | e.xmin::text::int8, 15)
    FROM pg_depend e JOIN pg_proc p ON p.oid = e.objid
    WHERE e.classid = 'pg_proc'::regclass AND e.deptype = 'e'
),
own AS (
    SELECT u.nsp, sum(u.n) AS n, sum(u.h) AS h
    FROM (SELECT nsp, count(*) AS n, sum(h) AS h FROM rows_of GROUP BY nsp
          UNION ALL SELECT nsp, sum(n), sum(h) FROM att GROUP BY nsp) u
    GROUP BY u.nsp
),
-- Edges (a, b): schema a's output names objects of schema b, so a change in b may change a's output.
-- Computed once for all schemas (MATERIALIZED): inlined, the planner re-ran it per schema, rescanning
-- pg_depend, pg_constraint and pg_attribute 50 times on a 50-schema catalog.
-- What views, defaults and routines name in other schemas (column level collapsed).
named AS (
    SELECT DISTINCT d.classid, d.objid, d.refclassid, d.refobjid
    FROM pg_depend d
    WHERE d.classid IN ('pg_rewrite'::regclass, 'pg_attrdef'::regclass, 'pg_proc'::regclass)
      AND d.refclassid IN ('pg_class'::regclass, 'pg_proc'::regclass, 'pg_type'::regclass)
      AND d.refobjid >= 16384 AND d.deptype = 'n'
),
-- The schema of each side of a dependency, by joins (a side whose row is gone yields no edge).
named_from(a, refclassid, refobjid) AS (
    SELECT c.relnamespace, n.refclassid, n.refobjid
    FROM named n JOIN pg_rewrite w ON w.oid = n.objid JOIN pg_class c ON c.oid = w.ev_class
    WHERE n.classid = 'pg_rewrite'::regclass
    UNION ALL
    SELECT c.relnamespace, n.refclassid, n.refobjid
    FROM named n JOIN pg_attrdef d ON d.oid = n.objid JOIN pg_class c ON c.oid = d.adrelid
    WHERE n.classid = 'pg_attrdef'::regclass
    UNION ALL
    SELECT p.pronamespace, n.refclassid, n.refobjid
    FROM named n JOIN pg_proc p ON p.oid = n.objid
    WHERE n.classid = 'pg_proc'::regclass
),
edges(a, b) AS (
    SELECT f.a, c.relnamespace FROM named_from f JOIN pg_class c ON c.oid = f.refobjid
    WHERE f.refclassid = 'pg_class'::regclass
    UNION ALL
    SELECT f.a, p.pronamespace FROM named_from f JOIN pg_proc p ON p.oid = f.refobjid
    WHERE f.refclassid = 'pg_proc'::regclass
    UNION ALL
    SELECT f.a, t.typnamespace FROM named_from f JOIN pg_type t ON t.oid = f.refobjid
    WHERE f.refclassid = 'pg_type'::regclass
    UNION ALL  -- foreign keys
    SELECT k.connamespace, c.relnamespace FROM pg_constraint k JOIN pg_class c ON c.oid = k.confrelid
    WHERE k.contype = 'f'
    UNION ALL  -- partitions and inheritance, both ways (a partition names its parent, a parent counts and
               -- sums its partitions)
    SELECT x.a, x.b FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class pc ON pc.oid = i.inhparent
    CROSS JOIN LATERAL (VALUES (c.relnamespace, pc.relnamespace), (pc.relnamespace, c.relnamespace)) AS x(a, b)
    UNION ALL  -- column types (user types only: oids from 16384 on), gathered by the columns' pass
    SELECT att.nsp, t.typnamespace FROM att JOIN pg_type t ON t.oid = att.user_type
),
neighbours AS MATERIALIZED (
    SELECT DISTINCT a AS nsp, b AS other FROM edges WHERE a <> b
),
-- Each schema's neighbours' own parts as one string, built once for all schemas.
neighbour_parts AS (
    SELECT nb.nsp,
           string_agg(x.nspname || '=' || coalesce(xo.n, 0) || '/' || coalesce(xo.h, 0), ',' ORDER BY x.nspname)
               AS parts
    FROM neighbours nb JOIN pg_namespace x ON x.oid = nb.other
    LEFT JOIN own xo ON xo.nsp = nb.other
    GROUP BY nb.nsp
),
global AS (
    SELECT md5(current_setting('server_version_num') || ':'
               || coalesce((SELECT string_agg(r.oid::text || '=' || r.rolname, ',' ORDER BY r.oid)
                            FROM pg_roles r), '')) AS h
)
SELECT n.nspname AS schema_name,
       md5(concat_ws(':', (SELECT h FROM global), o.n, o.h, np.parts)) AS change_fingerprint
FROM user_ns n
LEFT JOIN own o ON o.nsp = n.oid
LEFT JOIN neighbour_parts np ON np.nsp = n.oid
WHERE (cardinality(CAST(:schema_include AS text[])) = 0
       OR n.nspname ~ ANY (CAST(:schema_include AS text[])))
  AND NOT (n.nspname ~ ANY (CAST(:schema_exclude AS text[])))
ORDER BY n.nspname
"""


# PostgreSQL 18 hashes an xid as it is (hashxidextended); 15 has no such function, and printing and parsing each
# column row's xmin (xmin::text::int8) there is ~40 % of the pass over pg_attribute, the query's biggest part.
# (16 and 17 are given the portable form: only 15 and 18 are tested.)
SCHEMA_FINGERPRINTS_QUERY = _schema_fingerprints_query("hashxidextended(a.xmin, (a.attrelid::int8 << 32) | a.attnum)")
SCHEMA_FINGERPRINTS_QUERY_BEFORE_18 = _schema_fingerprints_query(
    "hashint8extended((a.attrelid::int8 << 32) | a.xmin::text::int8, a.attnum)"
)


def schema_fingerprints_query(server_version_num: int) -> str:
    """The fingerprint query for a server of this version (``server_version_num``, e.g. 180001)."""
    return SCHEMA_FINGERPRINTS_QUERY if server_version_num >= 180000 else SCHEMA_FINGERPRINTS_QUERY_BEFORE_18
