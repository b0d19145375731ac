"""The attacks of issue 9 against the REST API, at the unit level (the real stack repeats them in e2e)."""

from __future__ import annotations

from typing import Any

from pgmeta_shared.events import ExtractionRequested, TopicName
from pgmeta_shared.keys import credentials_key
from tests.unit.api_harness import CONNECTION, RUN, Api


def _as(api: Api, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.tokens[role]}"}


def _requested(api: Api) -> list[ExtractionRequested]:
    return [e for t, e in api.platform.published if t == TopicName.EXTRACTION_REQUESTED]  # type: ignore[misc]


def test_a_caller_cannot_name_a_stored_secret_for_a_host_of_its_choosing(api: Api) -> None:
    """Exfiltration: `credentials` pointing at someone's secret (or another run's password) is no input."""
    for credentials in (
        {"kind": "secret", "store": "secretstore", "key": "demo-postgres"},
        {"kind": "state", "store": "credentials", "key": credentials_key("victim")},
    ):
        body: dict[str, Any] = {"source": {"host": "evil.example", "username": "postgres"}, "credentials": credentials}
        for path in ("/preflight", "/runs"):
            response = api.client.post(path, json=body, headers=_as(api, "operator"))
            assert response.status_code == 422, response.text
    assert api.platform.published == []


def test_a_registered_secret_travels_only_with_its_own_server(api: Api) -> None:
    mixed = {"connection": "demo", "source": {"host": "evil.example", "username": "postgres"}}
    assert api.client.post("/preflight", json=mixed, headers=_as(api, "operator")).status_code == 422
    response = api.client.post("/runs", json={"connection": "demo"}, headers=_as(api, "operator"))
    assert response.status_code == 202, response.text
    [event] = _requested(api)
    assert event.source.host == "db.internal" and event.credentials.key == "demo-postgres"


def test_connection_takeover_is_refused(api: Api) -> None:
    """A caller cannot write into another connection's namespace: the qualifiedName is derived, never given."""
    body = RUN | {"connection_qualified_name": "default/postgres/victim"}
    response = api.client.post("/runs", json=body, headers=_as(api, "operator"))
    assert response.status_code == 422
    assert api.client.post("/runs", json=RUN, headers=_as(api, "operator")).status_code == 202
    assert api.client.post("/runs", json={"connection": "demo"}, headers=_as(api, "operator")).status_code == 202
    adhoc, registered = _requested(api)
    assert adhoc.connection_qualified_name != registered.connection_qualified_name
    assert registered.connection_qualified_name == "default/postgres/demo"
    # An operator cannot re-point a registered connection at its own server either.
    hijack = CONNECTION | {"source": {"host": "evil.example", "username": "postgres"}}
    assert api.client.put("/connections/demo", json=hijack, headers=_as(api, "operator")).status_code == 403


def test_ad_hoc_hosts_outside_the_allowlist_are_refused_before_anything_is_sent(api: Api) -> None:
    api.client.app.state.source_policy._allowed = ["10.0.0.0/8", "*.db.internal"]  # type: ignore[attr-defined]
    for host in ("127.0.0.1", "evil.example"):
        body = RUN | {"source": {"host": host, "username": "postgres"}}
        response = api.client.post("/preflight", json=body, headers=_as(api, "operator"))
        assert response.status_code == 422 and "not allowed" in response.json()["detail"]
    for host in ("10.1.2.3", "pg1.db.internal"):
        body = RUN | {"source": {"host": host, "username": "postgres"}}
        assert api.client.post("/runs", json=body, headers=_as(api, "operator")).status_code == 202
    assert [e.source.host for e in _requested(api)] == ["10.1.2.3", "pg1.db.internal"]
    assert api.platform.state.get(("credentials", credentials_key("x"))) is None


def test_sslrootcert_only_from_the_configured_directory(api: Api) -> None:
    for path in ("/etc/passwd", "../../etc/passwd", "ca.pem"):
        body = RUN | {"source": {"host": "db", "username": "u", "sslmode": "verify-full", "sslrootcert": path}}
        response = api.client.post("/preflight", json=body, headers=_as(api, "operator"))
        assert response.status_code == 422, path
    assert api.platform.published == []


def test_request_id_reuse_does_not_replace_the_running_runs_password(api: Api) -> None:
    first = RUN | {"request_id": "squat-me", "password": "the-owners"}
    second = RUN | {"request_id": "squat-me", "password": "the-attackers"}
    assert api.client.post("/runs", json=first, headers=_as(api, "operator")).status_code == 202
    api.client.post("/runs", json=second, headers=_as(api, "operator"))
    assert api.platform.state[("credentials", credentials_key("squat-me"))] == {"password": "the-owners"}
    assert len(_requested(api)) == 1
