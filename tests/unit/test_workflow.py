"""The workflow generator driven step by step with a recording context (no runtime needed)."""

from collections.abc import Generator
from typing import Any

import pytest

from pgmeta_orchestrator.workflow import (
    ACTIVITY_FINISH,
    ACTIVITY_PUBLISH,
    StageFailedError,
    extraction_workflow,
)
from pgmeta_shared.naming import default_connection_qualified_name

REQUEST = {
    "request_id": "r1",
    "source": {"host": "db", "port": 5432, "username": "u", "database": "shop"},
    "credentials": {"kind": "state", "store": "credentials", "key": "cred/r1"},
    "stage_timeout_seconds": 60,
}


class RecordingContext:
    instance_id = "r1"

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def set_custom_status(self, status: str) -> None:
        self.statuses.append(status)

    def call_activity(self, name: str, *, input: Any) -> tuple[str, str, Any]:
        return ("activity", name, input)

    def wait_for_external_event(self, name: str, *, timeout: Any) -> tuple[str, str, Any]:
        return ("event", name, timeout)


def drive(
    outcomes: dict[str, Any], steps: list[tuple[str, str, Any]] | None = None
) -> tuple[list[tuple[str, str, Any]], Any]:
    """Runs the workflow; ``outcomes`` maps event names to payloads or to an exception to throw."""
    ctx = RecordingContext()
    generator: Generator[Any, Any, Any] = extraction_workflow(ctx, REQUEST)
    steps = [] if steps is None else steps
    reply: Any = None
    throw: BaseException | None = None
    try:
        while True:
            step = generator.throw(throw) if throw else generator.send(reply)
            throw, reply = None, None
            steps.append(step)
            if step[0] == "event":
                outcome = outcomes[step[1]]
                if isinstance(outcome, BaseException):
                    throw = outcome
                else:
                    reply = outcome
    except StopIteration as stop:
        return steps, stop.value


def ok(event: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "event": event}


SUCCESS = {
    "extract_result": ok({"run_id": "r1", "chunk_count": 2, "counts": {"column": 3}}),
    "transform_result": ok({"run_id": "r1", "chunk_count": 2, "counts": {"Column": 3}}),
    "publish_result": ok({"run_id": "r1", "location": "c/r1", "file_count": 1, "counts": {"Column": 3}}),
}


def test_success_runs_the_three_stages_in_order_and_finishes() -> None:
    steps, result = drive(SUCCESS)
    published = [s[2]["topic"] for s in steps if s[:2] == ("activity", ACTIVITY_PUBLISH)]
    assert published == ["extract.requested", "transform.requested", "publish.requested"]
    extract_command = steps[0][2]["event"]
    assert extract_command["connection_qualified_name"] == default_connection_qualified_name("db", 5432)
    assert "password" not in str(steps)
    assert steps[-1][:2] == ("activity", ACTIVITY_FINISH)
    assert result == {
        "schema_version": 1, "run_id": "r1", "status": "COMPLETED", "counts": {"Column": 3},
        "location": "c/r1", "error": None,
    }  # fmt: skip


def test_transform_chunk_count_comes_from_the_extract_result() -> None:
    steps, _ = drive(SUCCESS)
    transform_command = next(
        s[2]["event"] for s in steps if s[0] == "activity" and s[2].get("topic") == "transform.requested"
    )
    assert transform_command["chunk_count"] == 2


def test_stage_failure_announces_and_fails_the_workflow() -> None:
    outcomes = dict(SUCCESS, extract_result={"ok": False, "error_code": "authentication_failed", "error": "bad pw"})
    steps: list[tuple[str, str, Any]] = []
    with pytest.raises(StageFailedError, match=r"extract failed \(authentication_failed\): bad pw"):
        drive(outcomes, steps)
    finish = steps[-1]
    assert finish[:2] == ("activity", ACTIVITY_FINISH)
    assert finish[2]["result"]["status"] == "FAILED"
    assert finish[2]["result"]["error"] == "extract failed (authentication_failed): bad pw"
    assert not any(s[0] == "activity" and s[2].get("topic") == "transform.requested" for s in steps)


def test_stage_timeout_fails_the_workflow_with_the_limit_in_the_message() -> None:
    outcomes = dict(SUCCESS, transform_result=TimeoutError("timer fired"))
    steps: list[tuple[str, str, Any]] = []
    with pytest.raises(StageFailedError, match="transform did not finish within 60 s"):
        drive(outcomes, steps)
    assert steps[-1][2]["result"]["counts"] == {"column": 3}
