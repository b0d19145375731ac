"""The transform stage: every raw chunk of a unit becomes one entity chunk (same index: redelivery overwrites)."""

from __future__ import annotations

import logging

from pgmeta_shared.events import ExtractionProgress, Stage, TopicName, TransformCompleted, TransformRequested
from pgmeta_shared.platform import Platform
from pgmeta_transformer.atlas import render_chunk

log = logging.getLogger(__name__)


def result_key(run_id: str, unit: str) -> str:
    return f"{run_id}/{Stage.TRANSFORM.value}/{unit}/result"


def report_key(run_id: str, unit: str) -> str:
    return f"{run_id}/report/{Stage.TRANSFORM.value}/{unit}"


def transform(command: TransformRequested, platform: Platform) -> TransformCompleted:
    recorded = platform.get_json(result_key(command.run_id, command.unit))
    if recorded is not None:
        return TransformCompleted.model_validate(recorded)
    counts: dict[str, int] = {}
    problems: list[dict[str, str]] = []
    for index in range(command.chunk_count):
        records = platform.load_chunk(command.run_id, Stage.EXTRACT.value, command.unit, index)
        parts = render_chunk(command.connection_qualified_name, records, problems)
        platform.save_parts(command.run_id, Stage.TRANSFORM.value, command.unit, index, parts)
        for name, blob in parts.items():
            if name != "fingerprints":
                kind, _, type_name = name.partition(":")
                key = type_name if kind == "entity" else name
                counts[key] = counts.get(key, 0) + blob.count(b"\n")
        platform.publish(
            TopicName.EXTRACTION_PROGRESS,
            ExtractionProgress(
                run_id=command.run_id, stage=Stage.TRANSFORM, done=index + 1, total=command.chunk_count,
                measure="chunks", work_unit=command.unit,
            ),
        )  # fmt: skip
    platform.save_json(report_key(command.run_id, command.unit), problems)
    completed = TransformCompleted(
        run_id=command.run_id, unit=command.unit, chunk_count=command.chunk_count, counts=counts,
        problems=len(problems),
    )  # fmt: skip
    platform.save_json(result_key(command.run_id, command.unit), completed.model_dump(mode="json"))
    return completed
