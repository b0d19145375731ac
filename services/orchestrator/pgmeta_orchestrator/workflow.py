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

from pydantic import BaseModel

from pgmeta_shared.events import (
    ExtractCompleted,
    ExtractionCompleted,
    ExtractionRequested,
    ExtractRequested,
    PublishCompleted,
    PublishRequested,
    Stage,
    TopicName,
    TransformCompleted,
    TransformRequested,
    stage_result_event,
)
from pgmeta_shared.naming import default_connection_qualified_name
from pgmeta_shared.platform import Platform

WORKFLOW_NAME = "extraction"
ACTIVITY_PUBLISH = "publish_event"
ACTIVITY_FINISH = "finish_run"


STAGE_COMMANDS: dict[TopicName, type[BaseModel]] = {
    TopicName.EXTRACT_REQUESTED: ExtractRequested,
    TopicName.TRANSFORM_REQUESTED: TransformRequested,
    TopicName.PUBLISH_REQUESTED: PublishRequested,
}


class StageFailedError(Exception):
    """A stage reported failure or timed out; the message is what the user sees."""


def connection_qualified_name(request: ExtractionRequested) -> str:
    return request.connection_qualified_name or default_connection_qualified_name(
        request.source.host, request.source.port
    )


def custom_status(stage: str, counts: dict[str, int], error: str | None = None) -> str:
    return json.dumps({"stage": stage, "counts": counts, "error": error}, sort_keys=True)


def await_stage(ctx: Any, stage: Stage, timeout: timedelta) -> Generator[Any, Any, dict[str, Any]]:
    """Waits for ``stage``'s outcome event; raises StageFailedError on failure or timeout."""
    try:
        outcome: dict[str, Any] = yield ctx.wait_for_external_event(stage_result_event(stage), timeout=timeout)
    except TimeoutError:
        raise StageFailedError(
            f"{stage.value} did not finish within {int(timeout.total_seconds())} s (stage_timeout_seconds)"
        ) from None
    if not outcome.get("ok"):
        raise StageFailedError(f"{stage.value} failed ({outcome.get('error_code')}): {outcome.get('error')}")
    event: dict[str, Any] = outcome["event"]
    return event


def extraction_workflow(ctx: Any, request_payload: dict[str, Any]) -> Generator[Any, Any, dict[str, Any]]:
    request = ExtractionRequested.model_validate(request_payload)
    run_id: str = ctx.instance_id
    connection_qn = connection_qualified_name(request)
    timeout = timedelta(seconds=request.stage_timeout_seconds)
    stage = Stage.EXTRACT
    counts: dict[str, int] = {}
    try:
        ctx.set_custom_status(custom_status(stage.value, counts))
        command: Any = ExtractRequested(
            run_id=run_id,
            source=request.source,
            credentials=request.credentials,
            connection_qualified_name=connection_qn,
        )
        yield ctx.call_activity(ACTIVITY_PUBLISH, input=_command(TopicName.EXTRACT_REQUESTED, command))
        extracted = ExtractCompleted.model_validate((yield from await_stage(ctx, stage, timeout)))

        stage = Stage.TRANSFORM
        counts = extracted.counts
        ctx.set_custom_status(custom_status(stage.value, counts))
        command = TransformRequested(
            run_id=run_id, connection_qualified_name=connection_qn, chunk_count=extracted.chunk_count
        )
        yield ctx.call_activity(ACTIVITY_PUBLISH, input=_command(TopicName.TRANSFORM_REQUESTED, command))
        transformed = TransformCompleted.model_validate((yield from await_stage(ctx, stage, timeout)))

        stage = Stage.PUBLISH
        counts = transformed.counts
        ctx.set_custom_status(custom_status(stage.value, counts))
        command = PublishRequested(
            run_id=run_id,
            connection_qualified_name=connection_qn,
            chunk_count=transformed.chunk_count,
            counts=transformed.counts,
        )
        yield ctx.call_activity(ACTIVITY_PUBLISH, input=_command(TopicName.PUBLISH_REQUESTED, command))
        published = PublishCompleted.model_validate((yield from await_stage(ctx, stage, timeout)))
    except StageFailedError as exc:
        ctx.set_custom_status(custom_status(stage.value, counts, str(exc)))
        failed = ExtractionCompleted(run_id=run_id, status="FAILED", counts=counts, error=str(exc))
        yield ctx.call_activity(ACTIVITY_FINISH, input=_finish(failed, request))
        raise

    ctx.set_custom_status(custom_status("done", published.counts))
    completed = ExtractionCompleted(
        run_id=run_id, status="COMPLETED", counts=published.counts, location=published.location
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

    def __init__(self, platform: Platform, credentials_store: str) -> None:
        self._platform = platform
        self._credentials_store = credentials_store

    def publish_event(self, _ctx: Any, command: dict[str, Any]) -> None:
        topic = TopicName(command["topic"])
        self._platform.publish(topic, STAGE_COMMANDS[topic].model_validate(command["event"]))

    def finish_run(self, _ctx: Any, payload: dict[str, Any]) -> None:
        result = ExtractionCompleted.model_validate(payload["result"])
        credentials = payload["credentials"]
        # A password given to the REST API is kept only for the run's lifetime.
        if credentials["kind"] == "state" and credentials["store"] == self._credentials_store:
            self._platform.delete_state(credentials["store"], credentials["key"])
        self._platform.publish(TopicName.EXTRACTION_COMPLETED, result)
