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

OBJECTSTORE_BINDING = "objectstore"
REPORT_STAGES = (Stage.EXTRACT, Stage.TRANSFORM)


def result_key(run_id: str) -> str:
    return f"{run_id}/{Stage.PUBLISH.value}/result"


def run_prefix(connection_qn: str, run_id: str) -> str:
    return f"{connection_qn}/{run_id}"


def render_jsonl(items: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def publish(command: PublishRequested, platform: Platform) -> PublishCompleted:
    recorded = platform.get_json(result_key(command.run_id))
    if recorded is not None:
        return PublishCompleted.model_validate(recorded)
    prefix = run_prefix(command.connection_qualified_name, command.run_id)
    started = datetime.now(UTC).isoformat()
    files: list[dict[str, Any]] = []
    counts: dict[str, int] = {}

    def write(name: str, content: bytes, **facts: Any) -> None:
        # Same names on redelivery: a rewrite replaces, it never adds a second copy.
        platform.write_object(OBJECTSTORE_BINDING, f"{prefix}/{name}", content)
        files.append({"name": name, **facts, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()})

    total = sum(unit.chunk_count for unit in command.units)
    done = 0
    for unit in command.units:
        for index in range(unit.chunk_count):
            items = platform.load_chunk(command.run_id, Stage.TRANSFORM.value, unit.unit, index)
            groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for item in items:
                key = ("entity", item["typeName"]) if "typeName" in item else ("extra", item["extra"])
                groups.setdefault(key, []).append(item)
            for (kind, name), members in sorted(groups.items()):
                if kind == "entity":
                    write(f"{name}-{unit.unit}-{index:05d}.jsonl", render_jsonl(members), type=name,
                          entities=len(members))  # fmt: skip
                    counts[name] = counts.get(name, 0) + len(members)
                else:
                    extras = [{k: v for k, v in item.items() if k != "extra"} for item in members]
                    write(f"extras/{name}-{unit.unit}-{index:05d}.jsonl", render_jsonl(extras), extra=name,
                          records=len(members))  # fmt: skip
            done += 1
            platform.publish(
                TopicName.EXTRACTION_PROGRESS,
                ExtractionProgress(
                    run_id=command.run_id, stage=Stage.PUBLISH, done=done, total=total, measure="chunks"
                ),
            )
    problems = collect_report(command, platform)
    write("report.json", orjson.dumps({"problems": problems}, option=orjson.OPT_INDENT_2), problems=len(problems))
    manifest = {
        "run_id": command.run_id,
        "connection_qualified_name": command.connection_qualified_name,
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "counts": counts,
        "problems": len(problems),
        "files": files,
    }
    platform.write_object(
        OBJECTSTORE_BINDING, f"{prefix}/manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
    )
    completed = PublishCompleted(
        run_id=command.run_id, location=prefix, file_count=len(files), counts=counts, problems=len(problems)
    )
    platform.save_json(result_key(command.run_id), completed.model_dump(mode="json"))
    return completed


def collect_report(command: PublishRequested, platform: Platform) -> list[dict[str, str]]:
    """The run report: per-object problems every stage recorded, in unit order."""
    problems: list[dict[str, str]] = []
    for unit in command.units:
        for stage in REPORT_STAGES:
            for problem in platform.get_json(f"{command.run_id}/report/{stage.value}/{unit.unit}") or []:
                problems.append({"stage": stage.value, "unit": unit.unit, **problem})
    return problems
