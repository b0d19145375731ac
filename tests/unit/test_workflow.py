"""The workflow generator driven step by step with real durabletask tasks and a scripted context."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dapr.ext.workflow._durabletask import task as dt

from pgmeta_orchestrator.workflow import (
    ACTIVITY_FINISH,
    ACTIVITY_PUBLISH,
    ACTIVITY_SILENT_UNITS,
    LATEST_VERSION,
    MAX_RESENDS,
    SILENCE_SECONDS,
    WORKFLOW_NAME,
    WORKFLOW_VERSIONS,
    StageFailedError,
    WorkflowVersion,
    extraction_workflow,
    register_workflow_versions,
    workflow_version,
)
from pgmeta_shared.events import Stage, stage_result_event
from pgmeta_shared.naming import default_connection_qualified_name

REQUEST = {
    "request_id": "r1",
    "source": {"host": "db", "port": 5432, "username": "u"},
    "credentials": {"kind": "state", "store": "credentials", "key": "cred/r1"},
    "filters": {"include": {"shop|crm": "*"}},
    "stage_timeout_seconds": 60,
}


@dataclass
class Silent:
    """A unit that answers only after its command was sent ``resends`` more times (a lost command)."""

    resends: int
    outcome: Any


class ScriptedContext:
    """Hands out real tasks and remembers what each one is, so the driver can complete it."""

    instance_id = "r1"

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.meaning: dict[int, tuple[str, str, Any]] = {}
        self.log: list[tuple[str, str, Any]] = []
        self.current_utc_datetime = datetime(2026, 1, 1, tzinfo=UTC)

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

    def create_timer(self, fire_at: timedelta) -> dt.CompletableTask[Any]:
        return self._task("timer", "", self.current_utc_datetime + fire_at)


class Driver:
    """Runs the workflow generator to its end against scripted outcomes.

    ``outcomes`` maps event names to payloads, exceptions (a timed-out wait), or ``Silent``: an event that
    arrives only once its command was re-sent. The silence check answers with the units still silent.
    """

    def __init__(self, outcomes: dict[str, Any], ctx: ScriptedContext) -> None:
        self.outcomes = outcomes
        self.ctx = ctx
        self.sent: dict[str, int] = {}  # event name → times its command was published

    def _available(self, name: str) -> bool:
        outcome = self.outcomes[name]
        return not isinstance(outcome, Silent) or self.sent.get(name, 0) > outcome.resends

    def _publish(self, payload: dict[str, Any]) -> None:
        stage = payload["topic"].split(".")[0]
        event = payload["event"]
        unit = event.get("unit") or (event.get("selection") or {}).get("unit")
        name = f"{stage}_result" if unit is None else f"{stage}_result_{unit}"
        self.sent[name] = self.sent.get(name, 0) + 1

    def settle(self, task: dt.Task[Any]) -> None:
        assert isinstance(task, dt.CompletableTask), task  # every task ScriptedContext hands out is one
        kind, name, payload = self.ctx.meaning[id(task)]
        if kind == "timer":
            self.ctx.current_utc_datetime = payload
            task.complete(None)
        elif kind == "activity" and name == ACTIVITY_SILENT_UNITS:
            stage = payload["stage"]
            task.complete([u for u in payload["units"] if not self._available(stage_result_event_name(stage, u))])
        elif kind == "activity":
            if name == ACTIVITY_PUBLISH:
                self._publish(payload)
            task.complete(None)
        else:
            outcome = self.outcomes[name]
            outcome = outcome.outcome if isinstance(outcome, Silent) else outcome
            if isinstance(outcome, Exception):
                task.cancel(outcome)  # how a timed-out wait ends: completed with an exception
            else:
                task.complete(outcome)

    def pick(self, step: dt.WhenAnyTask) -> dt.Task[Any]:
        """What completes first: an event that has arrived, else the silence timer, else a wait times out."""
        children = step._tasks
        events = [c for c in children if self.ctx.meaning[id(c)][0] == "event"]
        arrived = [c for c in events if self._available(self.ctx.meaning[id(c)][1])]
        if arrived:
            return arrived[0]
        timers = [c for c in children if self.ctx.meaning[id(c)][0] == "timer"]
        if timers:
            return timers[0]
        name = self.ctx.meaning[id(events[0])][1]
        self.outcomes[name] = TimeoutError("timer fired")
        return events[0]

    def run(self, version: WorkflowVersion, request: dict[str, Any] = REQUEST) -> Any:
        generator: Generator[Any, Any, Any] = extraction_workflow(self.ctx, request, version)
        reply: Any = None
        throw: BaseException | None = None
        try:
            while True:
                step = generator.throw(throw) if throw else generator.send(reply)
                throw, reply = None, None
                if isinstance(step, dt.WhenAllTask):
                    for child in step._tasks:
                        self.settle(child)
                    reply = step.get_result()
                elif isinstance(step, dt.WhenAnyTask):
                    self.settle(self.pick(step))
                    reply = step.get_result()
                else:
                    self.settle(step)
                    if step.is_failed:
                        throw = step.get_exception()
                    else:
                        reply = step.get_result()
        except StopIteration as stop:
            return stop.value


def stage_result_event_name(stage: str, unit: str | None) -> str:
    return stage_result_event(Stage(stage), unit)


def drive(
    outcomes: dict[str, Any], ctx: ScriptedContext | None = None, version: WorkflowVersion = LATEST_VERSION
) -> tuple[ScriptedContext, Any]:
    """Runs the workflow to its end; ``outcomes`` maps event names to payloads or exceptions."""
    ctx = ctx or ScriptedContext()
    return ctx, Driver(outcomes, ctx).run(version)


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


def test_a_runs_preflight_does_not_count_columns() -> None:
    """The extract stage counts what it reads itself; counting every selected column in preflight as well was
    the costliest step of a re-run's preflight (docs/benchmarks.md)."""
    ctx, _ = drive(success("shop"))
    assert published(ctx)[0]["event"]["count_columns"] is False


def test_preflight_is_told_which_baseline_a_run_compares_with_unless_the_run_is_full() -> None:
    """So that it starts the fingerprints ahead (pgmeta_extractor.ahead); a --full run compares with nothing."""
    ctx, _ = drive(success("shop"))
    assert published(ctx)[0]["event"]["incremental_for"] == default_connection_qualified_name("db", 5432)
    full = ScriptedContext()
    Driver(success("shop"), full).run(LATEST_VERSION, REQUEST | {"full": True})
    assert published(full)[0]["event"]["incremental_for"] is None


def test_a_failed_database_fails_the_run_and_is_named() -> None:
    outcomes = success("shop", "crm")
    outcomes["extract_result_db001"] = {"ok": False, "error_code": "insufficient_privilege", "error": "no CONNECT"}
    ctx = ScriptedContext()
    with pytest.raises(StageFailedError, match=r"extract of db001 failed \(insufficient_privilege\): no CONNECT"):
        drive(outcomes, ctx)
    finish = ctx.log[-1]
    assert finish[:2] == ("activity", ACTIVITY_FINISH)
    assert finish[2]["result"]["status"] == "FAILED"
    # Only the server unit's transform went out (with the extract commands): no database unit's.
    assert [p["event"]["unit"] for p in published(ctx) if p["topic"] == "transform.requested"] == ["server"]


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


# -- versions: a released version's actions never change; a change is a new version ----------------------------


class TimedContext(ScriptedContext):
    def __init__(self) -> None:
        super().__init__()
        self.log_start = self.current_utc_datetime


def actions(ctx: TimedContext) -> list[list[Any]]:
    """What the workflow yielded, in order, as the history records it: activities, waits (with their timeout
    timer), timers."""
    out: list[list[Any]] = []
    for kind, name, payload in ctx.log:
        if kind == "activity" and name == ACTIVITY_PUBLISH:
            event = payload["event"]
            out.append([kind, name, payload["topic"], event.get("unit") or (event.get("selection") or {}).get("unit")])
        elif kind == "activity" and name == ACTIVITY_FINISH:
            out.append([kind, name, payload["result"]["status"]])
        elif kind == "timer":
            out.append([kind, str(payload - ctx.log_start)])
        else:
            out.append([kind, name, str(payload)])
    return out


# v1 as released (recorded from the unversioned workflow it replaced): runs started on v1 replay these.
V1_SUCCESS = [
    ["activity", "publish_event", "preflight.requested", None],
    ["event", "preflight_result", "0:01:00"],
    ["activity", "publish_event", "extract.requested", "db000"],
    ["activity", "publish_event", "extract.requested", "db001"],
    ["event", "extract_result_db000", "0:01:00"],
    ["event", "extract_result_db001", "0:01:00"],
    ["activity", "publish_event", "transform.requested", "server"],
    ["activity", "publish_event", "transform.requested", "db000"],
    ["activity", "publish_event", "transform.requested", "db001"],
    ["event", "transform_result_server", "0:01:00"],
    ["event", "transform_result_db000", "0:01:00"],
    ["event", "transform_result_db001", "0:01:00"],
    ["activity", "publish_event", "publish.requested", None],
    ["event", "publish_result", "0:01:00"],
    ["activity", "finish_run", "COMPLETED"],
]
V1_FAILED_EXTRACT = [*V1_SUCCESS[:6], ["activity", "finish_run", "FAILED"]]


def test_released_v1_yields_exactly_what_it_did_when_released() -> None:
    """If this fails, a change reached a released version: put it in a new version instead."""
    v1 = workflow_version("v1")
    ctx = TimedContext()
    drive(success("shop", "crm"), ctx, v1)
    assert actions(ctx) == V1_SUCCESS
    failing = success("shop", "crm") | {"extract_result_db001": {"ok": False, "error_code": "x", "error": "y"}}
    ctx = TimedContext()
    with pytest.raises(StageFailedError):
        drive(failing, ctx, v1)
    assert actions(ctx) == V1_FAILED_EXTRACT


# v2 as released: v1 plus one silence timer per stage.
V2_SUCCESS = [
    *V1_SUCCESS[:2],
    ["timer", f"0:00:{SILENCE_SECONDS}"],
    *V1_SUCCESS[2:6],
    ["timer", f"0:00:{SILENCE_SECONDS}"],
    *V1_SUCCESS[6:12],
    ["timer", f"0:00:{SILENCE_SECONDS}"],
    *V1_SUCCESS[12:14],
    ["timer", f"0:00:{SILENCE_SECONDS}"],
    V1_SUCCESS[14],
]

# v3: the server unit's transform goes out with the extract commands and is waited on alongside them.
V3_SUCCESS = [
    *V2_SUCCESS[:3],
    ["activity", "publish_event", "extract.requested", "db000"],
    ["activity", "publish_event", "extract.requested", "db001"],
    ["activity", "publish_event", "transform.requested", "server"],
    ["event", "extract_result_db000", "0:01:00"],
    ["event", "extract_result_db001", "0:01:00"],
    ["event", "transform_result_server", "0:01:00"],
    ["timer", f"0:00:{SILENCE_SECONDS}"],
    ["activity", "publish_event", "transform.requested", "db000"],
    ["activity", "publish_event", "transform.requested", "db001"],
    ["event", "transform_result_db000", "0:01:00"],
    ["event", "transform_result_db001", "0:01:00"],
    *V2_SUCCESS[14:],
]


def test_released_v2_yields_exactly_what_it_did_when_released() -> None:
    """If this fails, a change reached a released version: put it in a new version instead."""
    ctx = TimedContext()
    _, result = drive(success("shop", "crm"), ctx, workflow_version("v2"))
    assert result["status"] == "COMPLETED"
    assert actions(ctx) == V2_SUCCESS


def test_v3_sends_the_server_units_transform_with_the_extract_commands() -> None:
    ctx = TimedContext()
    _, result = drive(success("shop", "crm"), ctx, workflow_version("v3"))
    assert result["status"] == "COMPLETED"
    assert actions(ctx) == V3_SUCCESS
    assert result["counts"] == {"Column": 6}  # the publisher's counts, as in every version


def with_empty_unit(outcomes: dict[str, Any], unit: str) -> dict[str, Any]:
    """A database unit whose every schema was carried over: extracted with 0 chunks, no transform answer."""
    outcomes[f"extract_result_{unit}"]["event"] |= {"chunk_count": 0, "counts": {}}
    del outcomes[f"transform_result_{unit}"]  # a wait on it would fail the test: the driver has no outcome
    return outcomes


def test_v3_sends_no_transform_command_for_a_unit_without_chunks() -> None:
    ctx, result = drive(with_empty_unit(success("shop", "crm"), "db001"), version=workflow_version("v3"))
    assert result["status"] == "COMPLETED"
    sent = [(p["topic"], p["event"].get("unit")) for p in published(ctx) if p["topic"] == "transform.requested"]
    assert sent == [("transform.requested", "server"), ("transform.requested", "db000")]
    assert not any(name == "transform_result_db001" for _, name, _ in ctx.log)
    publish = published(ctx)[-1]["event"]
    assert publish["units"] == [  # the publisher still hears of the unit: it carries its schemas over
        {"unit": "server", "chunk_count": 1, "generation": 1},
        {"unit": "db000", "chunk_count": 2, "generation": 1},
        {"unit": "db001", "chunk_count": 0, "generation": 1},
    ]
    assert publish["counts"] == {"Connection": 1, "Database": 2, "Column": 3}


def test_v3_goes_from_extraction_straight_to_publish_when_no_unit_has_chunks() -> None:
    """A no-change re-run: the server unit was transformed during extraction, every database unit is empty."""
    outcomes = with_empty_unit(with_empty_unit(success("shop", "crm"), "db000"), "db001")
    ctx = TimedContext()
    _, result = drive(outcomes, ctx, workflow_version("v3"))
    assert result["status"] == "COMPLETED"
    assert actions(ctx) == [*V3_SUCCESS[:10], *V3_SUCCESS[-4:]]
    assert published(ctx)[-1]["event"]["counts"] == {"Connection": 1, "Database": 2}


def test_released_versions_still_send_a_transform_command_for_a_unit_without_chunks() -> None:
    for name in ("v1", "v2"):
        ctx, _ = drive(
            with_empty_unit(success("shop", "crm"), "db001")
            | {"transform_result_db001": ok({"run_id": "r1", "unit": "db001", "chunk_count": 0, "counts": {}})},
            version=workflow_version(name),
        )
        sent = [p["event"].get("unit") for p in published(ctx) if p["topic"] == "transform.requested"]
        assert sent == ["server", "db000", "db001"], name


def test_v3_re_sends_a_silent_server_transform_while_extraction_goes_on() -> None:
    outcomes = success("shop")
    outcomes["transform_result_server"] = Silent(1, outcomes["transform_result_server"])
    outcomes["extract_result_db000"] = Silent(1, outcomes["extract_result_db000"])
    ctx, result = drive(outcomes, version=workflow_version("v3"))
    assert result["status"] == "COMPLETED"
    sent = [(p["topic"], p["event"].get("unit") or p["event"].get("selection", {}).get("unit")) for p in published(ctx)]
    assert sent.count(("transform.requested", "server")) == 2
    assert sent.count(("extract.requested", "db000")) == 2
    checks = [payload for kind, name, payload in ctx.log if name == ACTIVITY_SILENT_UNITS]
    assert checks == [  # one question per stage, each naming only its own units
        {"run_id": "r1", "stage": "extract", "units": ["db000"]},
        {"run_id": "r1", "stage": "transform", "units": ["server"]},
    ]


def test_v3_fails_the_run_when_the_server_units_transform_fails_during_extraction() -> None:
    outcomes = success("shop")
    outcomes["transform_result_server"] = {"ok": False, "error_code": "artifact_missing", "error": "no chunk"}
    ctx = ScriptedContext()
    with pytest.raises(StageFailedError, match=r"transform of server failed \(artifact_missing\): no chunk"):
        drive(outcomes, ctx, workflow_version("v3"))
    assert ctx.log[-1][2]["result"]["status"] == "FAILED"
    assert not any(p["topic"] == "publish.requested" for p in published(ctx))


def test_a_version_that_sends_commands_together_must_resend_silent_ones() -> None:
    with pytest.raises(ValueError, match="re-sending"):
        WorkflowVersion("vX", transforms_server_with_extract=True)


def test_every_status_names_the_version_the_run_is_on() -> None:
    for version in WORKFLOW_VERSIONS:
        ctx, _ = drive(success("shop"), version=version)
        assert all(f'"workflow_version": "{version.name}"' in status for status in ctx.statuses), version


def test_a_lost_command_is_sent_again_and_the_stage_completes() -> None:
    outcomes = success("shop", "crm")
    outcomes["extract_result_db001"] = Silent(1, outcomes["extract_result_db001"])
    outcomes["publish_result"] = Silent(2, outcomes["publish_result"])
    ctx, result = drive(outcomes)
    assert result["status"] == "COMPLETED"
    sent = [(p["topic"], p["event"].get("selection", {}).get("unit")) for p in published(ctx)]
    assert sent.count(("extract.requested", "db001")) == 2  # re-sent once
    assert sent.count(("extract.requested", "db000")) == 1  # it answered: never re-sent
    assert sent.count(("publish.requested", None)) == 3
    checks = [payload for kind, name, payload in ctx.log if name == ACTIVITY_SILENT_UNITS]
    assert {"run_id": "r1", "stage": "extract", "units": ["db001"]} in checks  # only the unit still waiting


def test_re_sending_is_bounded_then_the_stage_times_out() -> None:
    outcomes = success("shop")
    outcomes["transform_result_db000"] = Silent(MAX_RESENDS + 5, outcomes["transform_result_db000"])
    ctx = ScriptedContext()
    with pytest.raises(StageFailedError, match="transform of db000 did not finish within 60 s"):
        drive(outcomes, ctx)
    sent = [(p["topic"], p["event"].get("unit")) for p in published(ctx)]
    assert sent.count(("transform.requested", "db000")) == 1 + MAX_RESENDS
    assert ctx.log[-1][2]["result"]["status"] == "FAILED"


def test_v1_never_re_sends() -> None:
    outcomes = success("shop")
    outcomes["extract_result_db000"] = Silent(1, outcomes["extract_result_db000"])
    ctx = ScriptedContext()
    with pytest.raises(StageFailedError, match="extract of db000 did not finish"):
        drive(outcomes, ctx, workflow_version("v1"))
    assert not any(name == ACTIVITY_SILENT_UNITS for _, name, _ in ctx.log)


class RecordingRuntime:
    def __init__(self) -> None:
        self.registered: list[tuple[str, str, bool]] = []

    def register_versioned_workflow(self, fn: Any, *, name: str, version_name: str, is_latest: bool) -> None:
        assert callable(fn)
        self.registered.append((name, version_name, is_latest))


def test_every_version_is_registered_and_new_runs_start_on_the_newest_unless_pinned() -> None:
    runtime = RecordingRuntime()
    assert register_workflow_versions(runtime, None) is LATEST_VERSION
    assert runtime.registered == [(WORKFLOW_NAME, v.name, v is LATEST_VERSION) for v in WORKFLOW_VERSIONS]
    pinned = RecordingRuntime()
    assert register_workflow_versions(pinned, "v1").name == "v1"
    assert [r for r in pinned.registered if r[2]] == [(WORKFLOW_NAME, "v1", True)]
    assert len(pinned.registered) == len(WORKFLOW_VERSIONS)  # old runs of every version still replay


def test_an_unknown_version_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"workflow version 'v9' does not exist \(known: v1, v2, v3\)"):
        workflow_version("v9")
