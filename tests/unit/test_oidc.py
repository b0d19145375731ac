"""OIDC JWTs verified against an issuer's JWKS, served on loopback from a key set generated here."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm

from pgmeta_orchestrator.app import create_app, wire
from pgmeta_orchestrator.settings import OrchestratorSettings
from tests.unit.api_harness import RUN, AnsweringPlatform, FakeWorkflows

ISSUER = "https://login.example.test/realms/data"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    public = json.loads(RSAAlgorithm.to_jwk(KEY.public_key())) | {"kid": "k1", "use": "sig", "alg": "RS256"}
    body = json.dumps({"keys": [public]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/certs"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def client(jwks_url: str, tmp_path: Path) -> TestClient:
    settings = OrchestratorSettings(oidc_issuer=ISSUER, oidc_jwks_url=jwks_url, audit_log_path=tmp_path / "audit.jsonl")
    app = create_app(settings)
    wire(app, AnsweringPlatform(), FakeWorkflows(), settings)
    return TestClient(app)


def token(key: Any = KEY, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": "pgmeta", "sub": "alice", "iat": now, "exp": now + 300, "pgmeta_role": "operator"}
    return jwt.encode(payload | claims, key, algorithm="RS256", headers={"kid": "k1"})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def test_a_valid_jwt_carries_its_subject_and_role(client: TestClient) -> None:
    response = client.post("/runs", json=RUN, headers=bearer(token()))
    assert response.status_code == 202, response.text
    run = client.get(f"/runs/{response.json()['run_id']}", headers=bearer(token(pgmeta_role=["viewer"])))
    assert run.json()["started_by"] == "oidc:alice"


@pytest.mark.parametrize(
    "bad",
    [
        {"exp": int(time.time()) - 10},
        {"aud": "someone-else"},
        {"iss": "https://evil.example.test"},
        {"pgmeta_role": "superuser"},
        {"pgmeta_role": None},
    ],
    ids=["expired", "audience", "issuer", "unknown-role", "no-role"],
)
def test_a_jwt_that_fails_a_check_is_401(client: TestClient, bad: dict[str, Any]) -> None:
    assert client.get("/runs", headers=bearer(token(**bad))).status_code == 401


def test_a_jwt_signed_by_another_key_is_401(client: TestClient) -> None:
    assert client.get("/runs", headers=bearer(token(OTHER_KEY))).status_code == 401


def test_a_viewer_jwt_may_read_but_not_start(client: TestClient) -> None:
    viewer = bearer(token(pgmeta_role="viewer"))
    assert client.get("/runs", headers=viewer).status_code == 200
    assert client.post("/runs", json=RUN, headers=viewer).status_code == 403
