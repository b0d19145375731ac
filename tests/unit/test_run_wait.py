"""``GET /runs/{id}?wait=…``: the orchestrator answers the moment the workflow ends, not on a polling tick."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import pytest

from pgmeta_orchestrator import runs as runs_module
from pgmeta_orchestrator.run_endings import RunEndings
from pgmeta_orchestrator.runs import RunService
from pgmeta_orchestrator.settings import OrchestratorSettings

from ..fakes import InMemoryPlatform


class Status(Enum):
    RUNNING = 1
    COMPLETED = 2


@dataclass
class State:
    runtime_status: Status = Status.RUNNING
    serialized_custom_status: str | None = '{"stage": "extract", "counts": {}}'
    serialized_output: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    failure_details: Any = None


class Workflows:
    """The two calls ``RunService.wait`` makes, over one workflow that completes when ``finish`` is called."""

    def __init__(self) -> None:
        self.state = State()
        self.done = threading.Event()

    def get_workflow_state(self, run_id: str, fetch_payloads: bool = True) -> State:
        return self.state

    def wait_for_workflow_completion(self, run_id: str, *, fetch_payloads: bool, timeout_in_seconds: int) -> State:
        if not self.done.wait(timeout_in_seconds):
            raise TimeoutError("still running")
        return self.state

    def finish(self) -> None:
        self.state.runtime_status = Status.COMPLETED
        self.state.serialized_output = '{"counts": {"Table": 1}, "location": "c/r"}'
        self.done.set()


def service(workflows: Workflows) -> RunService:
    return RunService(InMemoryPlatform(), workflows, OrchestratorSettings())


def test_a_waiting_request_returns_as_soon_as_the_run_completes() -> None:
    workflows = Workflows()
    finished_at: list[float] = []

    def finish_later() -> None:
        time.sleep(0.3)
        finished_at.append(time.monotonic())
        workflows.finish()

    threading.Thread(target=finish_later).start()
    view = service(workflows).wait("r1", 10)
    answered_at = time.monotonic()
    assert view is not None and view.status == "COMPLETED" and view.counts == {"Table": 1}
    assert answered_at - finished_at[0] < 0.1


def test_a_wait_that_runs_out_returns_the_running_view() -> None:
    started = time.monotonic()
    view = service(Workflows()).wait("r1", 1)
    assert view is not None and view.status == "RUNNING"
    assert 0.9 < time.monotonic() - started < 3


def test_an_unknown_run_is_none_at_once() -> None:
    workflows = Workflows()
    workflows.get_workflow_state = lambda run_id, fetch_payloads=True: None  # type: ignore[method-assign,assignment,return-value]
    started = time.monotonic()
    assert service(workflows).wait("nope", 10) is None
    assert time.monotonic() - started < 0.5


class LateDaprd(Workflows):
    """daprd's WaitForInstanceCompletion as measured (docs/benchmarks.md): it answers up to ~0.9 s after the workflow
    completed, while reading the state shows the completion at once."""

    LATE = 0.8

    def wait_for_workflow_completion(self, run_id: str, *, fetch_payloads: bool, timeout_in_seconds: int) -> State:
        if not self.done.wait(timeout_in_seconds):
            raise TimeoutError("still running")
        time.sleep(self.LATE)
        return self.state


def test_a_run_whose_last_activity_ran_here_is_answered_without_waiting_for_daprd() -> None:
    workflows = LateDaprd()
    endings = RunEndings()
    finished_at: list[float] = []

    def finish_later() -> None:
        time.sleep(0.3)
        endings.ended("r1")  # finish_run ran in this process: the workflow completes a moment later
        time.sleep(0.05)
        finished_at.append(time.monotonic())
        workflows.finish()

    threading.Thread(target=finish_later).start()
    view = RunService(InMemoryPlatform(), workflows, OrchestratorSettings(), endings).wait("r1", 10)
    answered_at = time.monotonic()
    assert view is not None and view.status == "COMPLETED" and view.counts == {"Table": 1}
    assert answered_at - finished_at[0] < 0.15


def test_a_run_that_ended_before_the_wait_began_is_answered_at_once() -> None:
    workflows = LateDaprd()
    endings = RunEndings()
    endings.ended("r1")
    workflows.finish()
    started = time.monotonic()
    view = RunService(InMemoryPlatform(), workflows, OrchestratorSettings(), endings).wait("r1", 10)
    assert view is not None and view.status == "COMPLETED"
    assert time.monotonic() - started < 0.15


def test_without_a_signal_here_daprd_still_answers() -> None:
    """Another replica ran the last activity: daprd's answer is the one that comes."""
    workflows = LateDaprd()
    threading.Timer(0.2, workflows.finish).start()
    started = time.monotonic()
    view = RunService(InMemoryPlatform(), workflows, OrchestratorSettings(), RunEndings()).wait("r1", 10)
    assert view is not None and view.status == "COMPLETED"
    assert time.monotonic() - started < 0.2 + LateDaprd.LATE + 0.3


def test_a_run_retried_under_the_same_id_is_not_taken_for_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """`POST /runs/{id}/retry` runs the same id again: the mark its first end left here is dropped after one bounded
    look, and the retried run's end is waited for, not polled for."""
    monkeypatch.setattr(runs_module, "ENDING_POLL_LIMIT_SECONDS", 0.2)
    workflows = CountingLateDaprd()
    endings = RunEndings()
    endings.ended("r1")  # its first attempt ended here; the retry is running
    threading.Timer(1.0, workflows.finish).start()
    view = RunService(InMemoryPlatform(), workflows, OrchestratorSettings(), endings).wait("r1", 10)
    assert view is not None and view.status == "COMPLETED"
    # 0.2 s of reads every 20 ms (about 10), then daprd's wait: not 50 reads for the second it ran.
    assert workflows.reads < 30


class CountingLateDaprd(LateDaprd):
    LATE = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get_workflow_state(self, run_id: str, fetch_payloads: bool = True) -> State:
        self.reads += 1
        return self.state


def test_a_failing_daprd_wait_is_raised_to_the_request_as_before() -> None:
    workflows = Workflows()

    def broken(run_id: str, *, fetch_payloads: bool, timeout_in_seconds: int) -> State:
        raise RuntimeError("sidecar gone")

    workflows.wait_for_workflow_completion = broken  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="sidecar gone"):
        service(workflows).wait("r1", 5)
