"""What a new user does through the real stack: their own secret, a reused request id, change counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
import redis

from pgmeta_devstack.stack import DEMO_DATABASE, LocalStack
from tests.plugins.servers import api_headers, register_connection

pytestmark = pytest.mark.e2e


def _source(stack: LocalStack) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": stack.layout.postgres_port, "username": "postgres", "database": DEMO_DATABASE}


def _wait(stack: LocalStack, run_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run: dict[str, Any] = httpx.get(
            f"{stack.layout.api_url}/runs/{run_id}", headers=api_headers(stack), timeout=10
        ).json()
        if run.get("status") in {"COMPLETED", "FAILED"}:
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish within {timeout} s")


def test_a_users_own_secret_is_used_without_restarting_the_stack(full_stack: LocalStack) -> None:
    env = dict(os.environ, PGMETA_STATE_DIR=str(full_stack.state), PGMETA_BASE_PORT=str(full_stack.layout.base_port))
    result = subprocess.run(
        [sys.executable, "-m", "pgmeta_devstack.main", "secrets", "set", "my-shop", "--username", "postgres"],
        input=full_stack.demo_password() + "\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert full_stack.demo_password() not in result.stdout + result.stderr
    # A stored secret is reachable only through a connection an admin registers for its server.
    register_connection(full_stack, "my-shop", DEMO_DATABASE, secret="my-shop")
    body = {"connection": "my-shop"}
    answer = httpx.post(
        f"{full_stack.layout.api_url}/preflight", headers=api_headers(full_stack), json=body, timeout=90
    ).json()
    assert answer["ok"], answer
    full_stack.up()  # `make up` again rewrites secrets.json: the user's entry stays
    assert "my-shop" in json.loads((full_stack.state / "secrets.json").read_text())
    assert "my-shop" in json.loads((full_stack.state / "user-secrets.json").read_text())


def test_reusing_a_request_id_after_a_failure_is_a_conflict_and_stores_nothing(full_stack: LocalStack) -> None:
    body = {
        "request_id": "e2e-reuse",
        "source": _source(full_stack),
        "password": "not-the-password",
        "stage_timeout_seconds": 60,
    }
    assert (
        httpx.post(
            f"{full_stack.layout.api_url}/runs", headers=api_headers(full_stack), json=body, timeout=10
        ).status_code
        == 202
    )
    assert _wait(full_stack, "e2e-reuse")["status"] == "FAILED"
    fixed = body | {"password": full_stack.demo_password()}
    conflict = httpx.post(f"{full_stack.layout.api_url}/runs", headers=api_headers(full_stack), json=fixed, timeout=10)
    assert conflict.status_code == 409, conflict.text
    assert "e2e-reuse" in conflict.json()["detail"] and full_stack.demo_password() not in conflict.text
    same = httpx.post(f"{full_stack.layout.api_url}/runs", headers=api_headers(full_stack), json=body, timeout=10)
    assert same.status_code == 202 and same.json()["run_id"] == "e2e-reuse"
    assert not redis.Redis(port=full_stack.layout.redis_port).exists("cred/e2e-reuse")
    assert _wait(full_stack, "e2e-reuse")["status"] == "FAILED"


def test_change_counts_show_in_the_api_and_the_cli(full_stack: LocalStack) -> None:
    env = full_stack.cli_env()
    for run_id in ("e2e-changes-1", "e2e-changes-2"):
        extract = subprocess.run(
            full_stack.extract_argv(run_id, "--json"),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert extract.returncode == 0, extract.stderr
    document = json.loads(extract.stdout)
    total = sum(document["counts"].values())
    assert document["changes"] == {"created": 0, "updated": 0, "unchanged": total, "deleted": 0}
    run = httpx.get(
        f"{full_stack.layout.api_url}/runs/e2e-changes-2", headers=api_headers(full_stack), timeout=10
    ).json()
    assert run["changes"] == document["changes"]
    where = {"host": "127.0.0.1", "port": full_stack.layout.postgres_port, "database": DEMO_DATABASE}
    assert run["source"] == where and run["duration_seconds"] > 0
    listed = subprocess.run(
        [sys.executable, "-m", "pgmeta_cli.main", "runs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.splitlines()
    assert listed[0].split()[:3] == ["RUN", "STATUS", "SOURCE"]
    row = next(line for line in listed if line.startswith("e2e-changes-2 "))
    assert f"127.0.0.1:{full_stack.layout.postgres_port}/{DEMO_DATABASE}" in row and f"={total}" in row
