"""The trap catalog through the real stack, on PostgreSQL 18 and 15: every object exactly once, parents resolve."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import httpx
import psycopg
import pytest

from pgmeta_devstack.postgres import PostgresServer
from pgmeta_devstack.stack import LocalStack
from pgmeta_shared.outputfiles import decode
from tests.plugins.servers import api_headers

from .test_pipeline import PARENT_ATTRIBUTES, assert_pyatlan_accepts, load_entities, wait_for_completion

pytestmark = pytest.mark.e2e


def body(server: PostgresServer, request_id: str | None = None, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "source": {"host": "127.0.0.1", "port": server.port, "username": "postgres"},
        "password": server.password,
        **extra,
    }
    if request_id:
        document["request_id"] = request_id
    return document


def catalog_counts(server: PostgresServer, database: str) -> Counter[str]:
    """Per Atlas type, what pg_catalog holds in one database (user schemas only), asked independently."""
    user = "n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
    with psycopg.connect(**server.connect_kwargs(database)) as conn:
        rows = dict(
            conn.execute(
                f"""SELECT CASE WHEN c.relispartition THEN 'TablePartition'
                                WHEN c.relkind IN ('r', 'p', 'f') THEN 'Table'
                                WHEN c.relkind = 'v' THEN 'View' ELSE 'MaterialisedView' END, count(*)
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND {user} GROUP BY 1"""
            ).fetchall()
        )
        rows["Column"] = conn.execute(
            f"""SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'f', 'v', 'm') AND {user}"""
        ).fetchone()[0]  # type: ignore[index]
        rows["Procedure"] = conn.execute(
            f"""SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {user}
                AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = 'pg_proc'::regclass
                                AND e.objid = p.oid AND e.deptype = 'e')"""
        ).fetchone()[0]  # type: ignore[index]
        rows["Schema"] = conn.execute(f"SELECT count(*) FROM pg_namespace n WHERE {user}").fetchone()[0]  # type: ignore[index]
    return Counter({k: v for k, v in rows.items() if v})


def test_every_database_every_object_exactly_once(full_stack: LocalStack, postgres: PostgresServer) -> None:
    run_id = f"e2e-traps-{postgres.port}"
    response = httpx.post(
        f"{full_stack.layout.api_url}/runs", json=body(postgres, run_id), headers=api_headers(full_stack), timeout=10
    )
    assert response.status_code == 202, response.text
    completed = wait_for_completion(full_stack, run_id, timeout=120)
    assert completed["status"] == "COMPLETED", completed
    entities, manifest = load_entities(full_stack, completed["location"])
    qualified = [(e["typeName"], e["attributes"]["qualifiedName"]) for e in entities]
    assert len(qualified) == len(set(qualified)), "an object came out twice"
    expected: Counter[str] = Counter({"Connection": 1, "Database": 4})  # crm, locked, postgres, traps
    for database in ("crm", "locked", "postgres", "traps"):
        expected += catalog_counts(postgres, database)
    got = Counter(e["typeName"] for e in entities if e["typeName"] != "Process")
    assert got == expected
    known = set(qualified)
    for entity in entities:
        attributes = entity["attributes"]
        refs = [attributes[a] for a in PARENT_ATTRIBUTES if a in attributes]
        refs += attributes.get("inputs", []) + attributes.get("outputs", []) + attributes.get("foreignKeyTo", [])
        for ref in refs:
            assert (ref["typeName"], ref["uniqueAttributes"]["qualifiedName"]) in known, (entity, ref)
    assert manifest["problems"] == 0
    assert_pyatlan_accepts(entities)
    run = httpx.get(f"{full_stack.layout.api_url}/runs/{run_id}", headers=api_headers(full_stack), timeout=10).json()
    assert run["status"] == "COMPLETED" and run["stage"] == "done"


def test_filters_through_the_stack(full_stack: LocalStack, postgres: PostgresServer) -> None:
    run_id = f"e2e-filtered-{postgres.port}"
    filters = {"include": {"traps": ["alpha"]}, "temp_table_regex": ".*_tmp", "exclude_views": True}
    response = httpx.post(
        f"{full_stack.layout.api_url}/runs",
        json=body(postgres, run_id, filters=filters),
        headers=api_headers(full_stack),
        timeout=10,
    )
    assert response.status_code == 202, response.text
    completed = wait_for_completion(full_stack, run_id, timeout=120)
    assert completed["status"] == "COMPLETED", completed
    entities, _ = load_entities(full_stack, completed["location"])
    schemas = {e["attributes"]["name"] for e in entities if e["typeName"] == "Schema"}
    assert schemas == {"alpha"}
    tables = {e["attributes"]["name"] for e in entities if e["typeName"] in {"Table", "TablePartition"}}
    assert "scratch_tmp" not in tables and "items" in tables
    assert not any(e["typeName"] in {"View", "MaterialisedView"} for e in entities)


def test_preflight_and_metadata_endpoints(full_stack: LocalStack, postgres: PostgresServer) -> None:
    api = full_stack.layout.api_url
    answer = httpx.post(
        f"{api}/preflight",
        json=body(postgres, filters={"include": {"traps": ["alpha"]}}),
        headers=api_headers(full_stack),
        timeout=90,
    )
    assert answer.status_code == 200, answer.text
    checked = answer.json()
    assert [db["database"] for db in checked["databases"]] == ["traps"]
    assert checked["counts"]["tables"] >= 5 and checked["counts"]["columns"] > 0
    refused = httpx.post(
        f"{api}/preflight",
        json=body(postgres, filters={"include": {"nope": "*"}}),
        headers=api_headers(full_stack),
        timeout=90,
    )
    assert refused.status_code == 422
    assert "include key 'nope' matches no database" in refused.json()["error"]
    started = time.monotonic()
    databases = httpx.post(
        f"{api}/metadata/databases", json=body(postgres), headers=api_headers(full_stack), timeout=90
    ).json()
    assert {d["name"] for d in databases["databases"]} >= {"crm", "traps", "postgres"}
    assert time.monotonic() - started < 10
    document = body(postgres)
    document["source"]["database"] = "crm"
    schemas = httpx.post(f"{api}/metadata/schemas", json=document, headers=api_headers(full_stack), timeout=90).json()
    assert schemas == {"ok": True, "schemas": ["leads", "public"]}
    wrong = body(postgres)
    wrong["password"] = "wrong"
    failed = httpx.post(f"{api}/metadata/databases", json=wrong, headers=api_headers(full_stack), timeout=90)
    assert failed.status_code == 422 and "authentication failed" in failed.json()["error"]


def test_second_run_reports_what_changed(full_stack: LocalStack, postgres: PostgresServer) -> None:
    """One table added, one altered, one dropped between two runs of the same connection."""
    api = full_stack.layout.api_url
    database = f"churn_{postgres.port}"  # its own database: the fixture server is shared by other tests
    with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    with psycopg.connect(**postgres.connect_kwargs(database), autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS churn")
        conn.execute("CREATE TABLE churn.keep (id int PRIMARY KEY, note varchar(20))")
        conn.execute("CREATE TABLE churn.doomed (id int PRIMARY KEY)")
    try:
        document = body(postgres, filters={"include": {database: ["churn"]}})
        document["source"]["database"] = database
        manifests: list[dict[str, Any]] = []
        for run_id in (f"e2e-inc1-{postgres.port}", f"e2e-inc2-{postgres.port}"):
            if manifests:
                with psycopg.connect(**postgres.connect_kwargs(database), autocommit=True) as conn:
                    conn.execute("CREATE TABLE churn.fresh (id int PRIMARY KEY)")
                    conn.execute("ALTER TABLE churn.keep ALTER COLUMN note TYPE text")
                    conn.execute("DROP TABLE churn.doomed")
            response = httpx.post(
                f"{api}/runs", json=document | {"request_id": run_id}, headers=api_headers(full_stack), timeout=10
            )
            assert response.status_code == 202, response.text
            completed = wait_for_completion(full_stack, run_id, timeout=120)
            assert completed["status"] == "COMPLETED", completed
            _, manifest = load_entities(full_stack, completed["location"])
            manifests.append(manifest)
    finally:
        with psycopg.connect(**postgres.connect_kwargs(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")
    first, second = manifests
    assert first["changes"]["deleted"] == 0 and first["changes"]["updated"] == 0
    assert second["previous_run_id"] == first["run_id"]
    by_type = second["changes_by_type"]
    assert by_type["Table"]["created"] == 1 and by_type["Table"]["deleted"] == 1
    assert by_type["Column"]["created"] == 1 and by_type["Column"]["deleted"] == 1
    assert by_type["Column"]["updated"] == 1  # churn.keep.note: varchar(20) → text
    assert by_type["Schema"]["updated"] == 0  # the table count is the same: one added, one dropped
    run_dir = full_stack.layout.objects / second["connection_qualified_name"] / second["run_id"]
    deleted = [
        line
        for path in sorted(run_dir.glob("deleted-*.jsonl.zst"))
        for line in decode(path.name, path.read_bytes()).decode().splitlines()
    ]
    assert sorted(deleted) == sorted(
        f'{{"typeName":"{t}","qualifiedName":"{second["connection_qualified_name"]}/{database}/churn/doomed{c}"}}'
        for t, c in (("Table", ""), ("Column", "/id"))
    )
