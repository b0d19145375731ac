"""The transform stage: every raw chunk of a unit becomes one entity chunk (same index: redelivery overwrites).

Chunks may be transformed early, as the extractor announces them (``extract.chunk_ready``); the unit's
command from the workflow then finds those chunks done (per-chunk markers) and does the rest.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel, ConfigDict

from pgmeta_shared.chunkthread import ChunkThread
from pgmeta_shared.events import (
    ChunkReady,
    ExtractionProgress,
    Stage,
    TopicName,
    TransformCompleted,
    TransformRequested,
)
from pgmeta_shared.keys import (
    ArtifactStage,
    PartName,
    chunk_done_key,
    extract_chunk_unit,
    stage_report_key,
    stage_result_key,
)
from pgmeta_shared.platform import Platform
from pgmeta_shared.progress import ProgressReporter
from pgmeta_shared.stages import once_per_chunk
from pgmeta_transformer.atlas import render_chunk

log = logging.getLogger(__name__)

# One chunk at a time per process: several at once would only share the same two cores and multiply memory.
# On a thread of its own, so that a chunk's freed memory is reused by the next chunk (see ChunkThread).
_chunk_thread = ChunkThread("transform-chunk")


class TransformedChunk(BaseModel):
    """The marker of one transformed chunk: lines per type (and per extra kind) and the problems met."""

    model_config = ConfigDict(frozen=True)

    counts: dict[str, int]
    problems: list[dict[str, str]]


def transform_chunk(
    platform: Platform, run_id: str, connection_qn: str, unit: str, generation: int, index: int
) -> TransformedChunk:
    """Transforms one chunk of one extraction attempt once; returns its counts and problems (recorded)."""
    # Every key carries the extraction attempt: a retried extraction's chunks are other chunks.
    chunk_unit = extract_chunk_unit(unit, generation)
    done_key = chunk_done_key(run_id, Stage.TRANSFORM, chunk_unit, index)

    def work() -> TransformedChunk:
        records = platform.load_chunk(run_id, Stage.EXTRACT, chunk_unit, index)
        problems: list[dict[str, str]] = []
        parts, fingerprints = render_chunk(connection_qn, records, problems)
        platform.save_chunk(run_id, ArtifactStage.FINGERPRINT, chunk_unit, index, fingerprints)
        platform.save_parts(run_id, Stage.TRANSFORM, chunk_unit, index, parts)
        counts: dict[str, int] = {}
        for name, blob in parts.items():
            key = PartName.parse(name).count_key
            counts[key] = counts.get(key, 0) + blob.count(b"\n")
        return TransformedChunk(counts=counts, problems=problems)

    done = _chunk_thread.run(lambda: once_per_chunk(platform, done_key, TransformedChunk, work))
    platform.publish(
        TopicName.TRANSFORM_CHUNK_READY,
        ChunkReady(
            run_id=run_id, unit=unit, generation=generation, index=index, connection_qualified_name=connection_qn
        ),
    )
    return done


def transform_early(event: ChunkReady, platform: Platform) -> None:
    """``extract.chunk_ready``: start on a chunk while the extractor is still reading the next ones.

    A failure here is only logged: the unit's command does the chunk again and reports properly.
    """
    try:
        transform_chunk(
            platform, event.run_id, event.connection_qualified_name, event.unit, event.generation, event.index
        )
    except Exception:
        log.warning(
            "run %s: early transform of %s/%d failed; the unit's command will redo it",
            event.run_id,
            event.unit,
            event.index,
            exc_info=True,
        )


def transform(command: TransformRequested, platform: Platform) -> TransformCompleted:
    result_key = stage_result_key(command.run_id, Stage.TRANSFORM, command.unit)
    recorded = platform.get_json(result_key)
    if recorded is not None:
        return TransformCompleted.model_validate(recorded)
    counts: dict[str, int] = {}
    problems: list[dict[str, str]] = []
    progress = ProgressReporter(platform)
    for index in range(command.chunk_count):
        done = transform_chunk(
            platform, command.run_id, command.connection_qualified_name, command.unit, command.generation, index
        )
        for key, value in done.counts.items():
            counts[key] = counts.get(key, 0) + value
        problems += done.problems
        progress.report(
            ExtractionProgress(
                run_id=command.run_id,
                stage=Stage.TRANSFORM,
                done=index + 1,
                total=command.chunk_count,
                measure="chunks",
                work_unit=command.unit,
            )
        )
    platform.save_json(stage_report_key(command.run_id, Stage.TRANSFORM, command.unit), problems)
    completed = TransformCompleted(
        run_id=command.run_id,
        unit=command.unit,
        chunk_count=command.chunk_count,
        counts=counts,
        problems=len(problems),
    )
    platform.save_json(result_key, completed.model_dump(mode="json"))
    return completed
