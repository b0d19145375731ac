"""The transform stage: every raw chunk becomes one entity chunk (same index, so redelivery overwrites)."""

from __future__ import annotations

import logging

from pgmeta_shared.events import (
    ExtractionProgress,
    Stage,
    TopicName,
    TransformCompleted,
    TransformRequested,
)
from pgmeta_shared.platform import Platform
from pgmeta_transformer.atlas import to_entities

log = logging.getLogger(__name__)

STAGE = Stage.TRANSFORM.value


def result_key(run_id: str) -> str:
    return f"{run_id}/{STAGE}/result"


def transform(event: TransformRequested, platform: Platform) -> TransformCompleted:
    recorded = platform.get_json(result_key(event.run_id))
    if recorded is not None:
        return TransformCompleted.model_validate(recorded)
    counts: dict[str, int] = {}
    for index in range(event.chunk_count):
        records = platform.load_chunk(event.run_id, Stage.EXTRACT.value, index)
        entities = to_entities(event.connection_qualified_name, records)
        platform.save_chunk(event.run_id, STAGE, index, entities)
        for entity in entities:
            counts[entity["typeName"]] = counts.get(entity["typeName"], 0) + 1
        platform.publish(
            TopicName.EXTRACTION_PROGRESS,
            ExtractionProgress(
                run_id=event.run_id,
                stage=Stage.TRANSFORM,
                done=index + 1,
                total=event.chunk_count,
                unit="chunks",
            ),
        )
    completed = TransformCompleted(run_id=event.run_id, chunk_count=event.chunk_count, counts=counts)
    platform.save_json(result_key(event.run_id), completed.model_dump(mode="json"))
    return completed
