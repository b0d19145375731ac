"""Fences and leases: work that arrives after its run ended commits nothing; a live worker is never robbed."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pgmeta_orchestrator.workflow import Activities
from pgmeta_publisher import publishing
from pgmeta_publisher.publishing import publish
from pgmeta_shared import fencing
from pgmeta_shared.events import PublishRequested, Stage, TopicName, TransformRequested, UnitChunks
from pgmeta_shared.fencing import RunEndedError, RunState, WorkInProgressError, end_run, work_lease
from pgmeta_shared.keys import ArtifactStage, snapshot_key, work_lease_key
from pgmeta_shared.stages import stage_handler
from pgmeta_transformer.transformation import transform

from ..fakes import InMemoryPlatform
from .records import CONNECTION_QN, sample_catalog


def _transformed(platform: InMemoryPlatform, run_id: str) -> PublishRequested:
    platform.save_chunk(run_id, ArtifactStage.EXTRACT, "db000", 0, sample_catalog())
    transform(
        TransformRequested(run_id=run_id, connection_qualified_name=CONNECTION_QN, unit="db000", chunk_count=1),
        platform,
    )
    return PublishRequested(
        run_id=run_id,
        connection_qualified_name=CONNECTION_QN,
        units=[UnitChunks(unit="db000", chunk_count=1)],
        counts={},
    )


def _manifests(platform: InMemoryPlatform) -> list[str]:
    return [path for (_, path) in platform.objects if path.endswith("/manifest.json")]


def test_late_publish_after_a_timeout_commits_nothing() -> None:
    platform = InMemoryPlatform()
    command = _transformed(platform, "r1")
    end_run(platform, "r1", RunState.FAILED, "publish did not finish within 60 s")
    platform.published.clear()
    handler = stage_handler(platform, Stage.PUBLISH, publish, TopicName.PUBLISH_COMPLETED)
    handler(command)  # acknowledged, silently: the run is over
    assert _manifests(platform) == []
    assert platform.object_writes == 0
    assert platform.get_json(snapshot_key(CONNECTION_QN)) is None
    assert platform.topics() == [], "neither a completion nor a stage.failed for a run that ended"


def test_a_run_that_ends_mid_publish_writes_no_manifest_and_moves_no_baseline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    platform = InMemoryPlatform()
    command = _transformed(platform, "r1")
    original_baseline = publishing.current_baseline

    def baseline_then_time_out(*args: Any, **kwargs: Any) -> Any:
        # The workflow gives up while the publisher reads the baseline to compare with (chunks already written;
        # a first run compares nothing, so the baseline is the step every run takes).
        end_run(platform, "r1", RunState.FAILED, "publish did not finish within 60 s")
        return original_baseline(*args, **kwargs)

    monkeypatch.setattr(publishing, "current_baseline", baseline_then_time_out)
    with pytest.raises(RunEndedError):
        publish(command, platform)
    assert _manifests(platform) == []
    assert platform.get_json(snapshot_key(CONNECTION_QN)) is None


def test_end_of_run_wins_once_and_a_claim_after_it_fails() -> None:
    platform = InMemoryPlatform()
    assert end_run(platform, "r1", RunState.CANCELLED) is RunState.CANCELLED
    assert end_run(platform, "r1", RunState.FAILED) is RunState.CANCELLED
    with pytest.raises(RunEndedError):
        fencing.claim_commit(platform, "r1")


def test_an_undisturbed_publish_claims_then_completes() -> None:
    platform = InMemoryPlatform()
    command = _transformed(platform, "r1")
    publish(command, platform)
    assert fencing.run_state(platform, "r1") is RunState.COMMITTING
    assert len(_manifests(platform)) == 1
    end_run(platform, "r1", RunState.COMPLETED)
    # A redelivered publish command after completion re-announces, commits nothing new.
    writes = platform.object_writes
    publish(command, platform)
    assert platform.object_writes == writes


def test_a_redelivery_waits_for_the_live_worker_and_takes_over_a_dead_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fencing, "LEASE_WAIT_SECONDS", 0.5)
    monkeypatch.setattr(fencing, "LEASE_HEARTBEAT_SECONDS", 0.05)
    platform = InMemoryPlatform()
    holding = threading.Event()
    release = threading.Event()

    def live_worker() -> None:
        with work_lease(platform, "r1", Stage.EXTRACT, "db000"):
            holding.set()
            release.wait(5)

    worker = threading.Thread(target=live_worker)
    worker.start()
    holding.wait(5)
    started = time.monotonic()
    with pytest.raises(WorkInProgressError), work_lease(platform, "r1", Stage.EXTRACT, "db000"):
        pass
    assert time.monotonic() - started >= 0.5
    release.set()
    worker.join()
    assert platform.get_json(work_lease_key("r1", Stage.EXTRACT, "db000")) is None
    # A dead worker's lease (no heartbeat) is taken over.
    platform.save_json(work_lease_key("r1", Stage.EXTRACT, "db000"), {"holder": "dead:1:x", "heartbeat": 0})
    with work_lease(platform, "r1", Stage.EXTRACT, "db000"):
        pass


def test_only_a_heartbeated_lease_is_a_sign_of_life_for_the_silence_check() -> None:
    """What the workflow's re-send asks (Activities.find_silent_units): silent = no worker holds a fresh lease."""
    platform = InMemoryPlatform()
    activities = Activities(platform, "credentials")
    query = {"run_id": "r1", "stage": "extract", "units": ["db000", "db001", "db002"]}
    assert activities.find_silent_units(None, query) == ["db000", "db001", "db002"]  # never taken
    with work_lease(platform, "r1", Stage.EXTRACT, "db000"):
        platform.save_json(
            work_lease_key("r1", Stage.EXTRACT, "db001"),
            {"holder": "dead-worker", "heartbeat": time.time() - fencing.LEASE_STALE_SECONDS - 1},
        )
        assert activities.find_silent_units(None, query) == ["db001", "db002"]  # db001: its worker died
    assert activities.find_silent_units(None, {"run_id": "r1", "stage": "publish", "units": [None]}) == [None]
