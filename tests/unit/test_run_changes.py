"""Change counts, source and duration wherever a run is shown: GET /runs/{id}, --json, status, runs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pgmeta_cli import main as cli
from pgmeta_orchestrator.runs import RunService
from pgmeta_orchestrator.settings import OrchestratorSettings

from ..fakes import InMemoryPlatform, route_cli_to
from .api_harness import admit_bootstrap_admin
from .test_request_ids import _no_lifespan

CHANGES = {"created": 3, "updated": 1, "unchanged": 70, "deleted": 2}


class OneCompletedRun:
    def get_workflow_state(self, run_id: str, fetch_payloads: bool = False) -> Any:
        if run_id != "sales-7":
            return None
        request = {"request_id": "sales-7", "source": {"host": "db.example.com", "port": 5433, "database": "sales"}}
        output = {"run_id": "sales-7", "status": "COMPLETED", "counts": {"Table": 7}, "changes": CHANGES}
        return SimpleNamespace(
            runtime_status=SimpleNamespace(name="COMPLETED"),
            serialized_custom_status=json.dumps({"stage": "done", "counts": {"Table": 7}}),
            serialized_output=json.dumps(output),
            serialized_input=json.dumps(request),
            created_at=datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC),
            last_updated_at=datetime(2026, 11, 29, 12, 0, 12, 500000, tzinfo=UTC),
            failure_details=None,
        )


@pytest.fixture
def client() -> TestClient:
    from pgmeta_orchestrator.app import create_app

    platform = InMemoryPlatform()
    platform.save_json("runs/index", [{"run_id": "sales-7", "created_at": "2026-11-29T12:00:00+00:00"}])
    app = create_app(OrchestratorSettings())
    app.router.lifespan_context = _no_lifespan
    app.state.runs = RunService(platform, OneCompletedRun(), OrchestratorSettings())
    return TestClient(app, headers=admit_bootstrap_admin(app))


def test_get_run_has_changes_source_and_duration(client: TestClient) -> None:
    run = client.get("/runs/sales-7").json()
    assert run["changes"] == CHANGES
    assert run["source"] == {"host": "db.example.com", "port": 5433, "database": "sales"}
    assert run["duration_seconds"] == pytest.approx(12.5)


@pytest.fixture
def cli_on(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    route_cli_to(monkeypatch, client)
    monkeypatch.setenv("PGMETA_API_URL", "http://testserver")


@pytest.mark.usefixtures("cli_on")
def test_status_json_and_human_show_changes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "sales-7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changes"] == CHANGES
    assert cli.main(["status", "sales-7"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "3 created, 1 updated, 70 unchanged, 2 deleted" in out


@pytest.mark.usefixtures("cli_on")
def test_runs_lists_source_duration_and_changes_under_a_header(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["runs"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[:4] == ["RUN", "STATUS", "SOURCE", "STARTED"]
    assert "sales-7" in row and "db.example.com:5433/sales" in row and "12.5 s" in row
    assert "+3 ~1 =70 -2" in row


def test_summary_carries_changes() -> None:
    run = {"run_id": "r", "status": "COMPLETED", "changes": CHANGES}
    assert cli.summary(run)["changes"] == CHANGES
