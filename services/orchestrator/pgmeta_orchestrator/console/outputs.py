"""Published runs read back for the console: files through the objectstore binding, a per-run entity index.

The publisher writes each run under ``<connection_qn>/<run_id>/`` (docs/output.md). The console reads those
files through the same Dapr binding (``get``: bindings.localstorage locally, bindings.aws.s3 in the cluster),
so it works wherever the orchestrator's sidecar can reach the output, and never from a local path.

Searching a 10,000-table run (~220,000 entities) on every keystroke cannot re-read its files, so the first
access to a run builds a compact SQLite index of it (one row per entity: type, name, qualifiedName, parent,
a content hash and where its line is) in a local cache directory. Why SQLite in a local directory, not the
artifacts state store: a published run never changes, so each replica may build its own copy, deterministic
and disposable; queries (search, pagination, children, two-run comparison) run in the database, in
milliseconds, with flat memory; and a state store entry would need chunking at this size.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import hashlib
import logging
import multiprocessing
import os
import sqlite3
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from pgmeta_shared.keys import OBJECTSTORE_BINDING
from pgmeta_shared.outputfiles import decode
from pgmeta_shared.shutdown import Drain, process_drain

log = logging.getLogger(__name__)

INDEX_VERSION = 3
# Attributes that point at an entity's parent, in the order they are looked for (docs/output.md).
PARENT_ATTRIBUTES = ("parentTable", "table", "view", "materialisedView", "tablePartition", "atlanSchema", "database")
LINEAGE_SUFFIX = "/_lineage_"


class OutputMissingError(LookupError):
    """The run has no published output (yet, or any more)."""


class ObjectReader(Protocol):
    def read(self, path: str) -> bytes | None: ...


class BindingObjectReader:
    """Reads objects through the sidecar's output binding API (``get``); None when the object is absent."""

    def __init__(
        self,
        dapr_host: str,
        dapr_http_port: int,
        binding: str = OBJECTSTORE_BINDING,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._url = f"http://{dapr_host}:{dapr_http_port}/v1.0/bindings/{binding}"
        self._headers = headers or {}

    def read(self, path: str) -> bytes | None:
        # localstorage names the object `fileName`, aws.s3 `key`: give both, as the publisher does.
        body = {"operation": "get", "metadata": {"fileName": path, "key": path}}
        response = httpx.post(self._url, json=body, headers=self._headers, timeout=60)
        if response.status_code == 200:
            return response.content
        text = response.text.lower()
        if "no such file" in text or "not found" in text or "nosuchkey" in text or "does not exist" in text:
            return None
        raise RuntimeError(f"objectstore get {path!r} failed: HTTP {response.status_code} {response.text[:300]}")


@dataclass(frozen=True)
class EntityRow:
    type_name: str
    qualified_name: str
    name: str
    parent_qualified_name: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "typeName": self.type_name,
            "qualifiedName": self.qualified_name,
            "name": self.name,
            "parentQualifiedName": self.parent_qualified_name,
        }


SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entity (
    qn TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    name TEXT NOT NULL,
    name_lower TEXT NOT NULL,
    parent TEXT,
    hash BLOB NOT NULL,
    file TEXT NOT NULL,
    line INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE entity_load (qn, type, name, name_lower, parent, hash, file, line);
"""
# Created after the rows are in (one sort each instead of a B-tree insert per row): about half the build
# time. Each index ends with the primary key (implicit in a WITHOUT ROWID table), so each is the order of
# one list, and a page is a seek to the last row seen plus `limit` steps, however deep.
INDEXES = """
INSERT OR REPLACE INTO entity SELECT * FROM entity_load ORDER BY qn;
DROP TABLE entity_load;
CREATE INDEX entity_name ON entity (name_lower);
CREATE INDEX entity_type_name ON entity (type, name_lower);
CREATE INDEX entity_parent ON entity (parent, type, name_lower);
"""


@dataclass(frozen=True)
class Page:
    """One page of a list in its sort order: the position of its first row, and the cursors of its neighbours
    (None at either end)."""

    total: int
    position: int
    items: list[EntityRow]
    next: str | None
    prev: str | None

    def as_json(self, limit: int) -> dict[str, Any]:
        return {
            "total": self.total,
            "position": self.position,
            "limit": limit,
            "next": self.next,
            "prev": self.prev,
            "items": [row.as_json() for row in self.items],
        }


class CursorError(ValueError):
    """A page cursor that this list did not hand out."""


def encode_cursor(key: tuple[Any, ...], position: int) -> str:
    """The sort key of the row next to a page, and how many rows of the list come before the page's edge.

    The position rides along because counting it would be linear in the depth; a run's index never changes,
    so it stays true (a forged one can only mislabel the page, never select other rows)."""
    return base64.urlsafe_b64encode(orjson.dumps([*key, position])).decode().rstrip("=")


def decode_cursor(cursor: str, width: int) -> tuple[tuple[str, ...], int]:
    try:
        parts = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise CursorError(f"not a page cursor: {cursor[:40]!r}") from exc
    if not isinstance(parts, list) or len(parts) != width + 1:
        raise CursorError(f"not a page cursor of this list: {cursor[:40]!r}")
    *key, position = parts
    if not all(isinstance(part, str) for part in key) or not isinstance(position, int) or position < 0:
        raise CursorError(f"not a page cursor of this list: {cursor[:40]!r}")
    return tuple(key), position


def keyset_page(
    db: sqlite3.Connection,
    table: str,
    select: str,
    where: str,
    params: list[Any],
    order: tuple[str, ...],
    after: str | None,
    before: str | None,
    limit: int,
) -> tuple[int, list[tuple[Any, ...]], str | None, str | None]:
    """A page of ``SELECT select FROM table WHERE where ORDER BY order`` (``order`` ends with a unique column)
    after or before a cursor, by seeking, never by stepping over rows: the same cost at any depth. The
    selected columns end with the ``order`` columns (they make the cursors). Returns (position, rows, next,
    prev), position being the number of rows before the page."""
    keys = ", ".join(order)
    marks = ", ".join("?" * len(order))
    width = len(order)
    if before is not None:
        seek, edge = decode_cursor(before, width)
        descending = ", ".join(f"{key} DESC" for key in order)
        rows = db.execute(
            f"SELECT {select} FROM {table} WHERE {where} AND ({keys}) < ({marks}) ORDER BY {descending} LIMIT ?",
            [*params, *seek, limit],
        ).fetchall()[::-1]
        position = max(0, edge - len(rows))
        has_next = True
    else:
        seek, position = decode_cursor(after, width) if after is not None else ((), 0)
        bound = f" AND ({keys}) > ({marks})" if after is not None else ""
        rows = db.execute(
            f"SELECT {select} FROM {table} WHERE {where}{bound} ORDER BY {keys} LIMIT ?", [*params, *seek, limit + 1]
        ).fetchall()
        has_next = len(rows) > limit
        rows = rows[:limit]
    if not rows:
        return position, [], None, None
    following = encode_cursor(rows[-1][-width:], position + len(rows)) if has_next else None
    preceding = encode_cursor(rows[0][-width:], position) if position > 0 else None
    return position, rows, following, preceding


def parent_of(attributes: dict[str, Any]) -> str | None:
    for attribute in PARENT_ATTRIBUTES:
        value = attributes.get(attribute)
        if isinstance(value, dict):
            qn = (value.get("uniqueAttributes") or {}).get("qualifiedName")
            if isinstance(qn, str):
                return qn
    return None


def index_rows(file: str, blob: bytes) -> Iterator[tuple[Any, ...]]:
    """The index rows of one entity file's JSON Lines (a line without a qualifiedName has none)."""
    for line_no, line in enumerate(blob.splitlines()):
        if not line.strip():
            continue
        entity = orjson.loads(line)
        attributes = entity.get("attributes") or {}
        qn = attributes.get("qualifiedName")
        if not isinstance(qn, str):
            continue
        entity_name = str(attributes.get("name") or qn.rsplit("/", 1)[-1])
        parent = parent_of(attributes)
        yield (
            qn,
            entity.get("typeName", "?"),
            entity_name,
            entity_name.lower(),
            parent,
            line_hash(line),
            file,
            line_no,
        )


def line_hash(line: bytes) -> bytes:
    """The hash of an entity's published line: the transformer's fingerprints hash the same bytes, so the
    console calls updated what the pipeline calls updated."""
    return hashlib.blake2b(line.strip(), digest_size=12).digest()


class RunIndex:
    """One published run: its manifest, and queries over its SQLite entity index."""

    def __init__(self, run_id: str, location: str, manifest: dict[str, Any], path: Path) -> None:
        self.run_id = run_id
        self.location = location
        self.manifest = manifest
        self.path = path
        self._types: dict[str, int] | None = None
        self._totals: OrderedDict[tuple[str, str | None], int] = OrderedDict()

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        try:
            yield conn
        finally:
            conn.close()

    def search(self, query: str, type_name: str | None, after: str | None, before: str | None, limit: int) -> Page:
        """Entities whose name or qualifiedName contains ``query`` (case-insensitive), by type, in name order."""
        where, params = ["1=1"], []
        if type_name:
            where.append("type = ?")
            params.append(type_name)
        if query:
            like = "%" + query.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            # SQLite's LIKE ignores ASCII case: no lower() per row.
            where.append("(name_lower LIKE ? ESCAPE '\\' OR qn LIKE ? ESCAPE '\\')")
            params += [like, like]
        clause = " AND ".join(where)
        with self._db() as db:
            total = self._totals.get((query, type_name))
            if total is None:  # the same search paged through counts once
                total = db.execute(f"SELECT count(*) FROM entity WHERE {clause}", params).fetchone()[0]
                self._totals[(query, type_name)] = total
                while len(self._totals) > 256:
                    self._totals.popitem(last=False)
            position, rows, following, preceding = keyset_page(
                db,
                "entity",
                "type, name, parent, name_lower, qn",
                clause,
                params,
                ("name_lower", "qn"),
                after,
                before,
                limit,
            )
        items = [EntityRow(row[0], row[4], row[1], row[2]) for row in rows]
        return Page(total, position, items, following, preceding)

    def types(self) -> dict[str, int]:
        if self._types is None:
            with self._db() as db:
                self._types = dict(db.execute("SELECT type, count(*) FROM entity GROUP BY type ORDER BY type"))
        return self._types

    def row(self, qualified_name: str) -> tuple[EntityRow, str, int] | None:
        with self._db() as db:
            found = db.execute("SELECT type, qn, name, parent, file, line FROM entity WHERE qn = ?", [qualified_name])
            row = found.fetchone()
        if row is None:
            return None
        return EntityRow(*row[:4]), row[4], row[5]

    def children(self, qualified_name: str, after: str | None, before: str | None, limit: int) -> Page:
        with self._db() as db:
            total = db.execute("SELECT count(*) FROM entity WHERE parent = ?", [qualified_name]).fetchone()[0]
            position, rows, following, preceding = keyset_page(
                db,
                "entity",
                "name, parent, type, name_lower, qn",
                "parent = ?",
                [qualified_name],
                ("type", "name_lower", "qn"),
                after,
                before,
                limit,
            )
        items = [EntityRow(row[2], row[4], row[0], row[1]) for row in rows]
        return Page(total, position, items, following, preceding)


# An earlier run whose index this replica already has: (its location, its manifest, its index file).
EarlierIndex = tuple[str, dict[str, Any], Path]


def build_index(
    reader: ObjectReader,
    location: str,
    manifest: dict[str, Any],
    path: Path,
    earlier: list[EarlierIndex] | None = None,
) -> None:
    """Writes the SQLite index of a published run to ``path`` (atomically: readers see all of it or nothing).

    An incremental run lists its unchanged schemas' files in an earlier run's folder; when an ``earlier`` index
    holds the very same files (name, folder and sha256 equal), their rows are copied from it instead of
    reading and parsing the files again: most of a mostly unchanged run's index costs a copy, not a parse."""
    fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    os.close(fd)
    conn = sqlite3.connect(f"file:{partial}", uri=True)
    try:
        conn.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + SCHEMA)
        copied: set[str] = set()
        for prior_path, names in reusable_files(location, manifest, earlier or []).items():
            conn.execute("ATTACH DATABASE ? AS prior", [f"file:{prior_path}?mode=ro"])
            conn.execute("CREATE TEMP TABLE wanted (name TEXT PRIMARY KEY)")
            conn.executemany("INSERT INTO temp.wanted VALUES (?)", [(name,) for name in names])
            conn.execute(
                "INSERT INTO entity_load SELECT qn, type, name, name_lower, parent, hash, file, line "
                "FROM prior.entity WHERE file IN (SELECT name FROM temp.wanted)"
            )
            conn.execute("DROP TABLE temp.wanted")
            conn.commit()
            conn.execute("DETACH DATABASE prior")
            copied |= names
        # Each file where the manifest says: an incremental run's carried files are in an earlier run's folder.
        entity_files = [(f.get("folder", location), f["name"]) for f in manifest.get("files", []) if f.get("type")]
        for folder, name in entity_files:
            if name in copied:
                continue
            stored = reader.read(f"{folder}/{name}")
            if stored is None:
                raise OutputMissingError(f"{folder}/{name} is listed in the manifest but missing")
            conn.executemany(
                "INSERT INTO entity_load VALUES (?, ?, ?, ?, ?, ?, ?, ?)", index_rows(name, decode(name, stored))
            )
        conn.executescript(INDEXES)
        conn.execute("INSERT INTO meta VALUES ('location', ?)", [location])
        conn.commit()
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    finally:
        conn.close()
    os.replace(partial, path)


def reusable_files(location: str, manifest: dict[str, Any], earlier: list[EarlierIndex]) -> dict[Path, set[str]]:
    """The entity files of ``manifest`` held elsewhere whose rows an earlier index already has, by index: the
    same file name in the same folder with the same sha256 (the same bytes, so the same rows)."""
    wanted = {
        f["name"]: (f["folder"], f["sha256"])
        for f in manifest.get("files", [])
        if f.get("type") and f.get("folder") and f.get("sha256")
    }
    found: dict[Path, set[str]] = {}
    for prior_location, prior_manifest, prior_path in earlier:
        for entry in prior_manifest.get("files", []):
            name = entry.get("name")
            if name not in wanted or not entry.get("type") or any(name in names for names in found.values()):
                continue
            if (entry.get("folder", prior_location), entry.get("sha256")) == wanted[name]:
                found.setdefault(prior_path, set()).add(name)
    return found


# The priority of an index build that nobody waits for (a run just completed): below the runs' own work.
BACKGROUND_NICE = 10
# How long a background build that lost its process waits to learn whether this process is shutting down.
SHUTDOWN_NOTICE_SECONDS = 1.0


class RunOutputs:
    """Finds runs' output, builds each run's index once (per process), and reads entities back.

    ``isolate_builds``: build indexes in a child process (the service does; the reader must then be picklable,
    as BindingObjectReader is). ``drain``: this process's shutdown (a background build it stops is no fault)."""

    def __init__(
        self,
        reader: ObjectReader,
        cache_dir: Path,
        max_open_files: int = 8,
        *,
        isolate_builds: bool = False,
        drain: Drain | None = None,
    ) -> None:
        self._reader = reader
        self._drain = drain or process_drain()
        self._isolate_builds = isolate_builds
        self._cache_dir = cache_dir
        self._indexes: dict[str, RunIndex] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._files: OrderedDict[str, list[bytes]] = OrderedDict()
        self._manifests: dict[str, dict[str, Any]] = {}
        self._folders: dict[str, dict[str, str]] = {}  # run location -> {file name: folder} of files held elsewhere
        self._warming: set[str] = set()
        self._background = threading.Semaphore(1)
        self.compare_totals: dict[tuple[str, str], dict[str, int]] = {}  # (base, head) run ids -> change counts
        self.requests: dict[str, dict[str, Any] | None] = {}  # run id -> its request, once the run has ended
        self._max_open_files = max_open_files

    def read(self, location: str, name: str) -> bytes | None:
        """A published file as stored (downloads serve it so), from the folder that holds it: an incremental
        run's manifest lists an unchanged schema's files in the folder of the run that last read the schema."""
        return self._reader.read(f"{self._folder(location, name)}/{name}")

    def _folder(self, location: str, name: str) -> str:
        if name == "manifest.json":
            return location
        with self._guard:
            folders = self._folders.get(location)
        if folders is None:
            manifest = self.manifest(location) or {}
            folders = {f["name"]: f["folder"] for f in manifest.get("files", []) if f.get("folder")}
            with self._guard:
                self._folders[location] = folders
        return folders.get(name, location)

    def read_content(self, location: str, name: str) -> bytes | None:
        """A published file's content: JSON Lines decompressed when the file is stored as ``.jsonl.zst``."""
        stored = self.read(location, name)
        return None if stored is None else decode(name, stored)

    def manifest(self, location: str) -> dict[str, Any] | None:
        """The run's manifest; kept once read (a published run never changes), so the runs list stays fast."""
        with self._guard:
            known = self._manifests.get(location)
        if known is not None:
            return known
        blob = self.read(location, "manifest.json")
        if not blob:
            return None
        manifest: dict[str, Any] = orjson.loads(blob)
        with self._guard:
            self._manifests[location] = manifest
        return manifest

    def index(self, run_id: str, location: str, *, background: bool = False) -> RunIndex:
        """The run's index, built at first access (concurrent first accesses build it once)."""
        with self._guard:
            if run_id in self._indexes:
                return self._indexes[run_id]
            lock = self._locks.setdefault(run_id, threading.Lock())
        with lock:
            if run_id in self._indexes:
                return self._indexes[run_id]
            manifest = self.manifest(location)
            if manifest is None:
                raise OutputMissingError(f"run {run_id!r} has no manifest at {location!r}")
            path = self._index_path(location)
            if not path.exists():
                self._build(location, manifest, path, background=background)
            index = RunIndex(run_id, location, manifest, path)
            with self._guard:
                self._indexes[run_id] = index
            return index

    def warm(self, run_id: str, location: str) -> None:
        """Starts building the run's index in the background (when its page is first opened), so that by the
        time someone opens its entities or a comparison the index is usually there."""
        with self._guard:
            if run_id in self._indexes or run_id in self._warming:
                return
            self._warming.add(run_id)

        def build() -> None:
            try:
                # One background build at a time: ten runs completing together must not parse ten runs at
                # once in the process that also serves the API (a page that needs an index builds it itself).
                with self._background:
                    self.index(run_id, location, background=True)
            except Exception as exc:  # the foreground request that needs the index reports the problem
                if isinstance(exc, BrokenProcessPool) and self._stopped_by_shutdown():
                    log.info("console: index of run %s not built: shutting down (built on first access)", run_id)
                else:
                    log.warning("console: background index of run %s failed", run_id, exc_info=True)
            finally:
                with self._guard:
                    self._warming.discard(run_id)

        # In the caller's context: the build's log lines and spans belong to the trace that asked for it (the
        # run's, when its completion event did).
        context = contextvars.copy_context()
        threading.Thread(target=context.run, args=(build,), name=f"console-index-{run_id}", daemon=True).start()

    def _stopped_by_shutdown(self) -> bool:
        """Whether a build's process died of this process's SIGTERM (sent to the whole process group by a stopping
        stack): the child dies at once, and the main thread may take a moment to run the signal handler."""
        deadline = time.monotonic() + SHUTDOWN_NOTICE_SECONDS
        while not self._drain.draining and time.monotonic() < deadline:
            time.sleep(0.05)
        return self._drain.draining

    def _index_path(self, location: str) -> Path:
        return self._cache_dir / f"{hashlib.sha256(location.encode()).hexdigest()[:24]}-v{INDEX_VERSION}.sqlite"

    def _earlier_indexes(self, location: str, manifest: dict[str, Any]) -> list[EarlierIndex]:
        """Indexes built here of the runs that may hold this run's carried files: its baseline, and every
        folder its manifest refers to."""
        connection = location.rsplit("/", 1)[0]
        previous = manifest.get("previous_run_id")
        candidates = [f"{connection}/{previous}"] if previous else []
        candidates += sorted({f["folder"] for f in manifest.get("files", []) if f.get("folder")})
        earlier: list[EarlierIndex] = []
        for candidate in dict.fromkeys(candidates):
            prior_path = self._index_path(candidate)
            try:
                prior_manifest = self.manifest(candidate) if prior_path.exists() else None
            except Exception:  # an optimisation only: the files are read instead
                log.warning("console: manifest of %s unreadable; its index is not reused", candidate, exc_info=True)
                continue
            if prior_manifest is not None:
                earlier.append((candidate, prior_manifest, prior_path))
        return earlier

    def _build(self, location: str, manifest: dict[str, Any], path: Path, *, background: bool) -> None:
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        earlier = self._earlier_indexes(location, manifest)
        if not self._isolate_builds:
            build_index(self._reader, location, manifest, path, earlier)
        else:
            # Parsing ~220,000 entities takes seconds of CPU: in a process of its own, it holds neither the
            # orchestrator's GIL (the API and the workflow runtime keep answering) nor, when nobody waits for
            # it, more than the CPU left over by the runs themselves (nice 10).
            nice = BACKGROUND_NICE if background else 0
            spawn = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(1, mp_context=spawn, initializer=os.nice, initargs=(nice,)) as pool:
                pool.submit(build_index, self._reader, location, manifest, path, earlier).result()
        log.info("console: indexed %s (%d files)", location, len(manifest.get("files", [])))

    def entity(self, index: RunIndex, qualified_name: str) -> dict[str, Any] | None:
        """The full entity as published (its line of its file; the last few files are kept in memory)."""
        found = index.row(qualified_name)
        if found is None:
            return None
        _, file, line = found
        key = f"{index.location}/{file}"
        with self._guard:
            lines = self._files.get(key)
            if lines is not None:
                self._files.move_to_end(key)
        if lines is None:
            blob = self.read_content(index.location, file)
            if blob is None:
                raise OutputMissingError(f"{key} disappeared from the object store")
            lines = blob.splitlines()
            with self._guard:
                self._files[key] = lines
                while len(self._files) > self._max_open_files:
                    self._files.popitem(last=False)
        entity: dict[str, Any] = orjson.loads(lines[line])
        return entity


CHANGES_SCHEMA = """
CREATE TABLE change (kind TEXT NOT NULL, qn TEXT NOT NULL, type TEXT NOT NULL, name TEXT NOT NULL, parent TEXT,
                     PRIMARY KEY (kind, qn)) WITHOUT ROWID;
"""
# One pass per kind over the two indexes, written once per pair of runs; pages are then read by (kind, qn).
CHANGE_QUERIES = {
    "created": "SELECT 'created', h.qn, h.type, h.name, h.parent FROM head.entity h "
    "WHERE NOT EXISTS (SELECT 1 FROM base.entity b WHERE b.qn = h.qn)",
    "deleted": "SELECT 'deleted', b.qn, b.type, b.name, b.parent FROM base.entity b "
    "WHERE NOT EXISTS (SELECT 1 FROM head.entity h WHERE h.qn = b.qn)",
    "updated": "SELECT 'updated', h.qn, h.type, h.name, h.parent FROM head.entity h "
    "JOIN base.entity b ON b.qn = h.qn WHERE b.hash <> h.hash",
}


def changes_between(base: RunIndex, head: RunIndex) -> Path:
    """The changes from ``base`` to ``head`` as a small SQLite file beside the indexes (built once per pair)."""
    path = head.path.with_name(f"{head.path.stem}-vs-{base.path.stem}.sqlite")
    if path.exists():
        return path
    fd, partial = tempfile.mkstemp(dir=path.parent, suffix=".partial")
    os.close(fd)
    conn = sqlite3.connect(partial)
    try:
        conn.executescript("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;" + CHANGES_SCHEMA)
        conn.execute("ATTACH DATABASE ? AS head", [f"file:{head.path}?mode=ro"])
        conn.execute("ATTACH DATABASE ? AS base", [f"file:{base.path}?mode=ro"])
        for query in CHANGE_QUERIES.values():
            conn.execute(f"INSERT INTO change {query}")
        conn.commit()
    finally:
        conn.close()
    os.replace(partial, path)
    return path


def compare_runs(base: RunIndex, head: RunIndex, kind: str, after: str | None, before: str | None, limit: int) -> Page:
    """Entities created (in head only), deleted (in base only) or updated (both, content differs), by qn."""
    if kind not in CHANGE_QUERIES:
        raise ValueError(f"unknown change kind {kind!r}")
    conn = sqlite3.connect(f"file:{changes_between(base, head)}?mode=ro", uri=True)
    try:
        total = conn.execute("SELECT count(*) FROM change WHERE kind = ?", [kind]).fetchone()[0]
        position, rows, following, preceding = keyset_page(
            conn, "change", "type, name, parent, qn", "kind = ?", [kind], ("qn",), after, before, limit
        )
    finally:
        conn.close()
    items = [EntityRow(row[0], row[3], row[1], row[2]) for row in rows]
    return Page(total, position, items, following, preceding)


def attribute_diff(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Attribute-level differences of two versions of one entity (typeName included when it changed)."""
    changes: list[dict[str, Any]] = []
    if before.get("typeName") != after.get("typeName"):
        changes.append({"attribute": "typeName", "before": before.get("typeName"), "after": after.get("typeName")})
    old, new = before.get("attributes") or {}, after.get("attributes") or {}
    for attribute in sorted(set(old) | set(new)):
        if old.get(attribute) != new.get(attribute):
            changes.append({"attribute": attribute, "before": old.get(attribute), "after": new.get(attribute)})
    return changes
