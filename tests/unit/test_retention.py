"""Retention decisions with an in-memory platform, object store and workflow client."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import orjson

from pgmeta_orchestrator.retention import RetentionService
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_shared.events import ExtractionCompleted
from pgmeta_shared.keys import RETENTION_CONNECTIONS_KEY as CONNECTIONS_KEY
from pgmeta_shared.keys import RUNS_INDEX_KEY as INDEX_KEY
from pgmeta_shared.keys import (
    fingerprint_chunk_part,
    fingerprint_chunk_part_key,
    fingerprint_folds_key,
    fingerprint_part_key,
    fingerprint_parts_key,
    snapshot_key,
)
from pgmeta_shared.keys import retention_runs_key as runs_key
from tests.fakes import InMemoryPlatform

QN = "default/postgres/0000000001"
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class FakeObjects:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.deleted: list[str] = []

    def read(self, path: str) -> bytes | None:
        return self.files.get(path)

    def delete(self, path: str) -> None:
        self.deleted.append(path)
        self.files.pop(path, None)

    def list(self, prefix: str) -> list[str]:
        return [p for p in self.files if p.startswith(f"{prefix}/")]


class Status(Enum):
    RUNNING = 1
    COMPLETED = 2
    FAILED = 3


@dataclass
class State:
    runtime_status: Status
    last_updated_at: datetime
    serialized_input: str | None = None


class FakeWorkflows:
    def __init__(self) -> None:
        self.states: dict[str, State] = {}
        self.purged: list[str] = []

    def iter_workflow_instance_ids(self) -> list[str]:
        return list(self.states)

    def get_workflow_state(self, instance_id: str, fetch_payloads: bool = True) -> State | None:
        return self.states.get(instance_id)

    def purge_workflow(self, instance_id: str) -> None:
        self.purged.append(instance_id)
        del self.states[instance_id]


def publish_run(platform: InMemoryPlatform, objects: FakeObjects, service: RetentionService, run: str) -> None:
    location = f"{QN}/{run}"
    objects.files[f"{location}/Table-a-00000.jsonl"] = b"{}\n"
    objects.files[f"{location}/manifest.json"] = orjson.dumps({"files": [{"name": "Table-a-00000.jsonl"}]})
    platform.save_json(fingerprint_parts_key(run), [1] + [0] * 63)
    platform.save_json(fingerprint_part_key(run, 0, 0), [["qn", "Table", "h", "d", "s", "t", "Table"]])
    service.record_finished(ExtractionCompleted(run_id=run, status="COMPLETED", location=location))


def make() -> tuple[RetentionService, InMemoryPlatform, FakeObjects, FakeWorkflows]:
    platform, objects, workflows = InMemoryPlatform(), FakeObjects(), FakeWorkflows()
    settings = OrchestratorSettings(retention_keep_runs=2, retention_workflow_age_hours=1)
    return RetentionService(platform, objects, workflows, settings, clock=lambda: NOW), platform, objects, workflows


def test_keeps_the_last_n_successful_runs_and_the_baseline() -> None:
    service, platform, objects, _ = make()
    for run in ("r1", "r2", "r3", "r4", "r5"):
        publish_run(platform, objects, service, run)
    platform.save_json(snapshot_key(QN), {"run_id": "r1"})  # an old baseline (say the newer runs were filtered)

    dry = service.collect(dry_run=True)
    assert [r.run_id for r in dry.runs] == ["r3", "r2"] and dry.files == 4
    assert objects.deleted == [] and len(platform.stored_json(runs_key(QN))) == 5

    done = service.collect(dry_run=False)
    assert sorted(done.kept) == ["r1", "r4", "r5"]
    assert {p.split("/")[3] for p in objects.files} == {"r1", "r4", "r5"}
    # The manifest goes first: a reader never sees a manifest whose files are gone.
    assert objects.deleted[0].endswith("r3/manifest.json")
    assert [e["run_id"] for e in platform.stored_json(runs_key(QN))] == ["r5", "r4", "r1"]
    assert platform.get_json(fingerprint_parts_key("r3")) is None
    assert platform.get_json(fingerprint_parts_key("r1")) is not None  # the baseline's fingerprints stay
    assert service.collect(dry_run=False).runs == []


def fail_run_with_a_file(
    service: RetentionService, objects: FakeObjects, workflows: FakeWorkflows, run_id: str
) -> None:
    """A run of QN that failed after writing one output file (no manifest)."""
    objects.files[f"{QN}/{run_id}/Table-a-00000.jsonl"] = b"{}\n"
    request = {
        "request_id": run_id,
        "source": {"host": "h", "username": "u"},
        "credentials": {"kind": "secret", "store": "s", "key": "k"},
        "connection_qualified_name": QN,
    }
    workflows.states[run_id] = State(Status.FAILED, NOW, orjson.dumps(request).decode())
    service.record_finished(ExtractionCompleted(run_id=run_id, status="FAILED", error="boom"))


def test_a_failed_run_is_collected_without_a_manifest_but_a_running_one_is_not_known() -> None:
    service, platform, objects, workflows = make()
    publish_run(platform, objects, service, "ok")
    fail_run_with_a_file(service, objects, workflows, "broken")
    assert platform.get_json(CONNECTIONS_KEY) == [QN]
    report = service.collect(dry_run=False)
    assert [r.run_id for r in report.runs] == ["broken"] and report.files == 1
    assert f"{QN}/ok/manifest.json" in objects.files


def test_a_failed_runs_fingerprints_folded_chunk_by_chunk_are_forgotten() -> None:
    """Chunks published early wrote fingerprint parts (without TTL) for a run that then failed before its index:
    the run's ledger names them, and they go with the run."""
    service, platform, objects, workflows = make()
    folded = [fingerprint_chunk_part_key("broken", fingerprint_chunk_part("db000/000000", n)) for n in range(2)]
    for key in folded:
        platform.save_json(key, [["qn", "Table", "h", "d", "s", "t", "Table"]])
    platform.save_json(fingerprint_folds_key("broken"), {"db000/000000": 2})
    fail_run_with_a_file(service, objects, workflows, "broken")
    assert [r.run_id for r in service.collect(dry_run=False).runs] == ["broken"]
    assert not any(key.startswith("broken/") for _, key in platform.state)


def test_purges_only_finished_workflows_older_than_the_age() -> None:
    service, platform, _, workflows = make()
    workflows.states = {
        "old-done": State(Status.COMPLETED, NOW - timedelta(hours=2)),
        "old-failed": State(Status.FAILED, NOW - timedelta(hours=3)),
        "fresh-done": State(Status.COMPLETED, NOW - timedelta(minutes=5)),
        "old-running": State(Status.RUNNING, NOW - timedelta(hours=5)),
    }
    platform.save_json(INDEX_KEY, [{"run_id": r} for r in workflows.states])
    assert sorted(service.collect(dry_run=True).workflows) == ["old-done", "old-failed"]
    assert workflows.purged == []
    service.collect(dry_run=False)
    assert sorted(workflows.purged) == ["old-done", "old-failed"]
    assert [e["run_id"] for e in platform.stored_json(INDEX_KEY)] == ["fresh-done", "old-running"]


def test_report_shape_is_json() -> None:
    service, *_ = make()
    report: dict[str, Any] = service.collect(dry_run=True).model_dump(mode="json")
    assert report == {"dry_run": True, "keep": 2, "runs": [], "files": 0, "workflows": [], "kept": []}


def test_a_folder_a_kept_run_refers_to_stays_and_a_run_deletes_only_its_own_files() -> None:
    """Incremental runs list an unchanged schema's files in the folder of the run that last read it."""
    service, platform, objects, _ = make()
    for run in ("r1", "r2", "r3", "r4"):
        publish_run(platform, objects, service, run)
    # r2 read schema s (its file is in r2's folder) and r4 carried it over; r3 carried it too (and is doomed).
    objects.files[f"{QN}/r2/Table-a-00000-s.jsonl"] = b"{}\n"
    referring = {"name": "Table-a-00000-s.jsonl", "folder": f"{QN}/r2"}
    for run in ("r3", "r4"):
        own = {"name": "Table-a-00000.jsonl"}
        objects.files[f"{QN}/{run}/manifest.json"] = orjson.dumps({"files": [own, referring]})
    # r1's own files are referred to by r2's manifest only (r2 kept because r4 refers to it): r1 stays too.
    objects.files[f"{QN}/r2/manifest.json"] = orjson.dumps(
        {"files": [{"name": "Table-a-00000-s.jsonl"}, {"name": "Table-a-00000.jsonl", "folder": f"{QN}/r1"}]}
    )
    platform.save_json(snapshot_key(QN), {"run_id": "r4"})
    service = RetentionService(
        platform, objects, FakeWorkflows(), OrchestratorSettings(retention_keep_runs=1), clock=lambda: NOW
    )

    done = service.collect(dry_run=False)
    assert [r.run_id for r in done.runs] == ["r3"]
    assert sorted(done.kept) == ["r1", "r2", "r4"]
    assert f"{QN}/r2/Table-a-00000-s.jsonl" in objects.files, "r3's manifest lists it, but it is r2's"
    assert sorted(objects.deleted) == [f"{QN}/r3/Table-a-00000.jsonl", f"{QN}/r3/manifest.json"]
