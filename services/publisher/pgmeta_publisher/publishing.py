"""The publish stage: entity chunks to ``<connection>/<run_id>/`` in the object store, manifest last.

A reader that sees ``manifest.json`` sees a complete run: every file it lists was written before it.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from pgmeta_shared.events import ExtractionProgress, PublishCompleted, PublishRequested, Stage, TopicName
from pgmeta_shared.platform import Platform

log = logging.getLogger(__name__)

STAGE = Stage.PUBLISH.value
OBJECTSTORE_BINDING = "objectstore"


def result_key(run_id: str) -> str:
    return f"{run_id}/{STAGE}/result"


def run_prefix(connection_qn: str, run_id: str) -> str:
    return f"{connection_qn}/{run_id}"


def render_jsonl(entities: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(entity) + b"\n" for entity in entities)


def publish(event: PublishRequested, platform: Platform) -> PublishCompleted:
    recorded = platform.get_json(result_key(event.run_id))
    if recorded is not None:
        return PublishCompleted.model_validate(recorded)
    prefix = run_prefix(event.connection_qualified_name, event.run_id)
    started = datetime.now(UTC).isoformat()
    files: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    for index in range(event.chunk_count):
        entities = platform.load_chunk(event.run_id, Stage.TRANSFORM.value, index)
        by_type: dict[str, list[dict[str, Any]]] = {}
        for entity in entities:
            by_type.setdefault(entity["typeName"], []).append(entity)
        # Same names on redelivery: a rewrite replaces, it never adds a second copy.
        for type_name, group in sorted(by_type.items()):
            name = f"{type_name}-{index:05d}.jsonl"
            content = render_jsonl(group)
            platform.write_object(OBJECTSTORE_BINDING, f"{prefix}/{name}", content)
            files.append(
                {
                    "name": name,
                    "type": type_name,
                    "entities": len(group),
                    "bytes": len(content),
                    "sha256": hashlib.sha256(content).hexdigest(),
                }
            )
            counts[type_name] = counts.get(type_name, 0) + len(group)
        platform.publish(
            TopicName.EXTRACTION_PROGRESS,
            ExtractionProgress(
                run_id=event.run_id,
                stage=Stage.PUBLISH,
                done=index + 1,
                total=event.chunk_count,
                unit="chunks",
            ),
        )
    manifest = {
        "run_id": event.run_id,
        "connection_qualified_name": event.connection_qualified_name,
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "counts": counts,
        "files": files,
    }
    platform.write_object(
        OBJECTSTORE_BINDING, f"{prefix}/manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
    )
    completed = PublishCompleted(run_id=event.run_id, location=prefix, file_count=len(files), counts=counts)
    platform.save_json(result_key(event.run_id), completed.model_dump(mode="json"))
    return completed
