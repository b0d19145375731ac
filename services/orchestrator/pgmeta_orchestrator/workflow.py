"""The extraction workflow: extract → transform → publish, each a command event and a completion event.

Activities only publish commands (and read small state); a stage's outcome arrives as an external event
raised by the orchestrator's subscription handlers, raced against a timeout. Workflow inputs and outputs stay
small (ids, counts): bulk data goes by claim-check. From v3 the stages overlap where nothing is waited for: the
server unit (preflight's chunk) is transformed during extraction, and a unit with nothing to transform is not
sent to the transformer.

The workflow is versioned (``WORKFLOW_VERSIONS``): every run records the version it started on and is
replayed on that version to its end, so an orchestrator upgraded mid-run finishes old runs on the old
definition and starts new runs on the newest. How to change the workflow safely: docs/reliability.md.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from dapr.ext.workflow import when_all, when_any
from pydantic import BaseModel

from pgmeta_orchestrator.run_endings import RunEndings
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
    clip,
    nothing_to_transform,
    stage_result_event,
    topic,
)
from pgmeta_shared.fencing import RunState, end_run, lease_is_fresh
from pgmeta_shared.keys import credentials_key
from pgmeta_shared.naming import default_connection_qualified_name
from pgmeta_shared.platform import Platform
from pgmeta_shared.telemetry import mark_failed, pipeline_metrics

log = logging.getLogger(__name__)

WORKFLOW_NAME = "extraction"
ACTIVITY_PUBLISH = "publish_event"
ACTIVITY_FINISH = "finish_run"
ACTIVITY_SILENT_UNITS = "find_silent_units"

# A command whose unit has shown no sign of life (no fresh work lease) this long after it was sent is sent
# again. Longer than the pub/sub processingTimeout (20 s), so that the broker's own redelivery to a live
# consumer is tried first; the re-send covers what redelivery cannot: a command lost with the last second of
# Redis, deleted, or dead-lettered.
SILENCE_SECONDS = 30
MAX_RESENDS = 3  # per unit and stage; the stage timeout still bounds the wait


@dataclass(frozen=True)
class WorkflowVersion:
    """One released definition of the extraction workflow.

    What a released version yields (activities, timers, waits, in that order) never changes: runs started
    on it are replayed on it. A change to what the workflow yields is a new version (docs/reliability.md).
    """

    name: str
    resends_silent_commands: bool = False
    # The server unit's chunk is written by preflight: its transform command goes out with the extract commands
    # and is waited on alongside them, instead of after extraction.
    transforms_server_with_extract: bool = False
    # A database unit that extracted 0 chunks (every schema carried over) gets no transform command: its result
    # is the one the transformer would answer (``nothing_to_transform``).
    skips_empty_transforms: bool = False

    def __post_init__(self) -> None:
        if self.transforms_server_with_extract and not self.resends_silent_commands:
            raise ValueError(f"{self.name}: commands sent together are waited on with re-sending only")


WORKFLOW_VERSIONS = (
    WorkflowVersion("v1"),  # preflight → extract → transform → publish, each stage waited on with its timeout
    WorkflowVersion("v2", resends_silent_commands=True),  # v1 + re-sending commands whose unit stays silent
    # v2 + the server unit transformed during extraction + no transform command for a unit with 0 chunks
    WorkflowVersion(
        "v3", resends_silent_commands=True, transforms_server_with_extract=True, skips_empty_transforms=True
    ),
)
LATEST_VERSION = WORKFLOW_VERSIONS[-1]


def workflow_version(name: str | None) -> WorkflowVersion:
    """The version new runs start on: ``name``, or the newest; a clear error for a name never released."""
    if name is None:
        return LATEST_VERSION
    for version in WORKFLOW_VERSIONS:
        if version.name == name:
            return version
    known = ", ".join(v.name for v in WORKFLOW_VERSIONS)
    raise ValueError(f"workflow version {name!r} does not exist (known: {known})")


def versioned_workflow(version: WorkflowVersion) -> Callable[[Any, dict[str, Any]], Generator[Any, Any, Any]]:
    """The workflow function registered for ``version`` (a new function object per registration)."""

    def run(ctx: Any, request_payload: dict[str, Any]) -> Generator[Any, Any, dict[str, Any]]:
        return extraction_workflow(ctx, request_payload, version)

    run.__name__ = f"extraction_{version.name}"
    return run


def register_workflow_versions(runtime: Any, default: str | None) -> WorkflowVersion:
    """Registers every released version under ``WORKFLOW_NAME``; new runs start on ``default`` (or the newest).

    Every version stays registered: a run is replayed on the version it started on, whatever the default.
    """
    start_on = workflow_version(default)
    for version in WORKFLOW_VERSIONS:
        runtime.register_versioned_workflow(
            versioned_workflow(version), name=WORKFLOW_NAME, version_name=version.name, is_latest=version is start_on
        )
    return start_on


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
                workflow_version=status.get("workflow_version"),
            )
        )
    return results


@dataclass(frozen=True)
class Command:
    """One command the workflow sends and waits on: a stage's command for one unit (``None``: the stage has one)."""

    stage: Stage
    topic: TopicName
    unit: str | None
    event: BaseModel


CommandKey = tuple[Stage, str | None]


def await_commands(
    ctx: Any,
    commands: list[Command],
    timeout: timedelta,
    on_result: Callable[[dict[CommandKey, dict[str, Any]]], None] | None = None,
) -> Generator[Any, Any, dict[CommandKey, dict[str, Any]]]:
    """Publishes every command at once and waits for every outcome; the first failure fails the wait. A unit
    that shows no sign of life for ``SILENCE_SECONDS`` gets its command again (handlers are idempotent: a
    duplicate finds the work done or in progress), at most ``MAX_RESENDS`` times; the stage timeout bounds the
    wait as before. Commands of one stage yield exactly what ``await_units`` always did (version v2).
    """
    by_key = {(c.stage, c.unit): c for c in commands}

    def send(keys: list[CommandKey]) -> Any:
        return when_all(
            [ctx.call_activity(ACTIVITY_PUBLISH, input=_command(by_key[k].topic, by_key[k].event)) for k in keys]
        )

    yield send(list(by_key))
    pending = {key: ctx.wait_for_external_event(stage_result_event(*key), timeout=timeout) for key in by_key}
    sent_at = dict.fromkeys(by_key, ctx.current_utc_datetime)
    resends = dict.fromkeys(by_key, 0)
    silence = timedelta(seconds=SILENCE_SECONDS)
    check = ctx.create_timer(silence)
    results: dict[CommandKey, dict[str, Any]] = {}
    while pending:
        finished = yield when_any([*pending.values(), *([check] if check is not None else [])])
        if finished is check:
            now = ctx.current_utc_datetime
            due = [k for k in pending if resends[k] < MAX_RESENDS and now - sent_at[k] >= silence]
            again: list[CommandKey] = []
            for stage in dict.fromkeys(stage for stage, _ in due):  # one question per stage, in send order
                units = [unit for s, unit in due if s is stage]
                query = {"run_id": ctx.instance_id, "stage": stage.value, "units": units}
                silent: list[str | None] = yield ctx.call_activity(ACTIVITY_SILENT_UNITS, input=query)
                again += [(stage, unit) for unit in units if unit in silent]
            if again:
                yield send(again)
                for key in again:
                    sent_at[key], resends[key] = now, resends[key] + 1
            more = any(resends[k] < MAX_RESENDS for k in pending)
            check = ctx.create_timer(silence) if more else None
            continue
        key = next(k for k, task in pending.items() if task is finished)
        del pending[key]
        stage, unit = key
        if finished.is_failed:
            if isinstance(finished.get_exception(), TimeoutError):
                raise StageFailedError(_timeout_message(stage, unit, timeout))
            where = stage.value if unit is None else f"{stage.value} of {unit}"
            raise StageFailedError(f"{where} failed: {finished.get_exception()}")
        results[key] = _unwrap(stage, unit, finished.get_result())
        if on_result is not None:
            on_result(results)
    return results


def await_units(
    ctx: Any,
    stage: Stage,
    topic: TopicName,
    commands: dict[str | None, BaseModel],
    timeout: timedelta,
    on_result: Callable[[int], None] | None = None,
) -> Generator[Any, Any, dict[str | None, dict[str, Any]]]:
    """One stage's commands (one per unit; ``None``: the stage has one) sent and waited on by ``await_commands``."""
    show = None if on_result is None else (lambda results: on_result(len(results)))
    sent = [Command(stage, topic, unit, event) for unit, event in commands.items()]
    results = yield from await_commands(ctx, sent, timeout, show)
    return {unit: result for (_, unit), result in results.items()}


def run_stage(
    ctx: Any, version: WorkflowVersion, stage: Stage, topic: TopicName, command: BaseModel, timeout: timedelta
) -> Generator[Any, Any, dict[str, Any]]:
    """A single-unit stage (preflight, publish): its command, then its outcome."""
    if version.resends_silent_commands:
        results = yield from await_units(ctx, stage, topic, {None: command}, timeout)
        return results[None]
    yield ctx.call_activity(ACTIVITY_PUBLISH, input=_command(topic, command))
    return (yield from await_stage(ctx, stage, timeout))


def run_fan_out(
    ctx: Any,
    version: WorkflowVersion,
    stage: Stage,
    topic: TopicName,
    commands: dict[str, BaseModel],
    timeout: timedelta,
    status: dict[str, Any],
) -> Generator[Any, Any, dict[str, dict[str, Any]]]:
    """A stage with one command per unit (extract, transform)."""
    if not version.resends_silent_commands:
        return (yield from fan_out(ctx, stage, topic, commands, timeout, status))

    def show(done: int) -> None:
        ctx.set_custom_status(
            custom_status(
                stage.value,
                status["counts"],
                units_done=done,
                units_total=len(commands),
                databases=status.get("databases"),
                workflow_version=version.name,
            )
        )

    by_unit = cast(dict[str | None, BaseModel], commands)  # every key a unit name; None only for single-unit stages
    results = yield from await_units(ctx, stage, topic, by_unit, timeout, show)
    return {str(unit): result for unit, result in results.items()}


def extract_and_transform_server(
    ctx: Any,
    version: WorkflowVersion,
    extract_commands: dict[str, BaseModel],
    server_transform: TransformRequested,
    timeout: timedelta,
    status: dict[str, Any],
) -> Generator[Any, Any, tuple[dict[str, dict[str, Any]], dict[str, Any]]]:
    """The extract commands and the server unit's transform command (its chunk is preflight's), sent together
    and waited on together: the extract results by unit, and the server unit's transform result."""
    commands = [Command(Stage.EXTRACT, TopicName.EXTRACT_REQUESTED, unit, c) for unit, c in extract_commands.items()]
    commands.append(Command(Stage.TRANSFORM, TopicName.TRANSFORM_REQUESTED, SERVER_UNIT, server_transform))

    def show(results: dict[CommandKey, dict[str, Any]]) -> None:
        ctx.set_custom_status(
            custom_status(
                Stage.EXTRACT.value,
                status["counts"],
                units_done=sum(1 for stage, _ in results if stage is Stage.EXTRACT),
                units_total=len(extract_commands),
                databases=status.get("databases"),
                workflow_version=version.name,
            )
        )

    results = yield from await_commands(ctx, commands, timeout, show)
    extracted = {str(unit): result for (stage, unit), result in results.items() if stage is Stage.EXTRACT}
    return extracted, results[(Stage.TRANSFORM, SERVER_UNIT)]


def _sum_counts(results: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for key, value in result["counts"].items():
            total[key] = total.get(key, 0) + value
    return total


def extraction_workflow(
    ctx: Any, request_payload: dict[str, Any], version: WorkflowVersion = LATEST_VERSION
) -> Generator[Any, Any, dict[str, Any]]:
    request = ExtractionRequested.model_validate(request_payload)
    run_id: str = ctx.instance_id
    connection_qn = connection_qualified_name(request)
    timeout = timedelta(seconds=request.stage_timeout_seconds)
    stage = Stage.PREFLIGHT
    # Custom status is not part of what a version yields (replay does not compare it): it may change freely.
    status: dict[str, Any] = {"counts": {}, "databases": None, "workflow_version": version.name}

    def show(stage_name: str, counts: dict[str, int], error: str | None = None, **extra: Any) -> None:
        ctx.set_custom_status(custom_status(stage_name, counts, error, workflow_version=version.name, **extra))

    try:
        show(stage.value, {})
        # No column count: the extract stage counts what it reads (the column count was the costliest query of a
        # re-run's preflight). Command contents are not part of what a version yields.
        command: Any = PreflightRequested(
            run_id=run_id,
            source=request.source,
            credentials=request.credentials,
            filters=request.filters,
            count_columns=False,
            incremental_for=None if request.full else connection_qn,
        )
        checked = PreflightCompleted.model_validate(
            (yield from run_stage(ctx, version, stage, TopicName.PREFLIGHT_REQUESTED, command, timeout))
        )

        stage = Stage.EXTRACT
        status |= {"counts": checked.counts, "databases": [db.database for db in checked.databases]}
        show(
            stage.value,
            checked.counts,
            units_done=0,
            units_total=len(checked.databases),
            databases=status["databases"],
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

        def transform_command(unit: UnitChunks) -> TransformRequested:
            return TransformRequested(
                run_id=run_id,
                connection_qualified_name=connection_qn,
                unit=unit.unit,
                chunk_count=unit.chunk_count,
                generation=unit.generation,
            )

        server_unit = UnitChunks(unit=SERVER_UNIT, chunk_count=1)  # written by preflight
        transformed: dict[str, dict[str, Any]] = {}
        if version.transforms_server_with_extract:
            extracted, transformed[SERVER_UNIT] = yield from extract_and_transform_server(
                ctx, version, extract_commands, transform_command(server_unit), timeout, status
            )
        else:
            extracted = yield from run_fan_out(
                ctx, version, stage, TopicName.EXTRACT_REQUESTED, extract_commands, timeout, status
            )

        stage = Stage.TRANSFORM
        units = [server_unit] + [
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
        for u in units:
            if version.skips_empty_transforms and u.chunk_count == 0:
                transformed[u.unit] = nothing_to_transform(run_id, u.unit).model_dump(mode="json")
        transform_commands: dict[str, BaseModel] = {
            u.unit: transform_command(u) for u in units if u.unit not in transformed
        }
        if transform_commands:  # none on a v3 re-run that carried every schema over
            transformed |= yield from run_fan_out(
                ctx, version, stage, TopicName.TRANSFORM_REQUESTED, transform_commands, timeout, status
            )

        stage = Stage.PUBLISH
        counts = _sum_counts(list(transformed.values()))
        status["counts"] = counts
        show(stage.value, counts, databases=status["databases"])
        command = PublishRequested(
            run_id=run_id,
            connection_qualified_name=connection_qn,
            units=units,
            counts=counts,
            filters=request.filters,
            database=request.source.database,
        )
        published = PublishCompleted.model_validate(
            (yield from run_stage(ctx, version, stage, TopicName.PUBLISH_REQUESTED, command, timeout))
        )
    except StageFailedError as exc:
        show(stage.value, status["counts"], str(exc), databases=status["databases"])
        failed = ExtractionCompleted(run_id=run_id, status="FAILED", counts=status["counts"], error=clip(str(exc)))
        yield ctx.call_activity(ACTIVITY_FINISH, input=_finish(failed, request))
        raise

    show("done", published.counts, databases=status["databases"])
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

    def __init__(
        self,
        platform: Platform,
        credentials_store: str,
        traces: RunTraces | None = None,
        endings: RunEndings | None = None,
    ) -> None:
        self._platform = platform
        self._credentials_store = credentials_store
        self._traces = traces or RunTraces(platform)
        self._endings = endings

    def publish_event(self, ctx: Any, command: dict[str, Any]) -> None:
        spec = topic(TopicName(command["topic"]))
        if spec.model is None or ServiceName.ORCHESTRATOR not in spec.producers:
            raise ValueError(f"the orchestrator does not publish {spec.name}")
        with self._traces.activity(ctx.workflow_id, f"publish {spec.name.value}", topic=spec.name.value):
            self._platform.publish(spec.name, spec.model.model_validate(command["event"]))

    def find_silent_units(self, ctx: Any, query: dict[str, Any]) -> list[str | None]:
        """The units of ``query`` whose work shows no sign of life: no worker holds a fresh lease on them.

        A unit whose result is recorded but whose completion never reached the workflow is silent too: its
        command sent again makes the stage re-announce the recorded result.
        """
        run_id, stage = query["run_id"], Stage(query["stage"])
        silent: list[str | None] = [
            unit for unit in query["units"] if not lease_is_fresh(self._platform, run_id, stage, unit)
        ]
        if silent:
            log.warning(
                "run %s: %s of %s showed no sign of life for %d s: command re-sent",
                run_id,
                stage.value,
                ", ".join(unit or "the run" for unit in silent),
                SILENCE_SECONDS,
            )
        return silent

    def finish_run(self, ctx: Any, payload: dict[str, Any]) -> None:
        result = payload["result"]
        with self._traces.activity(ctx.workflow_id, "finish run", outcome=result["status"]) as span:
            if result["status"] == "FAILED":
                mark_failed(span, str(result.get("error")))
            self._finish_run(payload)
        pipeline_metrics().runs_finished.add(1, {"outcome": result["status"]})
        if self._endings is not None:  # the workflow completes next: a long poll in this process need not wait
            self._endings.ended(result["run_id"])

    def _finish_run(self, payload: dict[str, Any]) -> None:
        result = ExtractionCompleted.model_validate(payload["result"])
        # First: from here on, late stage work for this run commits nothing (pgmeta_shared.fencing).
        end_run(self._platform, result.run_id, RunState(result.status), result.error)
        # A password given to the REST API is kept only for the run's lifetime. Only the key derived from
        # the run id is ever deleted: a key named in the request could be anyone's (runs/index, a baseline).
        self._platform.delete_state(self._credentials_store, credentials_key(result.run_id))
        self._platform.publish(TopicName.EXTRACTION_COMPLETED, result)
