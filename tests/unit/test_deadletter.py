"""A dead-lettered command or completion fails its run visibly; a dead-lettered request fails the request."""

from __future__ import annotations

from typing import Any, cast

from pgmeta_orchestrator.deadletter import DEAD_LETTERED, handle_dead_letter
from pgmeta_orchestrator.runs import RunService
from pgmeta_shared.events import Stage, stage_result_event
from pgmeta_shared.fencing import RunState, run_state

from ..fakes import InMemoryPlatform


class RecordingRuns:
    def __init__(self) -> None:
        self.platform = InMemoryPlatform()
        self.raised: list[tuple[str, str, dict[str, Any]]] = []
        self.workflows: set[str] = set()

    def has_workflow(self, run_id: str) -> bool:
        return run_id in self.workflows

    def raise_stage_event(self, run_id: str, event_name: str, payload: dict[str, Any]) -> None:
        self.raised.append((run_id, event_name, payload))


def _dead(topic: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": "m1", "topic": topic, "data": data, "specversion": "1.0"}


def test_a_dead_lettered_extract_command_fails_its_unit() -> None:
    runs = RecordingRuns()
    command = {
        "run_id": "r1",
        "connection_qualified_name": "default/postgres/1",
        "source": {"host": "h", "username": "u"},
        "credentials": {"kind": "secret", "store": "s", "key": "k"},
        "selection": {"database": "shop", "unit": "db000"},
    }
    handle_dead_letter(cast(RunService, runs), _dead("extract.requested", command))
    [(run_id, event, payload)] = runs.raised
    assert (run_id, event) == ("r1", stage_result_event(Stage.EXTRACT, "db000"))
    assert payload["ok"] is False and payload["error_code"] == DEAD_LETTERED
    assert "extract.requested" in payload["error"]


def test_a_dead_lettered_completion_that_parses_is_re_driven() -> None:
    runs = RecordingRuns()
    completion = {"run_id": "r5", "unit": "db001", "chunk_count": 1, "counts": {"Table": 3}}
    handle_dead_letter(cast(RunService, runs), _dead("transform.completed", completion))
    [(run_id, event, payload)] = runs.raised
    assert (run_id, event) == ("r5", stage_result_event(Stage.TRANSFORM, "db001"))
    assert payload["ok"] is True and payload["event"]["counts"] == {"Table": 3}


def test_a_dead_lettered_completion_fails_the_stage_if_it_does_not_parse() -> None:
    runs = RecordingRuns()
    handle_dead_letter(cast(RunService, runs), _dead("transform.completed", {"run_id": "r2", "unit": "db001"}))
    [(run_id, event, payload)] = runs.raised
    assert (run_id, event) == ("r2", stage_result_event(Stage.TRANSFORM, "db001"))
    assert payload["ok"] is False


def test_a_dead_lettered_request_fails_the_run_that_never_started() -> None:
    runs = RecordingRuns()
    handle_dead_letter(cast(RunService, runs), _dead("extraction.requested", {"request_id": "r3"}))
    assert runs.raised == []
    assert run_state(runs.platform, "r3") is RunState.FAILED


def test_harmless_messages_are_only_logged() -> None:
    runs = RecordingRuns()
    handle_dead_letter(cast(RunService, runs), _dead("extraction.progress", {"run_id": "r4"}))
    handle_dead_letter(cast(RunService, runs), _dead("no.such.topic", {"run_id": "r4"}))
    handle_dead_letter(cast(RunService, runs), {"id": "x", "topic": "extract.requested", "data": "not json"})
    assert runs.raised == [] and run_state(runs.platform, "r4") is None


def test_a_dead_lettered_duplicate_request_leaves_the_run_it_duplicates_alone() -> None:
    """CI, 2026-11-30: of 500 duplicate events, a few were dead-lettered after the workflow had started; fencing
    the run FAILED ("never started") made every stage refuse its commands and the run failed at the timeout."""
    runs = RecordingRuns()
    runs.workflows.add("r6")
    handle_dead_letter(cast(RunService, runs), _dead("extraction.requested", {"request_id": "r6"}))
    assert runs.raised == [] and run_state(runs.platform, "r6") is None
