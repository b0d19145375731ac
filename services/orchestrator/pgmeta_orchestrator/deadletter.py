"""The orchestrator's dead-letter handler: a dead-lettered message fails its run visibly, never silently.

Dapr moves a message to ``pgmeta.deadletter`` when a subscriber DROPs it (malformed, or a permanent failure
outside a stage command). The dead-lettered message is the original CloudEvent: its ``topic`` says what it
was, its ``data`` carries the run id. A stage completion that parses is re-driven (raised to
the workflow as the result it is); a stage command, or a completion that does not parse, becomes a failed
outcome of that stage (the workflow fails the run with the reason); a request that never became a
workflow gets a fence saying FAILED, which ``GET /runs/{id}`` shows (a dead-lettered duplicate of a run that
did start changes nothing). Anything else (progress,
chunk_ready) is only logged: losing it delays nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Body, FastAPI
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from pgmeta_orchestrator.runs import RunService
from pgmeta_shared.delivery import Delivery, classify
from pgmeta_shared.events import ServiceName, Stage, StageCommand, TopicName, stage_result_event, topic
from pgmeta_shared.fencing import RunState, end_run
from pgmeta_shared.subscriptions import hide_from_openapi

log = logging.getLogger(__name__)

DEAD_LETTERED = "dead_lettered"


def _unit(spec_model: Any, data: dict[str, Any]) -> str | None:
    try:
        event = spec_model.model_validate(data)
    except ValidationError:
        unit = data.get("unit")
        return unit if isinstance(unit, str) else None
    if isinstance(event, StageCommand):
        return event.work_unit()
    unit = getattr(event, "unit", None)
    return unit if isinstance(unit, str) else None


def handle_dead_letter(runs: RunService, cloud_event: dict[str, Any]) -> None:
    """Turns one dead-lettered CloudEvent into a visible failure of its run (or a log line, if harmless)."""
    name = cloud_event.get("topic")
    data = cloud_event.get("data")
    if not isinstance(data, dict):
        log.error("dead-lettered message %s on %r without a JSON payload; nothing to fail", cloud_event.get("id"), name)
        return
    run_id = data.get("run_id") or data.get("request_id")
    try:
        spec = topic(TopicName(str(name)))
    except ValueError:
        log.error("run %s: dead-lettered message on unknown topic %r", run_id, name)
        return
    if not isinstance(run_id, str):
        log.error("dead-lettered %s message %s names no run", name, cloud_event.get("id"))
        return
    reason = f"a {name} message of this run could not be processed and was dead-lettered (see the services' logs)"
    if spec.stage is not None and spec.model is not None and ServiceName.ORCHESTRATOR in spec.consumers:
        try:  # a completion that parses is a result, whatever made its delivery fail: re-drive it
            completion = spec.model.model_validate(data)
        except ValidationError:
            completion = None
        if completion is not None:
            log.warning("run %s: re-driving a dead-lettered %s", run_id, name)
            runs.raise_stage_event(
                run_id,
                stage_result_event(spec.stage, getattr(completion, "unit", None)),
                {"ok": True, "event": completion.model_dump(mode="json")},
            )
            return
    if spec.stage is not None and spec.model is not None:
        unit = _unit(spec.model, data)
        log.error("run %s: %s; failing its %s stage", run_id, reason, spec.stage.value)
        runs.raise_stage_event(
            run_id, stage_result_event(spec.stage, unit), {"ok": False, "error_code": DEAD_LETTERED, "error": reason}
        )
    elif spec.name is TopicName.STAGE_FAILED and isinstance(data.get("stage"), str):
        stage = Stage(data["stage"])
        log.error("run %s: %s; failing its %s stage", run_id, reason, stage.value)
        error = f"{data.get('error') or reason}"
        runs.raise_stage_event(
            run_id,
            stage_result_event(stage, data.get("unit")),
            {"ok": False, "error_code": data.get("error_code") or DEAD_LETTERED, "error": error},
        )
    elif spec.name is TopicName.EXTRACTION_REQUESTED and runs.has_workflow(run_id):
        log.warning("run %s: a duplicate %s was dead-lettered; the run it duplicates goes on", run_id, name)
    elif spec.name is TopicName.EXTRACTION_REQUESTED:
        log.error("run %s: %s; the run never started", run_id, reason)
        end_run(runs.platform, run_id, RunState.FAILED, f"the request could not be started: {reason}")
    else:
        log.warning("run %s: dead-lettered %s message ignored (it only reports or speeds up work)", run_id, name)


def register_dead_letter(app: FastAPI, pubsub: str) -> None:
    """Subscribes the orchestrator to ``pgmeta.deadletter`` (with no dead-letter topic of its own: no loop)."""
    from dapr.ext.fastapi import DaprApp

    dapr_app: DaprApp = app.state.dapr_app if hasattr(app.state, "dapr_app") else DaprApp(app)
    app.state.dapr_app = dapr_app

    def deliver(cloud_event: dict[str, Any]) -> Delivery:
        try:
            handle_dead_letter(app.state.runs, cloud_event)
        except Exception as exc:
            failure = classify(exc, "orchestrator dead-letter handler")
            log.error("dead-lettered message %s: %s", cloud_event.get("id"), failure.message)
            return Delivery.RETRY if failure.retryable else Delivery.SUCCESS
        return Delivery.SUCCESS

    async def endpoint(cloud_event: dict[str, Any] = Body(...)) -> dict[str, str]:  # noqa: B008
        return {"status": (await run_in_threadpool(deliver, cloud_event)).value}

    endpoint.__name__ = "on_pgmeta_deadletter"
    dapr_app.subscribe(pubsub=pubsub, topic=TopicName.DEAD_LETTER.value)(endpoint)
    hide_from_openapi(app, ("/dapr/subscribe", f"/events/{pubsub}/{TopicName.DEAD_LETTER.value}"))
