"""The extraction workflow: extract → transform → publish, each a command event and a completion event.

Activities only publish commands; a stage's outcome arrives as an external event raised by the
orchestrator's subscription handlers, raced against a timeout. Workflow inputs and outputs stay small
(ids, counts): bulk data goes by claim-check.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from datetime import timedelta
from typing import Any

from dapr.ext.workflow import when_all, when_any
from pydantic import BaseModel

from pgmeta_orchestrator.run_traces import RunTraces
from pgmeta_shared.events import (
    SERVER_UNIT,
    ExtractionCompleted,
    ExtractionRequested,
    ExtractRequested,
    PreflightCompleted,
    PreflightRequested,
    PublishCompleted,
    PublishRequested,
    ServiceName,
    Stage,
    TopicName,
    TransformRequested,
    UnitChunks,
    stage_result_event,
    topic,
)
from pgmeta_shared.fencing import RunState, end_run
from pgmeta_shared.naming import default_connection_qualified_name
from pgmeta_shared.platform import Platform
from pgmeta_shared.telemetry import mark_failed, pipeline_metrics

WORKFLOW_NAME = "extraction"
ACTIVITY_PUBLISH = "publish_event"
ACTIVITY_FINISH = "finish_run"


class StageFailedError(Exception):
    """A stage reported failure or timed out; the message is what the user sees."""


def connection_qualified_name(request: ExtractionRequested) -> str:
    return request.connection_qualified_name or default_connection_qualified_name(
        request.source.host, request.source.port
    )


def custom_status(stage: str, counts: dict[str, int], error: str | None = None, **extra: Any) -> str:
    return json.dumps({"stage": stage, "counts": counts, "error": error, **extra}, sort_keys=True)


def await_stage(ctx: Any, stage: Stage, timeout: timedelta) -> Generator[Any, Any, dict[str, Any]]:
    """Waits for ``stage``'s outcome event; raises StageFailedError on failure or timeout."""
    try:
        outcome: dict[str, Any] = yield ctx.wait_for_external_event(stage_result_event(stage), timeout=timeout)
    except TimeoutError:
        raise StageFailedError(_timeout_message(stage, None, timeout)) from None
    return _unwrap(stage, None, outcome)


def _timeout_message(stage: Stage, unit: str | None, timeout: timedelta) -> str:
    what = stage.value if unit is None else f"{stage.value} of {unit}"
    return f"{what} did not finish within {int(timeout.total_seconds())} s (stage_timeout_seconds)"


def _unwrap(stage: Stage, unit: str | None, outcome: dict[str, Any]) -> dict[str, Any]:
    if not outcome.get("ok"):
        where = stage.value if unit is None else f"{stage.value} of {unit}"
        raise StageFailedError(f"{where} failed ({outcome.get('error_code')}): {outcome.get('error')}")
    event: dict[str, Any] = outcome["event"]
    return event


def fan_out(
    ctx: Any, stage: Stage, topic: TopicName, commands: dict[str, BaseModel], timeout: timedelta, status: dict[str, Any]
) -> Generator[Any, Any, dict[str, dict[str, Any]]]:
    """Publishes one command per unit and waits for every unit's outcome; the first failure fails the stage.

    Replicas of the stage's service share the commands (one consumer group per app id).
    """
    yield when_all([ctx.call_activity(ACTIVITY_PUBLISH, input=_command(topic, c)) for c in commands.values()])
    pending = {unit: ctx.wait_for_external_event(stage_result_event(stage, unit), timeout=timeout) for unit in commands}
    results: dict[str, dict[str, Any]] = {}
    while pending:
        finished = yield when_any(list(pending.values()))
        unit = next(u for u, task in pending.items() if task is finished)
        del pending[unit]
        if finished.is_failed:
            if isinstance(finished.get_exception(), TimeoutError):
                raise StageFailedError(_timeout_message(stage, unit, timeout))
            raise StageFailedError(f"{stage.value} of {unit} failed: {finished.get_exception()}")
        results[unit] = _unwrap(stage, unit, finished.get_result())
        ctx.set_custom_status(
            custom_status(
                stage.value,
                status["counts"],
                units_done=len(results),
                units_total=len(commands),
                databases=status.get("databases"),
            )
        )
    return results


def _sum_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for key, value in result["counts"].items():
            total[key] = total.get(key, 0) + value
    return total


def extraction_workflow(ctx: Any, request_payload: dict[str, Any]) -> Generator[Any, Any, dict[str, Any]]:
    request = ExtractionRequested.model_validate(request_payload)
    run_id: str = ctx.instance_id
    connection_qn = connection_qualified_name(request)
    timeout = timedelta(seconds=request.stage_timeout_seconds)
    stage = Stage.PREFLIGHT
    status: dict[str, Any] = {"counts": {}, "databases": None}
    try:
        ctx.set_custom_status(custom_status(stage.value, {}))
        command: Any = PreflightRequested(
            run_id=run_id, source=request.source, credentials=request.credentials, filters=request.filters
        )
        yield ctx.call_activity(ACTIVITY_PUBLISH, input=_command(TopicName.PREFLIGHT_REQUESTED, command))
        checked = PreflightCompleted.model_validate((yield from await_stage(ctx, stage, timeout)))

        stage = Stage.EXTRACT
        status = {"counts": checked.counts, "databases": [db.database for db in checked.databases]}
        ctx.set_custom_status(
            custom_status(
                stage.value,
                checked.counts,
                units_done=0,
                units_total=len(checked.databases),
                databases=status["databases"],
            )
        )
        extract_commands: dict[str, BaseModel] = {
            db.unit: ExtractRequested(
                run_id=run_id,
                source=request.source,
                credentials=request.credentials,
                connection_qualified_name=connection_qn,
                selection=db,
                filters=request.filters,
                full=request.full,
            )
            for db in checked.databases
        }
        extracted = yield from fan_out(ctx, stage, TopicName.EXTRACT_REQUESTED, extract_commands, timeout, status)

        stage = Stage.TRANSFORM
        units = [UnitChunks(unit=SERVER_UNIT, chunk_count=1)] + [
            UnitChunks(
                unit=unit, chunk_count=extracted[unit]["chunk_count"], generation=extracted[unit].get("generation", 1)
            )
            for unit in extract_commands
        ]
        status["counts"] = _sum_counts(list(extracted.values()))
        schemas = {
            "extracted": sum(e.get("schemas_extracted", 0) for e in extracted.values()),
            "skipped": sum(e.get("schemas_skipped", 0) for e in extracted.values()),
        }
        transform_commands: dict[str, BaseModel] = {
            u.unit: TransformRequested(
                run_id=run_id,
                connection_qualified_name=connection_qn,
                unit=u.unit,
                chunk_count=u.chunk_count,
                generation=u.generation,
            )
            for u in units
        }
        transformed = yield from fan_out(ctx, stage, TopicName.TRANSFORM_REQUESTED, transform_commands, timeout, status)

        stage = Stage.PUBLISH
        counts = _sum_counts(list(transformed.values()))
        status["counts"] = counts
        ctx.set_custom_status(custom_status(stage.value, counts, databases=status["databases"]))
        command = PublishRequested(
            run_id=run_id,
            connection_qualified_name=connection_qn,
            units=units,
            counts=counts,
            filters=request.filters,
            database=request.source.database,
        )
        yield ctx.call_activity(ACTIVITY_PUBLISH, input=_command(TopicName.PUBLISH_REQUESTED, command))
        published = PublishCompleted.model_validate((yield from await_stage(ctx, stage, timeout)))
    except StageFailedError as exc:
        ctx.set_custom_status(custom_status(stage.value, status["counts"], str(exc), databases=status["databases"]))
        failed = ExtractionCompleted(run_id=run_id, status="FAILED", counts=status["counts"], error=str(exc))
        yield ctx.call_activity(ACTIVITY_FINISH, input=_finish(failed, request))
        raise

    ctx.set_custom_status(custom_status("done", published.counts, databases=status["databases"]))
    completed = ExtractionCompleted(
        run_id=run_id,
        status="COMPLETED",
        counts=published.counts,
        location=published.location,
        problems=published.problems,
        changes=published.changes,
        schemas=schemas,
    )
    yield ctx.call_activity(ACTIVITY_FINISH, input=_finish(completed, request))
    return completed.model_dump(mode="json")


def _command(topic: TopicName, event: Any) -> dict[str, Any]:
    return {"topic": topic.value, "event": event.model_dump(mode="json")}


def _finish(result: ExtractionCompleted, request: ExtractionRequested) -> dict[str, Any]:
    return {
        "result": result.model_dump(mode="json"),
        "credentials": request.credentials.model_dump(mode="json"),
    }


class Activities:
    """Workflow activities bound to a Platform: they publish, and forget one-shot credentials."""

    def __init__(self, platform: Platform, credentials_store: str, traces: RunTraces | None = None) -> None:
        self._platform = platform
        self._credentials_store = credentials_store
        self._traces = traces or RunTraces(platform)

    def publish_event(self, ctx: Any, command: dict[str, Any]) -> None:
        spec = topic(TopicName(command["topic"]))
        if spec.model is None or ServiceName.ORCHESTRATOR not in spec.producers:
            raise ValueError(f"the orchestrator does not publish {spec.name}")
        with self._traces.activity(ctx.workflow_id, f"publish {spec.name.value}", topic=spec.name.value):
            self._platform.publish(spec.name, spec.model.model_validate(command["event"]))

    def finish_run(self, ctx: Any, payload: dict[str, Any]) -> None:
        result = payload["result"]
        with self._traces.activity(ctx.workflow_id, "finish run", outcome=result["status"]) as span:
            if result["status"] == "FAILED":
                mark_failed(span, str(result.get("error")))
            self._finish_run(payload)
        pipeline_metrics().runs_finished.add(1, {"outcome": result["status"]})

    def _finish_run(self, payload: dict[str, Any]) -> None:
        result = ExtractionCompleted.model_validate(payload["result"])
        # First: from here on, late stage work for this run commits nothing (pgmeta_shared.fencing).
        end_run(self._platform, result.run_id, RunState(result.status), result.error)
        credentials = payload["credentials"]
        # A password given to the REST API is kept only for the run's lifetime.
        if credentials["kind"] == "state" and credentials["store"] == self._credentials_store:
            self._platform.delete_state(credentials["store"], credentials["key"])
        self._platform.publish(TopicName.EXTRACTION_COMPLETED, result)
