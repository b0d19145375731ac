"""Who may call what: every role (and an outsider) against every REST route, and the audit trail it leaves."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel

from pgmeta_orchestrator.app import create_app, wire
from pgmeta_orchestrator.auth import Role, TokenCreate
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_shared.events import MetadataRequested, PreflightRequested, Stage, TopicName
from pgmeta_shared.keys import metadata_answer_key, stage_result_key
from tests.fakes import InMemoryPlatform

BOOTSTRAP = "bootstrap-admin-token-for-tests"


class AnsweringPlatform(InMemoryPlatform):
    """The extractor's side of a question, answered at once so preflight and metadata do not wait."""

    def publish(self, topic: TopicName, event: BaseModel) -> None:
        super().publish(topic, event)
        if isinstance(event, PreflightRequested):
            self.save_json(stage_result_key(event.run_id, Stage.PREFLIGHT), {"ok": True, "databases": []})
        if isinstance(event, MetadataRequested):
            self.save_json(metadata_answer_key(event.run_id), {"ok": True, "databases": []})


@dataclass
class FakeWorkflowState:
    runtime_status: Any
    serialized_custom_status: str | None = None
    serialized_output: str | None = None
    created_at: Any = None
    last_updated_at: Any = None
    failure_details: Any = None


class FakeWorkflows:
    def __init__(self) -> None:
        self.scheduled: dict[str, Any] = {}
        self.terminated: list[str] = []

    def get_workflow_state(self, run_id: str, fetch_payloads: bool = True) -> Any:
        if run_id not in self.scheduled:
            return None

        class Status:
            name = "RUNNING"

        return FakeWorkflowState(runtime_status=Status())

    def schedule_new_workflow(self, name: str, input: Any, instance_id: str) -> None:  # noqa: A002
        self.scheduled[instance_id] = input

    def terminate_workflow(self, run_id: str) -> None:
        self.terminated.append(run_id)


@dataclass
class Api:
    client: TestClient
    platform: AnsweringPlatform
    workflows: FakeWorkflows
    tokens: dict[str, str | None]
    audit_path: Path

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


@pytest.fixture
def api(tmp_path: Path) -> Api:
    settings = OrchestratorSettings(
        bootstrap_token_sha256=hashlib.sha256(BOOTSTRAP.encode()).hexdigest(),
        audit_log_path=tmp_path / "audit.jsonl",
        question_timeout_seconds=2,
    )
    platform = AnsweringPlatform()
    workflows = FakeWorkflows()
    app = create_app(settings)
    wire(app, platform, workflows, settings)
    workflows.scheduled["run-existing"] = {}
    tokens: dict[str, str | None] = {
        role.value: app.state.tokens.create(TokenCreate(name=f"a {role}", role=role), "test").token for role in Role
    }
    tokens["outsider"] = None
    tokens["forged"] = "pgm_000000000000_not-a-real-token"
    return Api(TestClient(app), platform, workflows, tokens, tmp_path / "audit.jsonl")


SOURCE = {"host": "127.0.0.1", "port": 5432, "username": "postgres"}
RUN = {"source": SOURCE, "password": "pw"}
QUESTION = {"source": SOURCE, "password": "pw"}
METADATA_QUERY = {"host": "127.0.0.1", "username": "postgres", "credentials_secret": "demo"}

# (method, path, body or query, least role). None: public.
ROUTES: list[tuple[str, str, dict[str, Any] | None, Role | None]] = [
    ("GET", "/healthz", None, None),
    ("GET", "/runs", None, Role.VIEWER),
    ("GET", "/runs/run-existing", None, Role.VIEWER),
    ("POST", "/runs", RUN, Role.OPERATOR),
    ("POST", "/runs/run-existing/cancel", None, Role.OPERATOR),
    ("POST", "/preflight", QUESTION, Role.OPERATOR),
    ("POST", "/metadata/databases", QUESTION, Role.OPERATOR),
    ("POST", "/metadata/schemas", QUESTION, Role.OPERATOR),
    ("GET", "/metadata/databases", METADATA_QUERY, Role.OPERATOR),
    ("GET", "/metadata/schemas", METADATA_QUERY, Role.OPERATOR),
    ("POST", "/tokens", {"name": "ci", "role": "viewer"}, Role.ADMIN),
    ("GET", "/tokens", None, Role.ADMIN),
    ("DELETE", "/tokens/000000000000", None, Role.ADMIN),
]
CALLERS = ["outsider", "forged", "viewer", "operator", "admin"]


def _call(api: Api, method: str, path: str, payload: dict[str, Any] | None, caller: str) -> int:
    token = api.tokens[caller]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method == "GET":
        return api.client.get(path, params=payload, headers=headers).status_code
    return api.client.request(method, path, json=payload, headers=headers).status_code


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path", "payload", "least"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_role_against_every_route(
    api: Api, caller: str, method: str, path: str, payload: dict[str, Any] | None, least: Role | None
) -> None:
    code = _call(api, method, path, payload, caller)
    if least is None:
        assert code == 200
    elif caller in {"outsider", "forged"}:
        assert code == 401
    elif Role(caller).rank < least.rank:
        assert code == 403
    else:
        assert code not in {401, 403}, f"{caller} was refused {method} {path}"
        assert code < 500


def test_the_table_covers_every_route(api: Api) -> None:
    """A new route must be added to ROUTES (and so decide who may call it)."""
    served = {
        (method, route.path)
        for route in api.client.app.routes  # type: ignore[attr-defined]
        if isinstance(route, APIRoute) and not route.path.startswith(("/events/", "/dapr/"))
        for method in route.methods
    }
    tabled = {(m, p.replace("run-existing", "{run_id}").replace("000000000000", "{token_id}")) for m, p, _, _ in ROUTES}
    assert served == tabled


def test_openapi_declares_the_bearer_scheme(api: Api) -> None:
    spec = api.client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "security" not in spec["paths"]["/healthz"]["get"]
    assert spec["paths"]["/runs"]["post"]["security"] == [{"HTTPBearer": []}]


def test_bootstrap_admin_creates_a_token_that_works_until_revoked(api: Api) -> None:
    admin = {"Authorization": f"Bearer {BOOTSTRAP}"}
    created = api.client.post("/tokens", json={"name": "ci", "role": "operator"}, headers=admin)
    assert created.status_code == 201
    token = created.json()["token"]
    listed = api.client.get("/tokens", headers=admin).json()
    assert token not in json.dumps(listed) and "sha256" not in json.dumps(listed)
    assert token not in json.dumps(list(api.platform.state.values()))  # only its digest is stored
    ci = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/runs", headers=ci).status_code == 200
    assert api.client.delete(f"/tokens/{created.json()['id']}", headers=admin).status_code == 204
    assert api.client.get("/runs", headers=ci).status_code == 401


def test_runs_record_who_started_them(api: Api) -> None:
    operator = {"Authorization": f"Bearer {api.tokens['operator']}"}
    run_id = api.client.post("/runs", json=RUN, headers=operator).json()["run_id"]
    assert api.client.get(f"/runs/{run_id}", headers=operator).json()["started_by"] == "token:a operator"


def test_audit_records_allowed_and_denied_actions(api: Api) -> None:
    operator = {"Authorization": f"Bearer {api.tokens['operator']}"}
    run_id = api.client.post("/runs", json=RUN, headers=operator).json()["run_id"]
    api.client.post("/runs", json=RUN)
    api.client.post("/tokens", json={"name": "x", "role": "admin"}, headers=operator)
    records = api.audit()
    started = next(r for r in records if r["action"] == "run.start" and r["outcome"] == "allowed")
    assert started["principal"] == "token:a operator" and started["run_id"] == run_id
    assert started["target"] == "127.0.0.1:5432/* as postgres" and started["client"]
    anonymous = next(r for r in records if r["action"] == "run.start" and r["outcome"] == "denied")
    assert anonymous["principal"] is None and anonymous["reason"] == "no bearer token"
    escalation = next(r for r in records if r["action"] == "tokens.manage")
    assert escalation["outcome"] == "denied" and "needs admin" in escalation["reason"]
    assert set(started) == {"time", "principal", "role", "client", "action", "target", "run_id", "outcome", "reason"}
    assert "pw" not in api.audit_path.read_text().replace("pgmeta", "")
