"""Object-store faults: retried with backoff, then reported as the store's problem with the path and a hint."""

from __future__ import annotations

import grpc
import pytest

from pgmeta_shared.delivery import classify
from pgmeta_shared.errors import ObjectStoreError, TransientInfrastructureError
from pgmeta_shared.storage import retry_storage

from ..fakes import RpcFailure


def _failing(times: int, error: RpcFailure) -> tuple[list[int], object]:
    calls: list[int] = []

    def write() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error
        return "written"

    return calls, write


def test_a_store_that_recovers_is_written_after_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgmeta_shared.storage.time.sleep", lambda _s: None)
    denied = RpcFailure(grpc.StatusCode.INTERNAL, "open /out/x/Table-db000-00000.jsonl: permission denied")
    calls, write = _failing(3, denied)
    assert retry_storage("objectstore", "x/Table-db000-00000.jsonl", write) == "written"  # type: ignore[arg-type]
    assert len(calls) == 4


def test_a_store_that_stays_broken_is_named_with_path_and_hint_not_a_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("pgmeta_shared.storage.time.sleep", slept.append)
    denied = RpcFailure(grpc.StatusCode.INTERNAL, "open /out/x/manifest.json: permission denied")
    _, write = _failing(100, denied)
    with pytest.raises(ObjectStoreError) as raised:
        retry_storage("objectstore", "x/manifest.json", write)  # type: ignore[arg-type]
    assert slept == sorted(slept) and sum(slept) >= 20, "backoff grows and covers a blip"
    failure = classify(raised.value, "publish service")
    assert failure.code == "object_store_unavailable" and not failure.bug
    assert "x/manifest.json" in failure.message and "permission" in failure.message
    assert "pgmeta bug" not in failure.message


def test_a_dead_sidecar_stays_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgmeta_shared.storage.time.sleep", lambda _s: None)
    _, write = _failing(100, RpcFailure(grpc.StatusCode.UNAVAILABLE, "connection refused"))
    with pytest.raises(TransientInfrastructureError):
        retry_storage("objectstore", "x/a.jsonl", write)  # type: ignore[arg-type]


def test_a_store_outage_reported_by_the_sidecar_as_unknown_is_transient() -> None:
    """Seen while Redis restarted: a completion's workflow event failed with UNKNOWN "EOF" and was dead-lettered."""
    for details in ("EOF", "failed to load workflow metadata: WRONGTYPE Operation", "dial tcp: connection refused"):
        failure = classify(RpcFailure(grpc.StatusCode.UNKNOWN, details), "orchestrator")
        assert failure.retryable and not failure.bug, details
    assert not classify(RpcFailure(grpc.StatusCode.UNKNOWN, "invalid argument"), "orchestrator").retryable
