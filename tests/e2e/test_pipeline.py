"""The whole stack as a user drives it: events through a Dapr sidecar, entities out, failures reported."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
import redis

from pgmeta_devstack.stack import DEMO_DATABASE, DEMO_SECRET, LocalStack
from pgmeta_shared.naming import default_connection_qualified_name
from pgmeta_shared.outputfiles import decode
from tests.plugins.servers import api_headers

pytestmark = pytest.mark.e2e

RELATION_TYPES = {"r": "Table", "p": "Table", "f": "Table", "v": "View", "m": "MaterialisedView"}
PARENT_ATTRIBUTES = ("database", "atlanSchema", "parentTable", "table", "view", "materialisedView", "tablePartition")


def publish(stack: LocalStack, document: dict[str, Any], topic: str = "extraction.requested") -> None:
    """Publishes through the orchestrator sidecar's publish API, as `dapr publish` does."""
    url = f"http://127.0.0.1:{stack.layout.dapr_http_port('orchestrator')}/v1.0/publish/pubsub/{topic}"
    response = httpx.post(url, json=document, headers={"dapr-api-token": stack.dapr_api_token()}, timeout=10)
    assert response.status_code == 204, response.text


def request_document(stack: LocalStack, request_id: str, **source: Any) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "source": {
            "host": "127.0.0.1",
            "port": stack.layout.postgres_port,
            "username": "postgres",
            "database": DEMO_DATABASE,
        }
        | source,
        "credentials": {"kind": "secret", "store": "secretstore", "key": DEMO_SECRET},
        "stage_timeout_seconds": 60,
    }


def stream_events(stack: LocalStack, topic: str) -> list[dict[str, Any]]:
    # redis-py types every reply for decoded and raw clients alike; this client is raw (no decode_responses).
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], redis.Redis(port=stack.layout.redis_port).xrange(topic))
    return [json.loads(fields[b"data"]) for _, fields in entries]


def wait_for_completion(stack: LocalStack, run_id: str, timeout: float = 90) -> dict[str, Any]:
    """Waits for the run's `extraction.completed` event on the pub/sub itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for cloud_event in stream_events(stack, "extraction.completed"):
            if cloud_event["data"]["run_id"] == run_id:
                data: dict[str, Any] = cloud_event["data"]
                return data
        time.sleep(0.2)
    raise AssertionError(f"no extraction.completed for {run_id} within {timeout} s")


def demo_catalog(stack: LocalStack) -> dict[str, Any]:
    """What pg_catalog says is in the demo database, asked independently of the extractor."""
    with psycopg.connect(**stack.postgres.connect_kwargs(DEMO_DATABASE)) as conn:
        schemas = {
            r[0]
            for r in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"
            )
        }
        relations = conn.execute(
            "SELECT n.nspname, c.relname, c.relkind, c.relispartition FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p','v','m','f') "
            "AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
        ).fetchall()
        columns = {
            tuple(r)
            for r in conn.execute(
                "SELECT n.nspname, c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE a.attnum > 0 AND NOT a.attisdropped "
                "AND c.relkind IN ('r','p','v','m','f') AND n.nspname NOT LIKE 'pg\\_%' "
                "AND n.nspname <> 'information_schema'"
            )
        }
        routines = conn.execute(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'"
        ).fetchone()
        views_with_sources = conn.execute(
            "SELECT count(DISTINCT r.ev_class) FROM pg_rewrite r JOIN pg_class v ON v.oid = r.ev_class "
            "JOIN pg_namespace n ON n.oid = v.relnamespace "
            "JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = r.oid "
            "AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> r.ev_class "
            "WHERE v.relkind IN ('v', 'm') AND n.nspname NOT LIKE 'pg\\_%' "
            "AND n.nspname <> 'information_schema'"
        ).fetchone()
    kinds = Counter("TablePartition" if part else RELATION_TYPES[kind] for _, _, kind, part in relations)
    kinds["Procedure"] = routines[0] if routines else 0
    kinds["Process"] = views_with_sources[0] if views_with_sources else 0
    return {"schemas": schemas, "relation_types": kinds, "columns": columns}


def load_entities(stack: LocalStack, location: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    run_dir = stack.layout.objects / location
    manifest = json.loads((run_dir / "manifest.json").read_text())
    entities: list[dict[str, Any]] = []
    for entry in manifest["files"]:
        # A file of a schema carried over unread is in the folder of the run that wrote it.
        content = (stack.layout.objects / entry.get("folder", location) / entry["name"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == entry["sha256"]
        assert len(content) == entry["bytes"]
        if "type" in entry:
            entities.extend(json.loads(line) for line in decode(entry["name"], content).decode().splitlines())
    return entities, manifest


def test_event_in_entities_out_matching_the_catalog(full_stack: LocalStack) -> None:
    publish(full_stack, request_document(full_stack, "e2e-demo"))
    completed = wait_for_completion(full_stack, "e2e-demo")
    assert completed["status"] == "COMPLETED", completed
    entities, manifest = load_entities(full_stack, completed["location"])
    expected = demo_catalog(full_stack)
    counts = Counter(e["typeName"] for e in entities)
    assert (
        counts
        == Counter(
            {"Connection": 1, "Database": 1, "Schema": len(expected["schemas"]), "Column": len(expected["columns"])}
        )
        + expected["relation_types"]
    )
    assert manifest["counts"] == dict(counts) == completed["counts"]
    connection_qn = default_connection_qualified_name("127.0.0.1", full_stack.layout.postgres_port)
    assert completed["location"] == f"{connection_qn}/e2e-demo"
    prefix = f"{connection_qn}/{DEMO_DATABASE}/"
    got_columns = {
        tuple(e["attributes"]["qualifiedName"].removeprefix(prefix).split("/"))
        for e in entities
        if e["typeName"] == "Column"
    }
    assert got_columns == expected["columns"]
    by_qn = {(e["typeName"], e["attributes"]["qualifiedName"]) for e in entities}
    assert len(by_qn) == len(entities), "qualifiedNames must be unique within a run"
    assert_pyatlan_accepts(entities)
    for entity in entities:
        for attribute in PARENT_ATTRIBUTES:
            if attribute in entity["attributes"]:
                ref = entity["attributes"][attribute]
                assert (ref["typeName"], ref["uniqueAttributes"]["qualifiedName"]) in by_qn, (entity, attribute)


def assert_pyatlan_accepts(entities: list[dict[str, Any]]) -> None:
    """Every published line parses with pyatlan's own asset model and round-trips without losing attributes."""
    from pyatlan.model.assets import Asset

    for entity in entities:
        asset = Asset._convert_to_real_type_(entity)  # type: ignore[no-untyped-call]
        assert type(asset).__name__ == entity["typeName"]
        kept = asset.dict(by_alias=True, exclude_unset=True)["attributes"]
        lost = set(entity["attributes"]) - set(kept)
        assert not lost, f"{entity['attributes']['qualifiedName']}: pyatlan dropped {lost}"


def test_duplicate_request_starts_no_second_run(full_stack: LocalStack) -> None:
    publish(full_stack, request_document(full_stack, "e2e-dup"))
    wait_for_completion(full_stack, "e2e-dup")
    publish(full_stack, request_document(full_stack, "e2e-dup"))
    # A later request acts as a barrier: once it has completed, the duplicate has long been handled.
    publish(full_stack, request_document(full_stack, "e2e-after-dup"))
    wait_for_completion(full_stack, "e2e-after-dup")
    runs = [ce["data"]["run_id"] for ce in stream_events(full_stack, "extraction.completed")]
    assert runs.count("e2e-dup") == 1
    extract_commands = [ce["data"]["run_id"] for ce in stream_events(full_stack, "extract.requested")]
    assert extract_commands.count("e2e-dup") == 1


def test_malformed_request_is_dead_lettered_and_the_services_keep_serving(full_stack: LocalStack) -> None:
    publish(full_stack, {"request_id": "e2e bad id", "source": {"host": "x"}, "password": "leak?"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        dead = [
            ce for ce in stream_events(full_stack, "pgmeta.deadletter") if ce["data"].get("request_id") == "e2e bad id"
        ]
        if dead:
            break
        time.sleep(0.2)
    assert dead, "the malformed event did not reach the dead-letter topic"
    log = (full_stack.layout.logs / "orchestrator.log").read_text()
    assert "dropping malformed extraction.requested" in log and "request_id" in log
    publish(full_stack, request_document(full_stack, "e2e-after-bad"))
    assert wait_for_completion(full_stack, "e2e-after-bad")["status"] == "COMPLETED"


@pytest.mark.parametrize(
    ("run_id", "source", "password", "says"),
    [
        ("e2e-wrong-password", {}, "not-the-password", "authentication failed for user 'postgres'"),
        ("e2e-unreachable", {"port": 1}, "whatever", "cannot connect to PostgreSQL at 127.0.0.1:1"),
    ],
)
def test_bad_source_fails_fast_with_a_clear_error(
    full_stack: LocalStack, run_id: str, source: dict[str, Any], password: str, says: str
) -> None:
    body = request_document(full_stack, run_id, **source)
    body.pop("credentials")
    body["password"] = password
    started = time.monotonic()
    response = httpx.post(f"{full_stack.layout.api_url}/runs", json=body, headers=api_headers(full_stack), timeout=10)
    assert response.status_code == 202, response.text
    deadline = started + 30
    while time.monotonic() < deadline:
        run = httpx.get(
            f"{full_stack.layout.api_url}/runs/{run_id}", headers=api_headers(full_stack), timeout=10
        ).json()
        if run["status"] in {"COMPLETED", "FAILED"}:
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    assert run["status"] == "FAILED", run
    assert says in run["error"]
    assert password not in json.dumps(run)
    assert elapsed < 15, f"took {elapsed:.1f} s"
    preflights = [ce["data"]["run_id"] for ce in stream_events(full_stack, "preflight.requested")]
    assert preflights.count(run_id) == 1, "a failed connection must not be retried in a storm"
    extracts = [ce["data"]["run_id"] for ce in stream_events(full_stack, "extract.requested")]
    assert run_id not in extracts, "nothing is extracted after a failed preflight"
    completed = wait_for_completion(full_stack, run_id)
    assert completed["status"] == "FAILED" and says in completed["error"]
    for topic in ("extraction.requested", "preflight.requested", "stage.failed", "extraction.completed"):
        assert password not in json.dumps(stream_events(full_stack, topic))
    assert password not in (full_stack.layout.logs / "extractor.log").read_text()
    redis_client = redis.Redis(port=full_stack.layout.redis_port)
    assert not redis_client.exists(f"credentials||cred/{run_id}"), "the run's stored password outlived the run"


def test_cli_extract_wait_json(full_stack: LocalStack) -> None:
    # The CLI finds the stack's admin token in its state directory, as after `make up`.
    env = {k: v for k, v in full_stack.cli_env().items() if k != "PGMETA_API_TOKEN"}
    env["PGMETA_STATE_DIR"] = str(full_stack.state)
    result = subprocess.run(
        full_stack.extract_argv("e2e-cli", "--json"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"run_id", "status", "counts", "changes", "schemas", "output", "error"}
    assert set(document["changes"]) == {"created", "updated", "unchanged", "deleted"}
    assert set(document["schemas"]) == {"extracted", "skipped"}
    assert document["status"] == "COMPLETED" and document["error"] is None
    output = Path(document["output"])
    manifest = json.loads((output / "manifest.json").read_text())
    entity_files = [
        full_stack.layout.objects / f.get("folder", output) / f["name"] for f in manifest["files"] if "type" in f
    ]
    lines = [line for path in entity_files for line in decode(path.name, path.read_bytes()).decode().splitlines()]
    assert len(lines) == sum(document["counts"].values())
    assert all({"typeName", "attributes"} <= json.loads(line).keys() for line in lines)
    status = subprocess.run(
        [sys.executable, "-m", "pgmeta_cli.main", "status", "e2e-cli", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0 and json.loads(status.stdout)["status"] == "COMPLETED"
    listed = httpx.get(f"{full_stack.layout.api_url}/runs", headers=api_headers(full_stack), timeout=10).json()
    assert "e2e-cli" in {run["run_id"] for run in listed}
