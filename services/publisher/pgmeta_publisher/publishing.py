"""The publish stage: entities to ``<connection>/<run_id>/`` in the object store (and to Atlan when configured).

Layout (docs/output.md): ``<Type>-<unit>-<chunk>[-<part>].jsonl.zst`` entity files (a full snapshot every run),
``changes-<part>.jsonl.zst`` (each entity created / updated / unchanged since the previous successful run of the
connection), ``deleted-<part>.jsonl.zst``, ``extras/…`` (constraints, indexes), ``report.json``, and
``manifest.json`` written last: a reader that sees the manifest sees a complete run. Every file is written
in parts small enough for Dapr's body limit; nothing is truncated.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
from more_itertools import constrained_batches
from pydantic import BaseModel, ConfigDict

from pgmeta_publisher.incremental import (
    Changes,
    FoldedChunk,
    Scope,
    compare,
    created_lines,
    fold_chunk,
    forget_run,
    index_folds,
    load_index,
)
from pgmeta_shared.errors import ArtifactMissingError
from pgmeta_shared.events import ChunkReady, ExtractionProgress, PublishCompleted, PublishRequested, Stage
from pgmeta_shared.fencing import RunState, claim_commit, run_state
from pgmeta_shared.fingerprints import Fingerprint, FingerprintIndex, ScopeFingerprints
from pgmeta_shared.keys import (
    OBJECTSTORE_BINDING,
    ArtifactStage,
    PartName,
    baseline_scopes_key,
    chunk_done_key,
    entity_part,
    extract_chunk_unit,
    extract_scopes_key,
    fingerprint_parts_key,
    scope_id,
    snapshot_key,
    stage_report_key,
    stage_result_key,
)
from pgmeta_shared.outputfiles import ZSTD, ZSTD_SUFFIX, compress
from pgmeta_shared.platform import NO_TTL, Platform
from pgmeta_shared.prefetch import prefetched
from pgmeta_shared.progress import ProgressReporter
from pgmeta_shared.scopes import INCREMENTAL_FORMAT, Baseline, ScopeFiles, ScopeIndex, ScopePlan, request_scope
from pgmeta_shared.stages import once_per_chunk

log = logging.getLogger(__name__)

REPORT_STAGES = (Stage.EXTRACT, Stage.TRANSFORM)
MAX_FILE_PART_BYTES = 2 * 1024 * 1024  # stored bytes per file: well under Dapr's default 4 MiB body limit
# Lines a change list collects before it is compressed and written (about 100 bytes a line).
SPOOL_BYTES = 8 * 1024 * 1024
WRITERS = 4  # concurrent writes to the object store
# One chunk at a time per process: several at once would only share the same two cores and multiply memory.
_chunk_slot = threading.Lock()


class BatchReport(Protocol):
    def to_report(self) -> dict[str, Any]: ...


class EntitySink(Protocol):
    """Somewhere besides the object store that gets created/updated entities and archives deleted ones."""

    def upsert(self, entities: Iterable[dict[str, Any]]) -> Sequence[BatchReport]: ...

    def archive(self, references: Iterable[tuple[str, str]]) -> Sequence[BatchReport]: ...


def run_prefix(connection_qn: str, run_id: str) -> str:
    return f"{connection_qn}/{run_id}"


class RunWriter:
    """Writes a run's files (several at a time: each write is a round trip to the sidecar) and lists them."""

    def __init__(self, platform: Platform, prefix: str, pool: ThreadPoolExecutor) -> None:
        self.platform = platform
        self.prefix = prefix
        self.files: list[dict[str, Any]] = []
        self._pool = pool
        self._pending: list[Future[None]] = []

    def write(self, name: str, content: bytes, **facts: Any) -> None:
        # The same names on redelivery: a rewrite replaces, it never adds a second copy.
        self.files.append({"name": name, **facts, "bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()})
        self._submit(f"{self.prefix}/{name}", content)

    def _submit(self, path: str, content: bytes) -> None:
        # In the caller's context, so each write's spans and log lines stay in the run's trace.
        self._pending.append(
            self._pool.submit(
                contextvars.copy_context().run, self.platform.write_object, OBJECTSTORE_BINDING, path, content
            )
        )
        if len(self._pending) >= 2 * WRITERS:
            self._pending.pop(0).result()

    def refer(self, entry: dict[str, Any], folder: str) -> None:
        """Another run's file, listed as its manifest listed it, with the folder that holds it (not copied)."""
        self.files.append({**entry, "folder": folder})

    def write_lines(self, stem: str, blob: bytes, **facts: Any) -> None:
        """``<stem>.jsonl.zst``, or ``<stem>-<part>.jsonl.zst`` parts when it would not fit one request.

        A fact given as None is counted from the lines of each part (entities, records).
        """
        pieces = compressed_pieces(blob)
        for part, (piece, stored) in enumerate(pieces):
            name = f"{stem}.jsonl{ZSTD_SUFFIX}" if len(pieces) == 1 else f"{stem}-{part:02d}.jsonl{ZSTD_SUFFIX}"
            counted = {k: (piece.count(b"\n") if v is None else v) for k, v in facts.items()}
            self.write(name, stored, encoding=ZSTD, **counted)

    def wait(self) -> None:
        """Every file written (raises the first failure)."""
        while self._pending:
            self._pending.pop(0).result()


def compressed_pieces(blob: bytes) -> list[tuple[bytes, bytes]]:
    """(JSON Lines, compressed) pieces of ``blob``, split at line ends so that each compressed piece fits a request."""
    stored = compress(blob)
    if len(stored) <= MAX_FILE_PART_BYTES or blob.count(b"\n") <= 1:
        return [(blob, stored)]
    target = max(1, len(blob) * MAX_FILE_PART_BYTES // (2 * len(stored)))  # half the limit: room for variance
    pieces: list[tuple[bytes, bytes]] = []
    for lines in constrained_batches(blob.splitlines(keepends=True), target, strict=False):
        pieces += compressed_pieces(b"".join(lines))
    return pieces


class LineSpool:
    """Accumulates JSON lines and writes them in numbered parts as they fill (bounded memory)."""

    def __init__(self, writer: RunWriter, stem: str) -> None:
        self.writer = writer
        self.stem = stem
        self.lines: list[bytes] = []
        self.size = 0
        self.parts = 0

    def add(self, item: dict[str, Any]) -> None:
        line = orjson.dumps(item) + b"\n"
        if self.lines and self.size + len(line) > SPOOL_BYTES:
            self.flush()
        self.lines.append(line)
        self.size += len(line)

    def add_lines(self, blob: bytes) -> None:
        """JSON Lines already serialized (each line ends with a newline)."""
        if self.lines and self.size + len(blob) > SPOOL_BYTES:
            self.flush()
        self.lines.append(blob)
        self.size += len(blob)

    def flush(self) -> None:
        if self.lines:
            for piece, stored in compressed_pieces(b"".join(self.lines)):
                name = f"{self.stem}-{self.parts:05d}.jsonl{ZSTD_SUFFIX}"
                self.writer.write(name, stored, encoding=ZSTD, lines=piece.count(b"\n"))
                self.parts += 1
            self.lines, self.size = [], 0


class PublishedChunk(BaseModel):
    """The marker of one published chunk: the files written (as the manifest lists them), entities per type,
    and its fingerprints as stored by scope (None in a marker written before chunks were folded)."""

    model_config = ConfigDict(frozen=True)

    files: list[dict[str, Any]]
    counts: dict[str, int]
    fingerprints: FoldedChunk | None = None


def publish_chunk(
    platform: Platform,
    run_id: str,
    connection_qn: str,
    unit: str,
    generation: int,
    index: int,
    recorded: Any | None = None,
) -> PublishedChunk:
    """Writes one transformed chunk's files once; returns the files and counts (recorded, so a repeat is free).

    ``recorded``: the chunk's marker as the caller already read it (None: not read, or not there then)."""
    if recorded is not None:
        return PublishedChunk.model_validate(recorded)
    chunk_unit = extract_chunk_unit(unit, generation)
    done_key = chunk_done_key(run_id, Stage.PUBLISH, chunk_unit, index)

    def work() -> PublishedChunk:
        rendered = platform.load_parts(run_id, Stage.TRANSFORM, chunk_unit, index)
        counts: dict[str, int] = {}
        with ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="pgmeta-write") as pool:
            writer = RunWriter(platform, run_prefix(connection_qn, run_id), pool)
            for part_name, blob in rendered.items():
                part = PartName.parse(part_name)
                # File names carry the unit, not the attempt: a reader sees one set of names per run. A schema's
                # lines have files of their own (named by a token of the schema), which a later run may copy.
                stem = f"{part.name}-{unit}-{index:05d}" + ("" if part.schema is None else f"-{scope_id(part.schema)}")
                scope = {} if part.schema is None else {"schema": part.schema}
                if part.kind == "entity":
                    writer.write_lines(stem, blob, type=part.name, **scope, entities=None)
                    counts[part.name] = counts.get(part.name, 0) + blob.count(b"\n")
                else:
                    writer.write_lines(f"extras/{stem}", blob, extra=part.name, **scope, records=None)
            writer.wait()
        # Regrouped by scope now, while the transformer is still busy, so the publish stage does not.
        folded = fold_chunk(platform, run_id, chunk_unit, index, first_run=not has_baseline(platform, connection_qn))
        return PublishedChunk(files=writer.files, counts=counts, fingerprints=folded)

    with _chunk_slot:
        return once_per_chunk(platform, done_key, PublishedChunk, work)


def has_baseline(platform: Platform, connection_qn: str) -> bool:
    """Whether the connection has a successful run to compare with (as things stand now: the publish stage
    reads the baseline again, and compares without the chunks' "created" lines if one appeared meanwhile)."""
    return platform.get_json(snapshot_key(connection_qn)) is not None


def publish_early(event: ChunkReady, platform: Platform) -> None:
    """``transform.chunk_ready``: write a chunk's files while later chunks are still being transformed.

    Only the run's manifest makes the files visible as a run, and it is written by ``publish`` at the end;
    a failure here is logged and the chunk is written again then.
    """
    try:
        publish_chunk(
            platform, event.run_id, event.connection_qualified_name, event.unit, event.generation, event.index
        )
    except Exception:
        log.warning(
            "run %s: early publish of %s/%d failed; publish will redo it",
            event.run_id,
            event.unit,
            event.index,
            exc_info=True,
        )


def publish(command: PublishRequested, platform: Platform, sink: EntitySink | None = None) -> PublishCompleted:
    recorded = platform.get_json(stage_result_key(command.run_id, Stage.PUBLISH))
    if recorded is not None:
        completed = PublishCompleted.model_validate(recorded)
        if run_state(platform, command.run_id) is RunState.COMMITTING:  # a crash came between the two writes
            current = platform.get_json(snapshot_key(command.connection_qualified_name))
            if current is None or current.get("run_id") != command.run_id:
                _advance_snapshot(platform, command, scope_plans(platform, command))
        return completed
    started = datetime.now(UTC).isoformat()
    with ThreadPoolExecutor(max_workers=WRITERS, thread_name_prefix="pgmeta-write") as pool:
        return _publish(command, platform, sink, started, pool)


def _publish(
    command: PublishRequested, platform: Platform, sink: EntitySink | None, started: str, pool: ThreadPoolExecutor
) -> PublishCompleted:
    writer = RunWriter(platform, run_prefix(command.connection_qualified_name, command.run_id), pool)
    inputs = read_inputs(platform, command)

    # 1. The full snapshot: every chunk's files (most already written early, as the transformer finished them).
    counts: dict[str, int] = {}
    folds: list[FoldedChunk] = []
    total = sum(unit.chunk_count for unit in command.units)
    done = 0
    progress = ProgressReporter(platform)
    for unit in command.units:
        for index in range(unit.chunk_count):
            chunk = publish_chunk(
                platform,
                command.run_id,
                command.connection_qualified_name,
                unit.unit,
                unit.generation,
                index,
                inputs.markers.get((unit.unit, index)),
            )
            writer.files += chunk.files
            chunk_unit = extract_chunk_unit(unit.unit, unit.generation)
            # A marker from before chunks were folded: folded now (the fold is idempotent).
            folds.append(chunk.fingerprints or fold_chunk(platform, command.run_id, chunk_unit, index, first_run=False))
            for name, count in chunk.counts.items():
                counts[name] = counts.get(name, 0) + count
            done += 1
            progress.report(
                ExtractionProgress(run_id=command.run_id, stage=Stage.PUBLISH, done=done, total=total, measure="chunks")
            )

    # 2. Schemas the extractor found unchanged: the baseline's files, referred to where they are. Their indexes
    # and the connection's snapshot are read in one round trip — the snapshot now, after the chunks, not at the
    # start: an overlapping run of the connection may have moved it meanwhile, and the window stays as short.
    plans = inputs.plans
    snapshot = snapshot_key(command.connection_qualified_name)
    baseline_reads = platform.get_json_many([*carried_index_keys(plans), snapshot])
    carried = carry_over(command, plans, writer, baseline_reads)
    for name, count in carried.counts.items():
        counts[name] = counts.get(name, 0) + count

    # 3. Compare with the previous successful run of this connection, scope by scope (carried schemas are not
    # compared: they are unchanged, and this run's fingerprint index refers to the parts that hold them).
    own = index_folds(platform, command.run_id, folds)
    previous, previous_index = current_baseline(platform, command, baseline_reads[snapshot])
    fingerprint_index = FingerprintIndex(own + carried_fingerprints(platform, plans, previous_index))
    spools = {"change": LineSpool(writer, "changes"), "deleted": LineSpool(writer, "deleted")}
    deleted: list[tuple[str, str]] = []

    def emit(kind: str, line: dict[str, Any]) -> None:
        spools[kind].add(line)
        if kind == "deleted" and sink is not None:
            deleted.append((line["typeName"], line["qualifiedName"]))

    if previous_index is None and all(fold.created_lines for fold in folds):
        # Nothing to compare with: every entity is created, its change line was written with its chunk.
        changes = first_run_changes(platform, command, folds, carried.unchanged, spools["change"])
    else:
        changes = compare(
            platform,
            own,
            previous_index,
            Scope(command.filters, command.database),
            emit,
            sink is not None,
            carried.unchanged,
        )
    for spool in spools.values():
        spool.flush()
    platform.save_json(fingerprint_parts_key(command.run_id), fingerprint_index.to_json(), ttl_seconds=NO_TTL)

    # 4. When a tenant is configured: created and updated entities to it, deleted ones archived.
    sink_results: list[dict[str, Any]] = []
    if sink is not None:
        claim_commit(platform, command.run_id)  # nothing goes to Atlan for a run that ended
        for unit in command.units:
            chunk_unit = extract_chunk_unit(unit.unit, unit.generation)
            for index in range(unit.chunk_count):
                rendered = platform.load_parts(command.run_id, Stage.TRANSFORM, chunk_unit, index)
                rows = platform.load_chunk(command.run_id, ArtifactStage.FINGERPRINT, chunk_unit, index)
                fingerprints = [Fingerprint.from_row(row) for row in rows]
                sink_results += _send_changes(sink, rendered, fingerprints, changes.changed)
        if deleted:
            sink_results += [r.to_report() for r in sink.archive(deleted)]

    # 5. Report, then the manifest, last — only if the run has not ended meanwhile (fencing.claim_commit).
    claim_commit(platform, command.run_id)
    problems = collect_report(command, inputs.reports)
    writer.write(
        "report.json",
        orjson.dumps({"problems": problems, "atlan": sink_results}, option=orjson.OPT_INDENT_2),
        problems=len(problems),
    )
    change_totals = {kind: changes.total(kind) for kind in ("created", "updated", "unchanged", "deleted")}
    manifest = {
        "run_id": command.run_id,
        "connection_qualified_name": command.connection_qualified_name,
        "previous_run_id": previous["run_id"] if previous else None,
        "started_at": started,
        "finished_at": datetime.now(UTC).isoformat(),
        "counts": counts,
        "changes": change_totals,
        "changes_by_type": changes.counts,
        "problems": len(problems),
        "schemas": schema_totals(plans),
        "files": writer.files,
    }
    writer.wait()  # every file is in place before the manifest that lists them
    platform.write_object(
        OBJECTSTORE_BINDING, f"{writer.prefix}/manifest.json", orjson.dumps(manifest, option=orjson.OPT_INDENT_2)
    )
    completed = PublishCompleted(
        run_id=command.run_id,
        location=writer.prefix,
        file_count=len(writer.files),
        counts=counts,
        problems=len(problems),
        changes=change_totals,
    )
    # What the next run may carry over: written before the snapshot names this run as the baseline.
    save_scope_indexes(platform, command, plans, writer.files, problems)
    platform.save_json(stage_result_key(command.run_id, Stage.PUBLISH), completed.model_dump(mode="json"))
    claim_commit(platform, command.run_id)  # a run that ended during the last writes never becomes the baseline
    _advance_snapshot(platform, command, plans, previous, fingerprint_index, baseline_reads)
    return completed


def first_run_changes(
    platform: Platform,
    command: PublishRequested,
    folds: list[FoldedChunk],
    carried: dict[tuple[str, str], dict[str, int]],
    spool: LineSpool,
) -> Changes:
    """The changes of a run without a baseline: counted from the folded chunks, the change lines as each chunk
    stored them (no fingerprint is read). ``Changes.changed`` is None: everything is new."""
    changes = Changes(changed=None)
    for (database, schema), per_type in carried.items():  # a baseline planned on that is gone now
        for type_name, count in per_type.items():
            changes.add_unchanged(database, schema, type_name, count)
    for fold in folds:
        for type_name, count in fold.types.items():
            changes.add(type_name, "created", count)
    chunks = [
        (extract_chunk_unit(unit.unit, unit.generation), index)
        for unit in command.units
        for index in range(unit.chunk_count)
    ]
    for blob in prefetched([functools.partial(created_lines, platform, command.run_id, *chunk) for chunk in chunks]):
        spool.add_lines(blob)
    for line in changes.unchanged_lines():
        spool.add(line)
    return changes


def _send_changes(
    sink: EntitySink, parts: dict[str, bytes], fingerprints: list[Fingerprint], changed: set[str] | None
) -> list[dict[str, Any]]:
    """Created and updated entities of one chunk to the sink; a Connection on its own, first (Atlan wants it
    to exist before anything under it). Lines and fingerprints of a part (type and schema) are in the same order."""
    by_part: dict[str, list[Fingerprint]] = {}
    for record in fingerprints:
        by_part.setdefault(entity_part(record.type_name, record.schema), []).append(record)
    connections: list[dict[str, Any]] = []
    others: list[dict[str, Any]] = []
    for part, records in by_part.items():
        lines = parts[part].splitlines()
        for record, line in zip(records, lines, strict=True):
            if changed is None or record.qualified_name in changed:
                (connections if record.type_name == "Connection" else others).append(orjson.loads(line))
    results: list[dict[str, Any]] = []
    for group in (connections, others):
        if group:
            results += [r.to_report() for r in sink.upsert(group)]
    return results


def _advance_snapshot(
    platform: Platform,
    command: PublishRequested,
    plans: list[ScopePlan],
    previous: dict[str, Any] | None = None,
    index: FingerprintIndex | None = None,
    known: dict[str, Any | None] | None = None,
) -> None:
    """This run becomes the baseline of the next one; the superseded baseline's fingerprints (those this run's
    ``index`` does not refer to) and scopes go. ``known`` (entries by key): what this stage has read already,
    not read again."""
    baseline = Baseline(
        run_id=command.run_id,
        at=datetime.now(UTC).isoformat(),
        format=INCREMENTAL_FORMAT,
        scope=request_scope(command.filters, command.database),
        databases=[plan.database for plan in plans],
    )
    platform.save_json(
        snapshot_key(command.connection_qualified_name), baseline.model_dump(mode="json"), ttl_seconds=NO_TTL
    )
    if previous is not None:
        known = known or {}
        forget_run(platform, previous["run_id"], index)
        # Not deleted yet: a run of the same connection planned on the superseded baseline may still be
        # publishing, and lists its carried schemas' files from there. They expire with the run artifacts
        # (the default TTL), as that run's own chunks do: written again with it (a carried database's entry
        # as this stage read it, unchanged since: a run's entry is written once, by its publish).
        superseded = [baseline_scopes_key(previous["run_id"], db) for db in Baseline.model_validate(previous).databases]
        unread = [key for key in superseded if known.get(key) is None]
        stored = {**known, **(platform.get_json_many(unread) if unread else {})}
        for key in superseded:
            if stored.get(key) is not None:
                platform.save_json(key, stored[key])


# -- incremental runs: schemas carried over from the baseline ------------------------------------------------


@dataclass(frozen=True)
class StageInputs:
    """What the publish stage reads in every run, read together at its start: one round trip to the sidecar,
    not one per key. All of it was written before the stage was commanded (the stages before it are done)."""

    markers: dict[tuple[str, int], Any | None]  # (unit, chunk) → its PublishedChunk marker, if published early
    plans: list[ScopePlan]  # the extractor's plan of every database unit (the server unit has none)
    reports: dict[tuple[str, Stage], Any | None]  # (unit, stage) → the problems the stage recorded


def read_inputs(platform: Platform, command: PublishRequested) -> StageInputs:
    run_id = command.run_id
    marker_keys = {
        (unit.unit, index): chunk_done_key(run_id, Stage.PUBLISH, extract_chunk_unit(unit.unit, unit.generation), index)
        for unit in command.units
        for index in range(unit.chunk_count)
    }
    plan_keys = [extract_scopes_key(run_id, unit.unit) for unit in command.units]
    report_keys = {
        (unit.unit, stage): stage_report_key(run_id, stage, unit.unit)
        for unit in command.units
        for stage in REPORT_STAGES
    }
    stored = platform.get_json_many([*marker_keys.values(), *plan_keys, *report_keys.values()])
    return StageInputs(
        markers={chunk: stored[key] for chunk, key in marker_keys.items()},
        plans=[ScopePlan.model_validate(stored[key]) for key in plan_keys if stored[key] is not None],
        reports={unit_stage: stored[key] for unit_stage, key in report_keys.items()},
    )


def scope_plans(platform: Platform, command: PublishRequested) -> list[ScopePlan]:
    """The extractor's plan of every database unit (the server unit has none)."""
    stored = platform.get_json_many([extract_scopes_key(command.run_id, unit.unit) for unit in command.units])
    return [ScopePlan.model_validate(value) for value in stored.values() if value is not None]


@dataclass
class CarriedOver:
    """What came from the baseline: entities per type, and per carried (database, schema) scope."""

    counts: dict[str, int] = field(default_factory=dict)
    unchanged: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)


def carried_index_keys(plans: list[ScopePlan]) -> list[str]:
    """The schema indexes ``carry_over`` reads: the planned-on run's, of each database that carries schemas."""
    return [
        baseline_scopes_key(plan.baseline_run_id, plan.database)
        for plan in plans
        if plan.carried and plan.baseline_run_id is not None
    ]


def carry_over(
    command: PublishRequested,
    plans: list[ScopePlan],
    writer: RunWriter,
    stored: dict[str, Any | None],
) -> CarriedOver:
    """Lists the carried schemas' files where they are: in the folder of the run that last read the schema (the
    baseline's, or the one the baseline's manifest names). Nothing is read or copied; retention keeps a folder
    while a kept run's manifest refers to it. ``stored``: the entries of ``carried_index_keys``, as read."""
    carried = CarriedOver()
    for plan in plans:
        if not plan.carried:
            continue
        baseline_run = plan.baseline_run_id
        if baseline_run is None:
            raise ArtifactMissingError(f"run {command.run_id}: database {plan.database!r} carries schemas from no run")
        # The run planned on may have been superseded meanwhile by another run of the connection (runs of one
        # connection may overlap): its schemas stay until the run artifacts' TTL, and its files until retention.
        scopes = stored.get(baseline_scopes_key(baseline_run, plan.database))
        if scopes is None:
            raise ArtifactMissingError(
                f"the baseline's schemas of database {plan.database!r} (run {baseline_run}) are gone: run again, "
                "or with --full"
            )
        index = ScopeIndex.model_validate(scopes)
        source = run_prefix(command.connection_qualified_name, baseline_run)
        for schema in plan.carried:
            scope = index.schemas[schema]
            for entry in scope.files:
                writer.refer(entry, entry.get("folder") or source)
            for name, count in scope.counts.items():
                carried.counts[name] = carried.counts.get(name, 0) + count
            carried.unchanged[(plan.database, schema)] = dict(scope.counts)
    return carried


BASELINE_READS = 5


def current_baseline(
    platform: Platform, command: PublishRequested, snapshot: dict[str, Any] | None
) -> tuple[dict[str, Any] | None, FingerprintIndex | None]:
    """The connection's snapshot and its fingerprint index, read together. Runs of one connection may overlap:
    between reading the snapshot and its index, another run may have superseded it and forgotten its index;
    the snapshot is then read again (the newer one's index exists before the snapshot names it).

    ``snapshot``: the first attempt's, as already read."""
    previous: dict[str, Any] | None = snapshot
    for attempt in range(BASELINE_READS):
        if attempt:
            previous = platform.get_json(snapshot_key(command.connection_qualified_name))
        if previous is None or previous.get("run_id") == command.run_id:
            return None, None
        index = load_index(platform, previous["run_id"])
        if index is not None:
            return previous, index
    log.warning("run %s: the baseline's fingerprints are gone (runs overlapping): compared with none", command.run_id)
    return previous, None


def carried_fingerprints(
    platform: Platform, plans: list[ScopePlan], previous: FingerprintIndex | None
) -> list[ScopeFingerprints]:
    """The fingerprint parts of every carried schema, as the baseline's index names them (nothing is read or
    copied). The baseline is the connection's snapshot now; a schema it lacks (a run of the connection that
    overlapped this one superseded the baseline this run planned on) is looked up in the planned-on run's index."""
    references: list[ScopeFingerprints] = []
    current = previous.by_scope() if previous is not None else {}
    planned_on: dict[str, dict[tuple[str | None, str | None], ScopeFingerprints]] = {}
    for plan in plans:
        for schema in plan.carried:
            entry = current.get((plan.database, schema))
            if entry is None and plan.baseline_run_id is not None:
                if plan.baseline_run_id not in planned_on:
                    stored = load_index(platform, plan.baseline_run_id)
                    planned_on[plan.baseline_run_id] = stored.by_scope() if stored is not None else {}
                entry = planned_on[plan.baseline_run_id].get((plan.database, schema))
            if entry is None:
                raise ArtifactMissingError(
                    f"the fingerprints of schema {schema!r} of database {plan.database!r} (run "
                    f"{plan.baseline_run_id}) are gone: run again, or with --full"
                )
            references.append(entry)
    return references


def schema_totals(plans: list[ScopePlan]) -> dict[str, int]:
    return {
        "extracted": sum(len(plan.extracted) for plan in plans),
        "skipped": sum(len(plan.carried) for plan in plans),
    }


def save_scope_indexes(
    platform: Platform,
    command: PublishRequested,
    plans: list[ScopePlan],
    files: list[dict[str, Any]],
    problems: list[dict[str, str]],
) -> None:
    """Each database's schemas with their files and fingerprints, for the next run. A unit with problems in
    the run report leaves no schemas: what it published may be incomplete, so the next run reads it again."""
    troubled = {problem["unit"] for problem in problems}
    by_schema: dict[str, list[dict[str, Any]]] = {}
    for entry in files:
        if "schema" in entry:
            by_schema.setdefault(entry["schema"], []).append(entry)
    for plan in plans:
        schemas: dict[str, ScopeFiles] = {}
        if plan.unit not in troubled:
            unit_token = f"-{plan.unit}-"  # file names are <Type>-<unit>-<chunk>-<schema token>
            for schema, fingerprint in plan.fingerprints.items():
                # As the manifest lists them: a file carried over keeps the folder that holds it.
                own = [entry for entry in by_schema.get(schema, []) if unit_token in entry["name"]]
                counts: dict[str, int] = {}
                for entry in own:
                    if "type" in entry:
                        counts[entry["type"]] = counts.get(entry["type"], 0) + entry["entities"]
                schemas[schema] = ScopeFiles(fingerprint=fingerprint, files=own, counts=counts)
        index = ScopeIndex(database=plan.database, unit=plan.unit, schemas=schemas)
        platform.save_json(
            baseline_scopes_key(command.run_id, plan.database), index.model_dump(mode="json"), ttl_seconds=NO_TTL
        )


def collect_report(command: PublishRequested, reports: dict[tuple[str, Stage], Any | None]) -> list[dict[str, str]]:
    """The run report: per-object problems every stage recorded (``StageInputs.reports``), in unit order."""
    problems: list[dict[str, str]] = []
    for unit in command.units:
        for stage in REPORT_STAGES:
            for problem in reports.get((unit.unit, stage)) or []:
                problems.append({"stage": stage.value, "unit": unit.unit, **problem})
    return problems
