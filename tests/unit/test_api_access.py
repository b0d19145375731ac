"""Who may call what: every role (and an outsider) against every REST route, and the audit trail it leaves."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr

from pgmeta_orchestrator.app import create_app, wire
from pgmeta_orchestrator.auth import Role
from pgmeta_orchestrator.settings import OrchestratorSettings
from tests.fakes import InMemoryPlatform
from tests.unit.api_harness import BOOTSTRAP, CONNECTION, METADATA_QUERY, QUESTION, RUN, SCHEDULE, Api, FakeWorkflows

# (method, path, body or query, least role). None: public.
ROUTES: list[tuple[str, str, dict[str, Any] | None, Role | None]] = [
    ("GET", "/healthz", None, None),
    ("GET", "/readyz", None, None),  # the kubelet's probe: 503 here, where no sidecar answers
    ("GET", "/runs", None, Role.VIEWER),
    ("GET", "/runs/run-existing", None, Role.VIEWER),
    ("POST", "/runs", RUN, Role.OPERATOR),
    ("POST", "/runs/run-existing/cancel", None, Role.OPERATOR),
    ("POST", "/runs/run-existing/retry", None, Role.OPERATOR),
    ("POST", "/preflight", QUESTION, Role.OPERATOR),
    ("POST", "/metadata/databases", QUESTION, Role.OPERATOR),
    ("POST", "/metadata/schemas", QUESTION, Role.OPERATOR),
    ("GET", "/metadata/databases", METADATA_QUERY, Role.OPERATOR),
    ("GET", "/metadata/schemas", METADATA_QUERY, Role.OPERATOR),
    ("POST", "/tokens", {"name": "ci", "role": "viewer"}, Role.ADMIN),
    ("GET", "/tokens", None, Role.ADMIN),
    ("DELETE", "/tokens/000000000000", None, Role.ADMIN),
    ("PUT", "/connections/demo", CONNECTION, Role.ADMIN),
    ("GET", "/connections", None, Role.OPERATOR),
    ("GET", "/connections/demo", None, Role.ADMIN),
    ("DELETE", "/connections/gone", None, Role.ADMIN),
    # Schedules: viewers read, operators (who may start runs) change them.
    ("GET", "/schedules", None, Role.VIEWER),
    ("POST", "/schedules", SCHEDULE, Role.OPERATOR),
    ("GET", "/schedules/nightly", None, Role.VIEWER),
    ("POST", "/schedules/nightly/pause", None, Role.OPERATOR),
    ("POST", "/schedules/nightly/resume", None, Role.OPERATOR),
    ("DELETE", "/schedules/gone-schedule", None, Role.OPERATOR),
    # Retention deletes every connection's output for good: admins only, dry runs included.
    ("POST", "/gc", None, Role.ADMIN),
    # The sidecars' own account of the deployment.
    ("GET", "/dapr", None, Role.ADMIN),
    # The console: its page is public (it holds no data and asks for a token); every data route is a viewer's.
    ("GET", "/console", None, None),
    ("GET", "/console/", None, None),
    ("GET", "/console/assets/console.js", None, None),
    ("GET", "/console/api/whoami", None, Role.VIEWER),
    ("GET", "/console/api/runs", None, Role.VIEWER),
    ("GET", "/console/api/schedule-preview?schedule=@daily", None, Role.VIEWER),
    # The CA files a source may name: for those who may test and run sources.
    ("GET", "/console/api/ca-bundles", None, Role.OPERATOR),
    ("GET", "/console/api/runs/run-existing", None, Role.VIEWER),
    ("GET", "/runs/no-such-run/events", None, Role.VIEWER),
    ("GET", "/runs/no-such-run/files/manifest.json", None, Role.VIEWER),
    ("GET", "/runs/no-such-run/entities", None, Role.VIEWER),
    ("GET", "/runs/no-such-run/entity", {"qualified_name": "x"}, Role.VIEWER),
    ("GET", "/runs/no-such-run/compare", None, Role.VIEWER),
]
TEMPLATES = {
    "run-existing": "{run_id}",
    "no-such-run": "{run_id}",
    "000000000000": "{token_id}",
    "demo": "{name}",
    "gone": "{name}",
    "nightly": "{schedule_id}",
    "gone-schedule": "{schedule_id}",
    "console.js": "{name}",
    "manifest.json": "{name:path}",
}
# Routes only the app's own Dapr sidecar calls (dapr-api-token; tests below): not for API callers.
SIDECAR_ONLY = ("/events/", "/dapr/", "/job/")
CALLERS = ["outsider", "forged", "viewer", "operator", "admin"]


def _call(api: Api, method: str, path: str, payload: dict[str, Any] | None, caller: str) -> int:
    token = api.tokens[caller]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method == "GET":
        response = api.client.get(path, params=payload, headers=headers)
    else:
        response = api.client.request(method, path, json=payload, headers=headers)
    code: int = response.status_code
    return code


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize(("method", "path", "payload", "least"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_every_role_against_every_route(
    api: Api, caller: str, method: str, path: str, payload: dict[str, Any] | None, least: Role | None
) -> None:
    code = _call(api, method, path, payload, caller)
    if least is None:
        assert code in ({200, 503} if path == "/readyz" else {200})
    elif caller in {"outsider", "forged"}:
        assert code == 401
    elif Role(caller).rank < least.rank:
        assert code == 403
    else:
        assert code not in {401, 403}, f"{caller} was refused {method} {path}"
        assert code < 500


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    """Every route, those of included routers too (FastAPI keeps an included router as one entry)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _api_routes(route.original_router.routes)


def test_the_table_covers_every_route(api: Api) -> None:
    """A new route must be added to ROUTES (and so decide who may call it)."""
    served = {
        (method, route.path)
        for route in _api_routes(api.client.app.routes)  # type: ignore[attr-defined]
        if not route.path.startswith(SIDECAR_ONLY)
        for method in route.methods or ()
    }
    assert len(served) > 30  # the included routers' routes are in
    tabled = {
        (m, "/".join(TEMPLATES.get(part, part) for part in p.partition("?")[0].split("/"))) for m, p, _, _ in ROUTES
    }
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


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/events/pubsub/extraction.requested"),
        ("POST", "/events/pubsub/publish.completed"),
        ("POST", "/job/pgmeta-gc"),
        ("POST", "/job/pgmeta-schedule-nightly-20261130T010000Z"),
        ("GET", "/dapr/subscribe"),
        ("GET", "/dapr/config"),
    ],
)
def test_sidecar_routes_answer_only_the_apps_own_sidecar(tmp_path: Path, method: str, path: str) -> None:
    """Subscriptions, Dapr's job triggers and its discovery calls need dapr-api-token; an API token is no key."""
    settings = OrchestratorSettings(
        APP_API_TOKEN="sidecar-secret",  # type: ignore[call-arg]  # the alias daprd's environment uses
        bootstrap_token_sha256=SecretStr(hashlib.sha256(BOOTSTRAP.encode()).hexdigest()),
        audit_log_path=tmp_path / "audit.jsonl",
    )
    app = create_app(settings)
    wire(app, InMemoryPlatform(), FakeWorkflows(), settings)
    client = TestClient(app)
    admin = {"Authorization": f"Bearer {BOOTSTRAP}"}
    assert client.request(method, path, headers=admin, json={}).status_code == 401
    assert client.request(method, path, headers={"dapr-api-token": "wrong"}, json={}).status_code == 401
    if path == "/dapr/subscribe":
        answer = client.get(path, headers={"dapr-api-token": "sidecar-secret"})
        assert answer.status_code == 200 and answer.json()
    # The REST routes beside them are not the sidecar's: an API token, not the sidecar's, opens them.
    assert client.get("/runs", headers=admin).status_code == 200
