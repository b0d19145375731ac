"""An orchestrator app on an in-memory platform, with a token per role: the harness of the API tests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, SecretStr

from pgmeta_orchestrator.app import create_app, wire
from pgmeta_orchestrator.audit import AuditLog
from pgmeta_orchestrator.auth import Authenticator, Role, TokenCreate, TokenStore
from pgmeta_orchestrator.connections import ConnectionSpec
from pgmeta_orchestrator.retention import RetentionService
from pgmeta_orchestrator.schedules import ScheduleService
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
    serialized_input: str | None = None


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

    def terminate_workflow(self, run_id: str, output: Any = None) -> None:
        self.terminated.append(run_id)

    def iter_workflow_instance_ids(self) -> Iterator[str]:
        return iter(list(self.scheduled))


class FakeJobs:
    """The scheduler's Jobs API, in memory: job name -> (due, data)."""

    def __init__(self) -> None:
        self.jobs: dict[str, tuple[Any, dict[str, Any]]] = {}

    def schedule_once(self, name: str, at: Any, data: dict[str, Any]) -> None:
        self.jobs[name] = (at, data)

    def delete(self, name: str) -> None:
        self.jobs.pop(name, None)

    def exists(self, name: str) -> bool:
        return name in self.jobs


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
        bootstrap_token_sha256=SecretStr(hashlib.sha256(BOOTSTRAP.encode()).hexdigest()),
        audit_log_path=tmp_path / "audit.jsonl",
        question_timeout_seconds=2,
    )
    platform = AnsweringPlatform()
    workflows = FakeWorkflows()
    app = create_app(settings)
    wire(app, platform, workflows, settings)
    # What install_schedules' lifespan makes with a sidecar: the scheduler in memory, nothing to collect.
    app.state.schedules = ScheduleService(platform, FakeJobs(), app.state.runs, settings, app.state.source_policy)
    app.state.retention = RetentionService(platform, None, workflows, settings)
    workflows.scheduled["run-existing"] = {}
    app.state.connections.put("demo", ConnectionSpec.model_validate(CONNECTION), "test")
    tokens: dict[str, str | None] = {
        role.value: app.state.tokens.create(TokenCreate(name=f"a {role}", role=role), "test").token for role in Role
    }
    tokens["outsider"] = None
    tokens["forged"] = "pgm_000000000000_not-a-real-token"
    return Api(TestClient(app), platform, workflows, tokens, tmp_path / "audit.jsonl")


SOURCE = {"host": "127.0.0.1", "port": 5432, "username": "postgres"}
RUN = {"source": SOURCE, "password": "pw"}
QUESTION = {"source": SOURCE, "password": "pw"}
METADATA_QUERY = {"connection": "demo"}
SCHEDULE = {"schedule_id": "nightly", "schedule": "@daily", "connection": "demo"}
CONNECTION = {"source": {"host": "db.internal", "username": "reader"}, "secret": {"key": "demo-postgres"}}


def admit_bootstrap_admin(app: FastAPI) -> dict[str, str]:
    """For a test that wires an app's state by hand: the auth the routes need, and the admin's headers."""
    settings = OrchestratorSettings(bootstrap_token_sha256=SecretStr(hashlib.sha256(BOOTSTRAP.encode()).hexdigest()))
    app.state.tokens = TokenStore(InMemoryPlatform(), settings.registry_store)
    app.state.authenticator = Authenticator(settings, app.state.tokens)
    app.state.audit = AuditLog(None)
    return {"Authorization": f"Bearer {BOOTSTRAP}"}
