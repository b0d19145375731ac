"""The one way a stage service answers a command: do the work, then announce completion or failure."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from pgmeta_shared.delivery import classify
from pgmeta_shared.events import Stage, StageCommand, StageFailed, TopicName, clip
from pgmeta_shared.fencing import RunEndedError, guarded_work
from pgmeta_shared.keys import stage_failure_key
from pgmeta_shared.platform import ArtifactStore, Platform
from pgmeta_shared.telemetry import UnitWork, unit_work

log = logging.getLogger(__name__)


CommandT = TypeVar("CommandT", bound=StageCommand)
MarkerT = TypeVar("MarkerT", bound=BaseModel)


def once_per_chunk(store: ArtifactStore, done_key: str, marker: type[MarkerT], work: Callable[[], MarkerT]) -> MarkerT:
    """One chunk's work done once: what it produced is recorded under ``done_key``, and a redelivered (or early
    and then commanded) chunk finds the record and returns it instead of working again."""
    recorded = store.get_json(done_key)
    if recorded is not None:
        return marker.model_validate(recorded)
    done = work()
    store.save_json(done_key, done.model_dump())
    return done


def stage_handler(
    platform: Platform,
    stage: Stage,
    work: Callable[[CommandT, Platform], BaseModel],
    completion_topic: TopicName,
) -> Callable[[CommandT], None]:
    """A subscription handler for ``stage``.

    A permanent failure (bad credentials, unreachable source, missing artifact) becomes a
    ``stage.failed`` event and the delivery is acknowledged: the run fails fast, with no retry storm.
    A transient one propagates, so the delivery is retried by Dapr.
    """

    def fail(failed: StageFailed) -> None:
        # Kept as well as published: a caller that is not a workflow (POST /preflight) reads it here.
        platform.save_json(stage_failure_key(failed.run_id, stage, failed.unit), failed.model_dump(mode="json"))
        platform.publish(TopicName.STAGE_FAILED, failed)

    def handler(command: CommandT) -> None:
        with unit_work(command.run_id, stage.value, command.work_unit()) as work_span:
            handle(command, work_span)

    def handle(command: CommandT, work_span: UnitWork) -> None:
        unit = command.work_unit()
        try:
            completed = guarded_work(platform, stage, command, work)
        except RunEndedError as exc:  # late or cancelled work: acknowledged, nothing announced
            log.info("run %s: %s stopped: %s", command.run_id, stage.value, exc)
            return
        except Exception as exc:
            failure = classify(exc, f"{stage.value} service")
            work_span.failed(failure.code, failure.message, retryable=failure.retryable)
            if failure.retryable:
                raise
            log.error(
                "run %s: %s failed: %s",
                command.run_id,
                stage.value,
                failure.message,
                exc_info=exc if failure.bug else None,
            )
            fail(
                StageFailed(
                    run_id=command.run_id, stage=stage, unit=unit, error_code=failure.code, error=clip(failure.message)
                )
            )
            return
        work_span.completed(getattr(completed, "counts", None))
        log.info("run %s: %s done", command.run_id, stage.value)
        platform.publish(completion_topic, completed)

    return handler
