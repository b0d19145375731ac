"""Retention: old run folders out of the object store, finished workflow histories purged, run keys gone.

Per connection the last N successful runs' output is kept, plus the run the next incremental run compares
against (the baseline), whatever its age, and every run whose folder holds files a kept run's manifest lists
(an incremental run refers to an unchanged schema's files where they are); a run that has not finished is
never touched (only finished runs are in the retention index, and workflows are purged only in a terminal
state). Deletion goes through the ``objectstore`` binding with operations both bindings.localstorage and
bindings.aws.s3 have (get, list, delete): the manifest first (a reader that sees a manifest sees a complete
run), then the run's own files it lists, then whatever a listing of the folder still shows (a run that failed
while publishing has no manifest).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from pgmeta_orchestrator.audit import AuditLog, Outcome, client_address
from pgmeta_orchestrator.auth import Principal, Role, require
from pgmeta_orchestrator.runs import read_workflow_state
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_orchestrator.workflow import connection_qualified_name
from pgmeta_shared.events import ExtractionCompleted, ExtractionRequested
from pgmeta_shared.fingerprints import folded_part_keys, owned_part_keys
from pgmeta_shared.keys import (
    RETENTION_CONNECTIONS_KEY,
    RUNS_INDEX_KEY,
    fingerprint_folds_key,
    fingerprint_parts_key,
    run_progress_key,
    run_requested_key,
    snapshot_key,
)
from pgmeta_shared.keys import retention_runs_key as runs_key
from pgmeta_shared.platform import Platform

log = logging.getLogger(__name__)

OBJECTSTORE_BINDING = "objectstore"
TERMINAL = {"COMPLETED", "FAILED", "TERMINATED"}


class RunRemoval(BaseModel):
    run_id: str
    connection_qualified_name: str
    location: str | None
    status: str
    files: int = 0


class GcReport(BaseModel):
    dry_run: bool
    keep: int
    runs: list[RunRemoval] = Field(default_factory=list, description="Run folders deleted (or that would be).")
    files: int = 0
    workflows: list[str] = Field(default_factory=list, description="Finished workflow instances purged.")
    kept: list[str] = Field(default_factory=list, description="Runs kept: the last N successful and the baselines.")


class ObjectStore:
    """The ``objectstore`` binding's get / list / delete (create stays with the publisher's Platform)."""

    def __init__(self, settings: OrchestratorSettings) -> None:
        from dapr.clients import DaprClient

        self._client = DaprClient(address=settings.dapr_grpc_address)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def read(self, path: str) -> bytes | None:
        try:
            response = self._client.invoke_binding(OBJECTSTORE_BINDING, "get", b"", {"fileName": path, "key": path})
        except Exception as exc:  # the binding reports a missing file as an error
            log.debug("objectstore get %s: %s", path, exc)
            return None
        data: bytes = response.data
        return data

    def delete(self, path: str) -> None:
        try:
            self._client.invoke_binding(OBJECTSTORE_BINDING, "delete", b"", {"fileName": path, "key": path})
        except Exception as exc:
            if "not found" not in str(exc).lower() and "no such file" not in str(exc).lower():
                raise
            log.debug("objectstore delete %s: already gone", path)

    def list(self, prefix: str) -> list[str]:
        """Paths under ``prefix/``. localstorage answers absolute paths of a directory walk, S3 a ListObjects
        page: both are brought back to keys relative to the store's root."""
        names: list[str] = []
        marker = ""
        while True:
            request = orjson.dumps({"prefix": f"{prefix}/", "marker": marker, "maxResults": 1000})
            try:
                response = self._client.invoke_binding(OBJECTSTORE_BINDING, "list", request, {"fileName": prefix})
            except Exception as exc:  # localstorage: the folder does not exist
                log.debug("objectstore list %s: %s", prefix, exc)
                return names
            answer = orjson.loads(response.data or b"null")
            if isinstance(answer, list):
                return [path[path.index(f"{prefix}/") :] for path in answer if f"{prefix}/" in path]
            contents = (answer or {}).get("Contents") or []
            names += [item["Key"] for item in contents]
            if not (answer or {}).get("IsTruncated") or not contents:
                return names
            marker = contents[-1]["Key"]


class RetentionService:
    def __init__(
        self, platform: Platform, objects: Any, workflows: Any, settings: OrchestratorSettings, clock: Any = None
    ) -> None:
        self._platform = platform
        self._objects = objects
        self._workflows = workflows
        self._settings = settings
        self._now = clock or (lambda: datetime.now(UTC))

    def record_finished(self, event: ExtractionCompleted) -> None:
        """``extraction.completed``: the run joins its connection's retention index."""
        connection_qn = self._connection_of(event)
        if connection_qn is None:
            log.warning("run %s: finished, but its connection is unknown; not under retention", event.run_id)
            return
        entry = {"run_id": event.run_id, "status": event.status, "location": event.location, "at": _iso(self._now())}

        def add(entries: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
            others = [e for e in entries or [] if e["run_id"] != event.run_id]
            return [entry, *others]

        self._platform.update_json(runs_key(connection_qn), add)
        self._platform.update_json(RETENTION_CONNECTIONS_KEY, lambda known: sorted({*(known or []), connection_qn}))

    def _connection_of(self, event: ExtractionCompleted) -> str | None:
        """From the output location, or (a failed run may have written some files and fingerprints but has no
        location) from the request the workflow started with."""
        if event.location:
            return event.location.rsplit("/", 1)[0]
        state = read_workflow_state(self._workflows, event.run_id)
        if state is None or not state.serialized_input:
            return None
        request = ExtractionRequested.model_validate(orjson.loads(state.serialized_input))
        return connection_qualified_name(request)

    def collect(self, *, dry_run: bool, keep: int | None = None) -> GcReport:
        keep = self._settings.retention_keep_runs if keep is None else keep
        report = GcReport(dry_run=dry_run, keep=keep)
        for connection_qn in self._platform.get_json(RETENTION_CONNECTIONS_KEY) or []:
            self._collect_connection(connection_qn, keep, report)
        self._purge_workflows(report)
        return report

    def _collect_connection(self, connection_qn: str, keep: int, report: GcReport) -> None:
        entries: list[dict[str, Any]] = self._platform.get_json(runs_key(connection_qn)) or []
        baseline = (self._platform.get_json(snapshot_key(connection_qn)) or {}).get("run_id")
        successful = [e for e in entries if e["status"] == "COMPLETED"]
        kept = {e["run_id"] for e in successful[:keep]} | ({baseline} if baseline else set())
        # A kept run's manifest may list files of schemas carried over unread, in the folder of the run that
        # last read them: that folder stays while any kept run (or a run kept for that reason) refers to it.
        referenced = self._referenced_folders(
            [self._location(connection_qn, e) for e in entries if e["run_id"] in kept]
        )
        if baseline and not any(e["run_id"] == baseline for e in entries):
            referenced |= self._referenced_folders([f"{connection_qn}/{baseline}"])
        kept |= {e["run_id"] for e in entries if self._location(connection_qn, e) in referenced}
        report.kept += sorted(kept)
        doomed = [e for e in entries if e["run_id"] not in kept]
        for entry in doomed:
            location = self._location(connection_qn, entry)
            removal = RunRemoval(
                run_id=entry["run_id"],
                connection_qualified_name=connection_qn,
                location=location,
                status=entry["status"],
            )
            files = self._run_files(location)
            removal.files = len(files)
            report.files += len(files)
            report.runs.append(removal)
            if report.dry_run:
                continue
            # The manifest first: from then on no reader takes the folder for a complete run.
            for path in sorted(files, key=lambda p: not p.endswith("/manifest.json")):
                self._objects.delete(path)
            self._forget_fingerprints(entry["run_id"], baseline)
        if doomed and not report.dry_run:
            gone = {e["run_id"] for e in doomed}
            self._platform.update_json(
                runs_key(connection_qn), lambda entries: [e for e in entries or [] if e["run_id"] not in gone]
            )

    @staticmethod
    def _location(connection_qn: str, entry: dict[str, Any]) -> str:
        return str(entry.get("location") or f"{connection_qn}/{entry['run_id']}")

    def _referenced_folders(self, locations: list[str]) -> set[str]:
        """Other runs' folders that these runs' manifests list files in, and those that theirs list, and so on."""
        referenced: set[str] = set()
        pending = list(locations)
        seen = set(locations)
        while pending:
            manifest = self._objects.read(f"{pending.pop()}/manifest.json")
            for item in orjson.loads(manifest).get("files", []) if manifest else []:
                folder = item.get("folder")
                if folder and folder not in seen:
                    seen.add(folder)
                    referenced.add(folder)
                    pending.append(folder)
        return referenced

    def _run_files(self, location: str) -> list[str]:
        """The run's own files: not those its manifest lists in another run's folder."""
        files: set[str] = set()
        manifest = self._objects.read(f"{location}/manifest.json")
        if manifest:
            files.add(f"{location}/manifest.json")
            files |= {
                f"{location}/{item['name']}"
                for item in orjson.loads(manifest).get("files", [])
                if item.get("folder", location) == location
            }
        files |= set(self._objects.list(location))
        return sorted(files)

    def _forget_fingerprints(self, run_id: str, baseline: str | None) -> None:
        """A failed run's fingerprint buckets (written without TTL; the publisher forgets only superseded
        baselines)."""
        if run_id == baseline:
            return
        # Only the parts the run wrote itself: those of schemas it carried over belong to (and stay with) the
        # run that read them, which the baseline may still refer to.
        owned = owned_part_keys(run_id, self._platform.get_json(fingerprint_parts_key(run_id)))
        # And the parts it wrote chunk by chunk: a run that failed before its index names none of them.
        listed = set(owned)
        for key in owned + [key for key in folded_part_keys(self._platform, run_id) if key not in listed]:
            self._platform.delete_json(key)
        self._platform.delete_json(fingerprint_parts_key(run_id))
        self._platform.delete_json(fingerprint_folds_key(run_id))

    def _purge_workflows(self, report: GcReport) -> None:
        cutoff = self._now() - timedelta(hours=self._settings.retention_workflow_age_hours)
        purged: set[str] = set()
        for instance_id in self._instances():
            state = read_workflow_state(self._workflows, instance_id, fetch_payloads=False)
            if state is None or state.runtime_status.name not in TERMINAL:
                continue
            if state.last_updated_at and _aware(state.last_updated_at) > cutoff:
                continue
            report.workflows.append(instance_id)
            if not report.dry_run:
                self._workflows.purge_workflow(instance_id)
                # The orchestrator's own keys of the run (both carry a TTL; gone with the history, not days later).
                self._platform.delete_json(run_requested_key(instance_id))
                self._platform.delete_json(run_progress_key(instance_id))
                purged.add(instance_id)
        if purged:
            self._platform.update_json(
                RUNS_INDEX_KEY, lambda index: [e for e in index or [] if e["run_id"] not in purged]
            )

    def _instances(self) -> Iterator[str]:
        try:
            yield from self._workflows.iter_workflow_instance_ids()
        except NotImplementedError:
            # A store that cannot list keys: the runs index still names every recent run.
            for entry in self._platform.get_json(RUNS_INDEX_KEY) or []:
                yield entry["run_id"]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(value: datetime) -> str:
    return value.isoformat()


# -- FastAPI wiring ---------------------------------------------------------------------------------


def retention_of(request: Request) -> RetentionService:
    service: RetentionService = request.app.state.retention
    return service


Retention = Annotated[RetentionService, Depends(retention_of)]
router = APIRouter(tags=["retention"])
# Admin only, even for a dry run: a real pass deletes every connection's published runs and workflow histories
# for good, and ``keep`` (down to 1) is the caller's choice; an operator's rights are over runs, not over
# what the deployment keeps.
GcCaller = Annotated[Principal, Depends(require(Role.ADMIN, "gc"))]


@router.post("/gc")
async def collect_garbage(
    retention: Retention,
    caller: GcCaller,
    request: Request,
    dry_run: bool = True,
    keep: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> GcReport:
    """Deletes old run folders (keeping the last ``keep`` successful runs per connection and the baselines)
    and purges finished workflow histories older than the configured age. ``dry_run`` (the default) only
    reports what would go."""
    report = await run_in_threadpool(retention.collect, dry_run=dry_run, keep=keep)
    audit: AuditLog = request.app.state.audit
    audit.record(
        "gc.dry_run" if dry_run else "gc",
        caller,
        client_address(request),
        Outcome.ALLOWED,
        target=f"{len(report.runs)} run folders, {len(report.workflows)} workflows (keep {report.keep})",
    )
    return report
