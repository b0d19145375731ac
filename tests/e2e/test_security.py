"""Issue 9's attacks through the real stack (real sidecars, Redis, PostgreSQL): each one refused."""

from __future__ import annotations

import json
import time
from typing import Any, cast

import httpx
import pytest
import redis

from pgmeta_devstack.stack import DEMO_DATABASE, DEMO_SECRET, LocalStack
from pgmeta_shared.keys import RUNS_INDEX_KEY
from tests.e2e.test_pipeline import publish, request_document, stream_events, wait_for_completion
from tests.plugins.fake_postgres import fake_postgres
from tests.plugins.servers import api_headers

pytestmark = pytest.mark.e2e

STOLEN = "would-be-stolen-password"


def demo_run(stack: LocalStack, run_id: str) -> dict[str, Any]:
    source = {
        "host": "127.0.0.1",
        "port": stack.layout.postgres_port,
        "username": "postgres",
        "database": DEMO_DATABASE,
    }
    return {"request_id": run_id, "source": source, "password": stack.demo_password(), "stage_timeout_seconds": 60}


def app_url(stack: LocalStack, service: str) -> str:
    return f"http://127.0.0.1:{stack.layout.app_port(service)}"


def test_the_api_needs_a_token_and_denials_are_audited(full_stack: LocalStack) -> None:
    api = full_stack.layout.api_url
    assert httpx.get(f"{api}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{api}/runs", timeout=10).status_code == 401
    forged = {"Authorization": "Bearer pgm_000000000000_guess"}
    assert (
        httpx.post(f"{api}/runs", json=demo_run(full_stack, "sec-anon"), headers=forged, timeout=10).status_code == 401
    )
    assert httpx.get(f"{api}/runs", headers=api_headers(full_stack), timeout=10).status_code == 200
    records = [json.loads(line) for line in full_stack.audit_log.read_text().splitlines()]
    denied = [r for r in records if r["outcome"] == "denied"]
    assert {r["action"] for r in denied} >= {"runs.read", "run.start"}
    assert all(r["client"] == "127.0.0.1" for r in denied)


def test_forged_stage_events_are_refused_and_the_victim_run_is_unaffected(full_stack: LocalStack) -> None:
    run_id = "sec-victim"
    response = httpx.post(
        f"{full_stack.layout.api_url}/runs",
        json=demo_run(full_stack, run_id),
        headers=api_headers(full_stack),
        timeout=10,
    )
    assert response.status_code == 202, response.text
    forged_completion = {"data": {"run_id": run_id, "location": "forged/", "file_count": 0, "counts": {}}}
    to_orchestrator = httpx.post(
        f"{app_url(full_stack, 'orchestrator')}/events/pubsub/publish.completed", json=forged_completion, timeout=10
    )
    assert to_orchestrator.status_code == 401
    archive_everything = {"run_id": run_id, "connection_qualified_name": "default/postgres/victim", "units": []}
    forged_publish: dict[str, Any] = {"data": archive_everything | {"counts": {}}}
    for service in ("publisher", "extractor", "transformer"):
        url = f"{app_url(full_stack, service)}/events/pubsub/publish.requested"
        assert httpx.post(url, json=forged_publish, timeout=10).status_code == 401
        assert httpx.get(f"{app_url(full_stack, service)}/dapr/subscribe", timeout=10).status_code == 401
    # The sidecar's own API wants its token; with it, pub/sub scopes still keep the orchestrator from
    # publishing a stage's completion.
    sidecar = f"http://127.0.0.1:{full_stack.layout.dapr_http_port('orchestrator')}/v1.0/publish/pubsub"
    assert httpx.post(f"{sidecar}/publish.completed", json=forged_completion["data"], timeout=10).status_code == 401
    scoped = httpx.post(
        f"{sidecar}/publish.completed",
        json=forged_completion["data"],
        headers={"dapr-api-token": full_stack.dapr_api_token()},
        timeout=10,
    )
    assert scoped.status_code == 403, scoped.text
    completed = wait_for_completion(full_stack, run_id)
    assert completed["status"] == "COMPLETED" and completed["location"] != "forged/"
    run = httpx.get(f"{full_stack.layout.api_url}/runs/{run_id}", headers=api_headers(full_stack), timeout=10).json()
    assert run["status"] == "COMPLETED" and run["started_by"] == "bootstrap-admin"


def test_a_fake_server_asking_for_a_cleartext_password_receives_nothing(full_stack: LocalStack) -> None:
    api = full_stack.layout.api_url
    with fake_postgres() as server:
        naming_a_secret = {
            "source": {"host": "127.0.0.1", "port": server.port, "username": "postgres"},
            "credentials": {"kind": "secret", "store": "secretstore", "key": DEMO_SECRET},
        }
        refused = httpx.post(f"{api}/preflight", json=naming_a_secret, headers=api_headers(full_stack), timeout=90)
        assert refused.status_code == 422
        assert server.connections == 0, "refused before any connection is made"
        inline = {"source": {"host": "127.0.0.1", "port": server.port, "username": "postgres"}, "password": STOLEN}
        answer = httpx.post(f"{api}/preflight", json=inline, headers=api_headers(full_stack), timeout=90)
        assert answer.status_code == 422 and "no password was sent" in answer.json()["error"]
    assert server.connections >= 1
    assert not any(STOLEN.encode() in data for data in server.received)
    # The demo secret names its server: the pub/sub path (trusted, behind the sidecar token) cannot
    # point it at another host either.
    with fake_postgres() as server:
        document = request_document(full_stack, "sec-secret-elsewhere", port=server.port)
        publish(full_stack, document)
        completed = wait_for_completion(full_stack, "sec-secret-elsewhere")
    assert (
        completed["status"] == "FAILED"
        and f"is bound to 127.0.0.1:{full_stack.layout.postgres_port}" in completed["error"]
    )
    assert server.connections == 0


def test_a_request_cannot_delete_keys_it_names(full_stack: LocalStack) -> None:
    raw = redis.Redis(port=full_stack.layout.redis_port)
    before = raw.hgetall(RUNS_INDEX_KEY)
    assert before, "earlier runs are in the index"
    body = demo_run(full_stack, "sec-delete") | {
        "credentials": {"kind": "state", "store": "credentials", "key": RUNS_INDEX_KEY}
    }
    body.pop("password")
    response = httpx.post(f"{full_stack.layout.api_url}/runs", json=body, headers=api_headers(full_stack), timeout=10)
    assert response.status_code == 422
    # Straight through the pub/sub (behind the sidecar token): the run fails, the finish step deletes only
    # its own key.
    document = request_document(full_stack, "sec-delete-pubsub")
    document["credentials"] = {"kind": "state", "store": "credentials", "key": RUNS_INDEX_KEY}
    publish(full_stack, document)
    completed = wait_for_completion(full_stack, "sec-delete-pubsub")
    assert completed["status"] == "FAILED" and "belong to another run" in completed["error"]
    assert raw.exists(RUNS_INDEX_KEY)
    listed = httpx.get(f"{full_stack.layout.api_url}/runs", headers=api_headers(full_stack), timeout=10).json()
    assert {"sec-victim", "sec-delete-pubsub"} <= {run["run_id"] for run in listed}


def test_connection_takeover_is_refused(full_stack: LocalStack) -> None:
    body = demo_run(full_stack, "sec-takeover") | {"connection_qualified_name": "default/postgres/victim"}
    response = httpx.post(f"{full_stack.layout.api_url}/runs", json=body, headers=api_headers(full_stack), timeout=10)
    assert response.status_code == 422
    requested = [ce["data"]["request_id"] for ce in stream_events(full_stack, "extraction.requested")]
    assert "sec-takeover" not in requested


def test_no_secret_in_any_log_event_or_redis_value(full_stack: LocalStack) -> None:
    time.sleep(0.5)
    stack = full_stack
    secrets_ = [stack.demo_password(), stack.api_token(), stack.dapr_api_token(), stack.app_api_token(), STOLEN]
    for log in full_stack.layout.logs.glob("*"):
        text = log.read_text(errors="replace")
        for secret in secrets_:
            assert secret not in text, f"a secret in {log.name}"
    raw = redis.Redis(port=full_stack.layout.redis_port)
    for key in raw.scan_iter(count=1000):
        kind = raw.type(key)
        # redis-py types every reply for decoded and raw clients alike; this client is raw (no decode_responses).
        if kind == b"hash":
            blob = b"".join(cast(dict[bytes, bytes], raw.hgetall(key)).values())
        elif kind == b"stream":
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], raw.xrange(key))
            blob = b"".join(b"".join(fields.values()) for _, fields in entries)
        elif kind == b"string":
            blob = cast(bytes | None, raw.get(key)) or b""
        else:
            continue
        for secret in secrets_:
            assert secret.encode() not in blob, f"a secret in Redis key {key!r}"
