"""The workflow generator driven step by step with real durabletask tasks and a scripted context."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest
from dapr.ext.workflow._durabletask import task as dt

from pgmeta_orchestrator.workflow import ACTIVITY_FINISH, ACTIVITY_PUBLISH, StageFailedError, extraction_workflow
from pgmeta_shared.naming import default_connection_qualified_name

REQUEST = {
    "request_id": "r1",
    "source": {"host": "db", "port": 5432, "username": "u"},
    "credentials": {"kind": "state", "store": "credentials", "key": "cred/r1"},
    "filters": {"include": {"shop|crm": "*"}},
    "stage_timeout_seconds": 60,
}


class ScriptedContext:
    """Hands out real tasks and remembers what each one is, so the driver can complete it."""

    instance_id = "r1"

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.meaning: dict[int, tuple[str, str, Any]] = {}
        self.log: list[tuple[str, str, Any]] = []

    def _task(self, kind: str, name: str, payload: Any) -> dt.CompletableTask[Any]:
        task: dt.CompletableTask[Any] = dt.CompletableTask()  # type: ignore[no-untyped-call]
        self.meaning[id(task)] = (kind, name, payload)
        self.log.append((kind, name, payload))
        return task

    def set_custom_status(self, status: str) -> None:
        self.statuses.append(status)

    def call_activity(self, name: str, *, input: Any) -> dt.CompletableTask[Any]:
        return self._task("activity", name, input)

    def wait_for_external_event(self, name: str, *, timeout: Any) -> dt.CompletableTask[Any]:
        return self._task("event", name, timeout)


def settle(ctx: ScriptedContext, task: dt.Task[Any], outcomes: dict[str, Any]) -> None:
    assert isinstance(task, dt.CompletableTask), task  # every task ScriptedContext hands out is one
    kind, name, _ = ctx.meaning[id(task)]
    if kind == "activity":
        task.complete(None)
        return
    outcome = outcomes[name]
    if isinstance(outcome, Exception):
        task.cancel(outcome)  # how a timed-out wait ends: completed with an exception
    else:
        task.complete(outcome)


def drive(outcomes: dict[str, Any], ctx: ScriptedContext | None = None) -> tuple[ScriptedContext, Any]:
    """Runs the workflow to its end; ``outcomes`` maps event names to payloads or exceptions."""
    ctx = ctx or ScriptedContext()
    generator: Generator[Any, Any, Any] = extraction_workflow(ctx, REQUEST)
    reply: Any = None
    throw: BaseException | None = None
    try:
        while True:
            step = generator.throw(throw) if throw else generator.send(reply)
            throw, reply = None, None
            if isinstance(step, dt.WhenAllTask):
                for child in step._tasks:
                    settle(ctx, child, outcomes)
                reply = step.get_result()
            elif isinstance(step, dt.WhenAnyTask):
                settle(ctx, step._tasks[0], outcomes)
                reply = step.get_result()
            else:
                settle(ctx, step, outcomes)
                if step.is_failed:
                    throw = step.get_exception()
                else:
                    reply = step.get_result()
    except StopIteration as stop:
        return ctx, stop.value


def ok(event: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "event": event}


def databases(*names: str) -> list[dict[str, Any]]:
    return [
        {"database": n, "unit": f"db{i:03d}", "schema_include": [], "schema_exclude": []} for i, n in enumerate(names)
    ]


def success(*names: str) -> dict[str, Any]:
    outcomes = {
        "preflight_result": ok(
            {
                "run_id": "r1",
                "server_version": "18.1",
                "databases": databases(*names),
                "counts": {"tables": 2},
                "warnings": [],
            }
        ),
        "transform_result_server": ok(
            {"run_id": "r1", "unit": "server", "chunk_count": 1, "counts": {"Connection": 1, "Database": len(names)}}
        ),
        "publish_result": ok({"run_id": "r1", "location": "c/r1", "file_count": 3, "counts": {"Column": 6}}),
    }
    for i, _ in enumerate(names):
        unit = f"db{i:03d}"
        outcomes[f"extract_result_{unit}"] = ok(
            {"run_id": "r1", "unit": unit, "chunk_count": 2, "counts": {"column": 3}}
        )
        outcomes[f"transform_result_{unit}"] = ok(
            {"run_id": "r1", "unit": unit, "chunk_count": 2, "counts": {"Column": 3}}
        )
    return outcomes


def published(ctx: ScriptedContext) -> list[dict[str, Any]]:
    return [payload for kind, name, payload in ctx.log if (kind, name) == ("activity", ACTIVITY_PUBLISH)]


def test_success_fans_out_one_extract_and_one_transform_per_database() -> None:
    ctx, result = drive(success("shop", "crm"))
    topics = [
        (p["topic"], p["event"].get("selection", {}).get("database") or p["event"].get("unit")) for p in published(ctx)
    ]
    assert topics == [
        ("preflight.requested", None),
        ("extract.requested", "shop"),
        ("extract.requested", "crm"),
        ("transform.requested", "server"),
        ("transform.requested", "db000"),
        ("transform.requested", "db001"),
        ("publish.requested", None),
    ]
    extract = published(ctx)[1]["event"]
    assert extract["connection_qualified_name"] == default_connection_qualified_name("db", 5432)
    assert extract["filters"]["include"] == {"shop|crm": "*"}
    publish = published(ctx)[-1]["event"]
    assert publish["units"] == [
        {"unit": "server", "chunk_count": 1, "generation": 1},
        {"unit": "db000", "chunk_count": 2, "generation": 1},
        {"unit": "db001", "chunk_count": 2, "generation": 1},
    ]
    assert publish["counts"] == {"Connection": 1, "Database": 2, "Column": 6}
    assert "'password'" not in str(ctx.log)  # no password field anywhere (password_exchange is a policy)
    assert ctx.log[-1][:2] == ("activity", ACTIVITY_FINISH)
    assert result["status"] == "COMPLETED" and result["location"] == "c/r1"
    assert any('"units_done": 2' in s for s in ctx.statuses), "custom status shows fan-out progress"


def test_a_failed_database_fails_the_run_and_is_named() -> None:
    outcomes = success("shop", "crm")
    outcomes["extract_result_db001"] = {"ok": False, "error_code": "insufficient_privilege", "error": "no CONNECT"}
    ctx = ScriptedContext()
    with pytest.raises(StageFailedError, match=r"extract of db001 failed \(insufficient_privilege\): no CONNECT"):
        drive(outcomes, ctx)
    finish = ctx.log[-1]
    assert finish[:2] == ("activity", ACTIVITY_FINISH)
    assert finish[2]["result"]["status"] == "FAILED"
    assert not any(p["topic"] == "transform.requested" for p in published(ctx))


def test_preflight_failure_stops_before_any_extraction() -> None:
    outcomes = success("shop")
    outcomes["preflight_result"] = {
        "ok": False,
        "error_code": "invalid_request",
        "error": "the filters select 0 tables",
    }
    ctx = ScriptedContext()
    with pytest.raises(StageFailedError, match="preflight failed .*select 0 tables"):
        drive(outcomes, ctx)
    assert [p["topic"] for p in published(ctx)] == ["preflight.requested"]


def test_stage_timeout_names_the_unit_and_the_limit() -> None:
    outcomes = success("shop")
    outcomes["transform_result_db000"] = TimeoutError("timer fired")
    with pytest.raises(StageFailedError, match="transform of db000 did not finish within 60 s"):
        drive(outcomes)
