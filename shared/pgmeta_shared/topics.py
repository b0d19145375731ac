"""Topic names: the one home of every pub/sub topic. Light on purpose (no pydantic): the CLI imports it at
start-up, where importing the event models would cost more than the rest of its start-up together."""

from __future__ import annotations

from enum import StrEnum


class TopicName(StrEnum):
    EXTRACTION_REQUESTED = "extraction.requested"
    PREFLIGHT_REQUESTED = "preflight.requested"
    PREFLIGHT_COMPLETED = "preflight.completed"
    METADATA_REQUESTED = "metadata.requested"
    EXTRACT_REQUESTED = "extract.requested"
    EXTRACT_COMPLETED = "extract.completed"
    EXTRACT_CHUNK_READY = "extract.chunk_ready"
    TRANSFORM_CHUNK_READY = "transform.chunk_ready"
    TRANSFORM_REQUESTED = "transform.requested"
    TRANSFORM_COMPLETED = "transform.completed"
    PUBLISH_REQUESTED = "publish.requested"
    PUBLISH_COMPLETED = "publish.completed"
    EXTRACTION_COMPLETED = "extraction.completed"
    STAGE_FAILED = "stage.failed"
    EXTRACTION_PROGRESS = "extraction.progress"
    DEAD_LETTER = "pgmeta.deadletter"
