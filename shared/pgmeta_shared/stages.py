"""The one way a stage service answers a command: do the work, then announce completion or failure."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from pgmeta_shared.errors import PgmetaError
from pgmeta_shared.events import Stage, StageCommand, StageFailed, TopicName
from pgmeta_shared.platform import Platform
from pgmeta_shared.telemetry import UnitWork, unit_work

log = logging.getLogger(__name__)


CommandT = TypeVar("CommandT", bound=StageCommand)


def failure_key(run_id: str, stage: Stage, unit: str | None) -> str:
    return f"{run_id}/{stage.value}/{unit or '-'}/failed"


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
        platform.save_json(failure_key(failed.run_id, stage, failed.unit), failed.model_dump(mode="json"))
        platform.publish(TopicName.STAGE_FAILED, failed)

    def handler(command: CommandT) -> None:
        with unit_work(command.run_id, stage.value, command.work_unit()) as work_span:
            handle(command, work_span)

    def handle(command: CommandT, work_span: UnitWork) -> None:
        unit = command.work_unit()
        try:
            completed = work(command, platform)
        except PgmetaError as exc:
            work_span.failed(exc.code, str(exc), retryable=exc.retryable)
            if exc.retryable:
                raise
            log.error("run %s: %s failed: %s", command.run_id, stage.value, exc)
            fail(StageFailed(run_id=command.run_id, stage=stage, unit=unit, error_code=exc.code, error=str(exc)))
            return
        except Exception as exc:
            work_span.failed("internal_error", f"{type(exc).__name__}: {exc}", retryable=False)
            # A bug, not a fault of the input or the infrastructure: retrying would fail the same way,
            # so fail the run now with the cause, and keep the traceback in the log.
            log.exception("run %s: %s failed unexpectedly", command.run_id, stage.value)
            fail(
                StageFailed(
                    run_id=command.run_id,
                    stage=stage,
                    unit=unit,
                    error_code="internal_error",
                    error=f"{type(exc).__name__}: {exc} (a pgmeta bug; see the {stage.value} service log)",
                ),
            )
            return
        work_span.completed(getattr(completed, "counts", None))
        log.info("run %s: %s done", command.run_id, stage.value)
        platform.publish(completion_topic, completed)

    return handler
