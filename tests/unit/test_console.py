"""The console's read routes over a published run held in memory: index, search, entity, compare, SSE."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import time
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from pgmeta_orchestrator.console import include_console
from pgmeta_orchestrator.console.outputs import OutputMissingError, RunOutputs, attribute_diff
from pgmeta_orchestrator.runs import RunView
from pgmeta_orchestrator.settings import OrchestratorSettings
from pgmeta_shared.events import ExtractionCompleted
from pgmeta_shared.shutdown import Drain
from tests.unit.api_harness import BOOTSTRAP, admit_bootstrap_admin

CONN = "default/postgres/0000000001"
AUTH = {"Authorization": f"Bearer {BOOTSTRAP}"}


def ref(type_name: str, qn: str) -> dict[str, Any]:
    return {"typeName": type_name, "uniqueAttributes": {"qualifiedName": qn}}


def catalog(extra_column: bool) -> list[dict[str, Any]]:
    db, schema = f"{CONN}/shop", f"{CONN}/shop/sales"
    table, view = f"{schema}/customers", f"{schema}/big_customers"
    columns = ["id", "email"] + (["tier"] if extra_column else [])
    entities = [
        {"typeName": "Database", "attributes": {"qualifiedName": db, "name": "shop"}},
        {
            "typeName": "Schema",
            "attributes": {"qualifiedName": schema, "name": "sales", "database": ref("Database", db)},
        },
        {
            "typeName": "Table",
            "attributes": {
                "qualifiedName": table,
                "name": "customers",
                "columnCount": len(columns),
                "atlanSchema": ref("Schema", schema),
            },
        },
        {
            "typeName": "View",
            "attributes": {"qualifiedName": view, "name": "big_customers", "atlanSchema": ref("Schema", schema)},
        },
        {
            "typeName": "Process",
            "attributes": {
                "qualifiedName": f"{view}/_lineage_",
                "name": "sales.big_customers",
                "inputs": [ref("Table", table)],
                "outputs": [ref("View", view)],
            },
        },
    ]
    entities += [
        {"typeName": "Column", "attributes": {"qualifiedName": f"{table}/{c}", "name": c, "table": ref("Table", table)}}
        for c in columns
    ]
    entities += [
        {
            "typeName": "Table",
            "attributes": {
                "qualifiedName": f"{schema}/t{i:03d}",
                "name": f"t{i:03d}",
                "atlanSchema": ref("Schema", schema),
            },
        }
        for i in range(120)
    ]
    return entities


class DictReader:
    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.reads = 0

    def read(self, path: str) -> bytes | None:
        self.reads += 1
        return self.objects.get(path)

    def publish(
        self, run_id: str, entities: list[dict[str, Any]], previous: str | None, lines_per_file: int = 1000
    ) -> str:
        """Writes the run as the publisher lays it out: files per type, in parts, then the manifest."""
        location = f"{CONN}/{run_id}"
        by_type: dict[str, list[bytes]] = {}
        for entity in entities:
            by_type.setdefault(entity["typeName"], []).append(orjson.dumps(entity))
        files = []
        for type_name, lines in by_type.items():
            for part, start in enumerate(range(0, len(lines), lines_per_file)):
                name = f"{type_name}-db000-{part:05d}.jsonl"
                chunk = lines[start : start + lines_per_file]
                self.objects[f"{location}/{name}"] = b"\n".join(chunk) + b"\n"
                files.append({"name": name, "type": type_name, "entities": len(chunk)})
        self.objects[f"{location}/report.json"] = b'{"problems": [], "atlan": []}'
        files.append({"name": "report.json", "problems": 0})
        manifest = {
            "run_id": run_id,
            "connection_qualified_name": CONN,
            "previous_run_id": previous,
            "counts": {t: len(v) for t, v in by_type.items()},
            "changes": {},
            "files": files,
        }
        self.objects[f"{location}/manifest.json"] = orjson.dumps(manifest)
        return location


class FakeRuns:
    def __init__(self) -> None:
        self.views: dict[str, list[RunView]] = {}

    def view(self, run_id: str) -> RunView | None:
        views = self.views.get(run_id)
        if not views:
            return None
        return views.pop(0) if len(views) > 1 else views[0]

    def request_of(self, run_id: str) -> dict[str, Any] | None:
        return {"source": {"host": "db", "port": 5432, "username": "u", "database": "shop"}}

    def recent(self, limit: int) -> list[RunView]:
        return [v[-1] for v in self.views.values()][:limit]


@pytest.fixture
def console(tmp_path: Path) -> tuple[TestClient, FakeRuns, DictReader]:
    app = FastAPI()
    runs, reader = FakeRuns(), DictReader()
    include_console(app, OrchestratorSettings())
    app.state.runs = runs
    admit_bootstrap_admin(app)
    app.state.console_outputs = RunOutputs(reader, tmp_path / "index")
    for run_id, extra, previous in (("run-a", False, None), ("run-b", True, "run-a")):
        location = reader.publish(run_id, catalog(extra), previous)
        runs.views[run_id] = [RunView(run_id=run_id, status="COMPLETED", location=location)]
    return TestClient(app), runs, reader


def test_data_routes_need_a_bearer_token_and_the_page_does_not(console: tuple[TestClient, Any, Any]) -> None:
    client, _, _ = console
    assert client.get("/runs/run-a/entities").status_code == 401
    assert client.get("/runs/run-a/entities", headers={"Authorization": "Basic x"}).status_code == 401
    page = client.get("/console/")
    assert page.status_code == 200 and "console.js" in page.text
    assert client.get("/console/assets/console.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/console/assets/..%2Froutes.py").status_code == 404
    assert client.get("/console/assets/outputs.py").status_code == 404


def test_search_is_paginated_server_side_by_name_qualified_name_and_type(
    console: tuple[TestClient, Any, DictReader],
) -> None:
    client, _, reader = console
    page = client.get("/runs/run-a/entities", params={"type": "Table", "limit": 50}, headers=AUTH).json()
    assert page["total"] == 121 and len(page["items"]) == 50
    assert page["position"] == 0 and page["prev"] is None and page["next"]
    assert page["types"]["Column"] == 2
    pages, names = [page], [i["name"] for i in page["items"]]
    while pages[-1]["next"]:
        params = {"type": "Table", "limit": 50, "after": pages[-1]["next"]}
        pages.append(client.get("/runs/run-a/entities", params=params, headers=AUTH).json())
        names += [i["name"] for i in pages[-1]["items"]]
    assert names == sorted(names) and len(names) == len(set(names)) == 121, "every table once, in order"
    last = pages[-1]
    assert [p["position"] for p in pages] == [0, 50, 100] and last["items"][-1]["name"] == "t119"
    back = client.get("/runs/run-a/entities", params={"type": "Table", "before": last["prev"]}, headers=AUTH).json()
    assert back["items"] == pages[1]["items"] and back["position"] == 50 and back["next"] and back["prev"]
    first = client.get("/runs/run-a/entities", params={"type": "Table", "before": back["prev"]}, headers=AUTH).json()
    assert first["items"] == page["items"] and first["prev"] is None
    forged = client.get("/runs/run-a/entities", params={"after": "bm90LWEtY3Vyc29y"}, headers=AUTH)
    assert forged.status_code == 422 and "cursor" in forged.json()["detail"]
    reads = reader.reads
    found = client.get("/runs/run-a/entities", params={"q": "SALES/CUST"}, headers=AUTH).json()
    assert {i["name"] for i in found["items"]} == {"customers", "id", "email"}
    assert reader.reads == reads, "a search after the first access reads no file"
    underscore = client.get("/runs/run-a/entities", params={"q": "_lin"}, headers=AUTH).json()
    assert [i["typeName"] for i in underscore["items"]] == ["Process"]  # `_` is literal, not a wildcard


def test_an_entity_with_parent_children_and_lineage(console: tuple[TestClient, Any, Any]) -> None:
    client, _, _ = console
    table = f"{CONN}/shop/sales/customers"
    answer = client.get("/runs/run-a/entity", params={"qualified_name": table}, headers=AUTH).json()
    assert answer["entity"]["attributes"]["columnCount"] == 2
    assert answer["parent"]["qualifiedName"] == f"{CONN}/shop/sales"
    assert [c["name"] for c in answer["children"]["items"]] == ["email", "id"]
    view = client.get("/runs/run-a/entity", params={"qualified_name": f"{CONN}/shop/sales/big_customers"}, headers=AUTH)
    assert view.json()["lineage_inputs"] == [{"typeName": "Table", "qualifiedName": table}]
    missing = client.get("/runs/run-a/entity", params={"qualified_name": "nope"}, headers=AUTH)
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


def test_compare_names_exactly_what_changed(console: tuple[TestClient, Any, Any]) -> None:
    client, _, _ = console
    answer = client.get("/runs/run-b/compare", headers=AUTH).json()
    assert answer["base"] == "run-a"
    assert answer["totals"] == {"created": 1, "updated": 1, "deleted": 0}
    assert answer["items"][0]["qualifiedName"] == f"{CONN}/shop/sales/customers"
    assert answer["items"][0]["diff"] == [{"attribute": "columnCount", "before": 2, "after": 3}]
    created = client.get("/runs/run-b/compare", params={"kind": "created"}, headers=AUTH).json()
    assert [i["qualifiedName"] for i in created["items"]] == [f"{CONN}/shop/sales/customers/tier"]
    backwards = client.get("/runs/run-a/compare", params={"base": "run-b", "kind": "deleted"}, headers=AUTH).json()
    assert [i["name"] for i in backwards["items"]] == ["tier"]
    assert client.get("/runs/run-a/compare", headers=AUTH).status_code == 422  # no baseline


def test_files_download_only_what_the_manifest_lists(console: tuple[TestClient, Any, Any]) -> None:
    client, _, _ = console
    answer = client.get("/runs/run-a/files/Table-db000-00000.jsonl", headers=AUTH)
    assert answer.status_code == 200 and answer.content.count(b"\n") == 121
    assert "attachment" in answer.headers["content-disposition"]
    assert client.get("/runs/run-a/files/../run-b/manifest.json", headers=AUTH).status_code == 404


def test_files_an_incremental_run_refers_to_are_read_from_the_folder_that_holds_them(
    console: tuple[TestClient, FakeRuns, DictReader],
) -> None:
    """An incremental run's manifest lists an unchanged schema's files in the run folder that holds them."""
    client, runs, reader = console
    location = f"{CONN}/run-c"
    run_a = orjson.loads(reader.objects[f"{CONN}/run-a/manifest.json"])
    files = [f | {"folder": f"{CONN}/run-a"} if f.get("type") else f for f in run_a["files"]]
    reader.objects[f"{location}/report.json"] = reader.objects[f"{CONN}/run-a/report.json"]
    reader.objects[f"{location}/manifest.json"] = orjson.dumps(run_a | {"run_id": "run-c", "files": files})
    runs.views["run-c"] = [RunView(run_id="run-c", status="COMPLETED", location=location)]
    assert not any(path.startswith(f"{location}/Table-") for path in reader.objects), "nothing copied"

    page = client.get("/runs/run-c/entities", params={"type": "Table", "limit": 5}, headers=AUTH).json()
    assert page["total"] == 121
    table = f"{CONN}/shop/sales/customers"
    answer = client.get("/runs/run-c/entity", params={"qualified_name": table}, headers=AUTH).json()
    assert answer["entity"]["attributes"]["columnCount"] == 2
    download = client.get("/runs/run-c/files/Table-db000-00000.jsonl", headers=AUTH)
    assert download.status_code == 200 and download.content.count(b"\n") == 121
    compared = client.get("/runs/run-c/compare", params={"base": "run-a"}, headers=AUTH).json()
    assert compared["totals"] == {"created": 0, "updated": 0, "deleted": 0}


def test_events_stream_until_the_run_finishes(
    console: tuple[TestClient, FakeRuns, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, runs, _ = console
    monkeypatch.setenv("PGMETA_CONSOLE_EVENTS_POLL_SECONDS", "0.01")
    running = RunView(run_id="run-c", status="RUNNING", stage="extract", counts={"tables": 3})
    runs.views["run-c"] = [
        RunView(run_id="run-c", status="QUEUED"),
        running,
        running,
        RunView(run_id="run-c", status="COMPLETED", counts={"Table": 3}),
    ]
    with client.stream("GET", "/runs/run-c/events", headers=AUTH) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data:")]
    statuses = [orjson.loads(e[5:])["status"] for e in events]
    assert statuses == ["QUEUED", "RUNNING", "COMPLETED"]  # an unchanged view is not sent twice
    assert client.get("/runs/nope/events", headers=AUTH).status_code == 404


def test_a_run_without_output_cannot_be_browsed(console: tuple[TestClient, FakeRuns, Any]) -> None:
    client, runs, _ = console
    runs.views["run-d"] = [RunView(run_id="run-d", status="FAILED", error="boom")]
    answer = client.get("/runs/run-d/entities", headers=AUTH)
    assert answer.status_code == 409 and "FAILED" in answer.json()["detail"]


def test_attribute_diff_reports_added_removed_and_changed() -> None:
    before = {"typeName": "Table", "attributes": {"a": 1, "b": 2}}
    after = {"typeName": "Table", "attributes": {"b": 3, "c": 4}}
    assert attribute_diff(before, after) == [
        {"attribute": "a", "before": 1, "after": None},
        {"attribute": "b", "before": 2, "after": 3},
        {"attribute": "c", "before": None, "after": 4},
    ]


def test_a_run_page_brings_manifest_report_and_warms_the_index(console: tuple[TestClient, Any, DictReader]) -> None:
    client, _, reader = console
    run = client.get("/console/api/runs/run-b", headers=AUTH).json()
    assert run["previous_run_id"] == "run-a" and run["report"] == {"problems": [], "atlan": []}
    assert run["request"]["source"]["database"] == "shop" and "password" not in str(run)
    outputs: RunOutputs = client.app.state.console_outputs  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while "run-b" not in outputs._indexes and time.monotonic() < deadline:
        time.sleep(0.02)
    reads = reader.reads
    client.get("/runs/run-b/entities", headers=AUTH).raise_for_status()
    assert reader.reads == reads, "the index was built in the background when the run page opened"
    listed = client.get("/console/api/runs", headers=AUTH).json()
    assert {r["run_id"] for r in listed} == {"run-a", "run-b"}


def test_schedule_preview_names_the_next_ticks_or_the_problem(console: tuple[TestClient, Any, Any]) -> None:
    client, _, _ = console
    answer = client.get(
        "/console/api/schedule-preview", params={"schedule": "0 3 * * *", "time_zone": "Europe/Paris"}, headers=AUTH
    ).json()
    ticks = [datetime.fromisoformat(t).astimezone(ZoneInfo("Europe/Paris")) for t in answer["next"]]
    assert len(ticks) == 3 and all(t.hour == 3 and t.minute == 0 for t in ticks)
    assert ticks[1].date() - ticks[0].date() == timedelta(days=1)
    bad_cron = client.get("/console/api/schedule-preview", params={"schedule": "every day"}, headers=AUTH)
    assert bad_cron.status_code == 422 and bad_cron.json()["detail"][0]["loc"] == ["query", "schedule"]
    bad_zone = client.get(
        "/console/api/schedule-preview", params={"schedule": "@daily", "time_zone": "Mars/Olympus"}, headers=AUTH
    )
    assert bad_zone.status_code == 422 and bad_zone.json()["detail"][0]["loc"] == ["query", "time_zone"]


def test_a_completed_run_is_indexed_when_it_completes(console: tuple[TestClient, FakeRuns, DictReader]) -> None:
    client, runs, reader = console
    app: Any = client.app
    location = runs.views["run-b"][0].location
    failed = ExtractionCompleted(run_id="run-x", status="FAILED", error="boom")
    for listener in app.state.run_finished_listeners:
        listener(failed)  # nothing to index
        listener(ExtractionCompleted(run_id="run-b", status="COMPLETED", location=location))
    outputs: RunOutputs = app.state.console_outputs
    deadline = time.monotonic() + 10
    while "run-b" not in outputs._indexes and time.monotonic() < deadline:
        time.sleep(0.02)
    assert set(outputs._indexes) == {"run-b"}
    reads = reader.reads
    client.get("/runs/run-b/entities", headers=AUTH).raise_for_status()
    assert reader.reads == reads, "nobody had to open the run for its index to be there"


def test_an_index_built_in_a_child_process_equals_one_built_in_process(tmp_path: Path) -> None:
    """The service builds indexes in a process of its own (the API keeps its GIL): same rows, same errors."""
    reader = DictReader()
    location = reader.publish("run-a", catalog(False), None)
    rows: list[list[tuple[Any, ...]]] = []
    for isolate in (False, True):
        outputs = RunOutputs(reader, tmp_path / f"index-{isolate}", isolate_builds=isolate)
        index = outputs.index("run-a", location)
        with sqlite3.connect(index.path) as db:
            rows.append(db.execute("SELECT * FROM entity ORDER BY qn").fetchall())
    assert rows[0] and rows[0] == rows[1]

    location_b = reader.publish("run-b", catalog(True), "run-a")
    del reader.objects[next(path for path in reader.objects if path.startswith(location_b) and ".jsonl" in path)]
    isolated = RunOutputs(reader, tmp_path / "index-broken", isolate_builds=True)
    with pytest.raises(OutputMissingError, match="listed in the manifest but missing"):
        isolated.index("run-b", location_b)
    assert not list((tmp_path / "index-broken").iterdir()), "a failed build leaves no file behind"


def warm_until_done(outputs: RunOutputs, run_id: str, location: str) -> None:
    outputs.warm(run_id, location)
    deadline = time.monotonic() + 10
    while run_id in outputs._warming and time.monotonic() < deadline:
        time.sleep(0.02)
    assert run_id not in outputs._warming


def test_a_background_index_stopped_by_shutdown_is_not_reported_as_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM reaches the index's child process with the service (a process group, a stopping stack): the run's
    index is simply built on first access later. The same broken pool outside a shutdown is still a warning."""
    reader = DictReader()
    location = reader.publish("run-a", catalog(False), None)
    drain = Drain()
    outputs = RunOutputs(reader, tmp_path / "index", isolate_builds=True, drain=drain)

    def killed(*_args: Any, **_kwargs: Any) -> None:
        raise BrokenProcessPool("A process in the process pool was terminated abruptly")

    monkeypatch.setattr(outputs, "_build", killed)
    caplog.set_level(logging.INFO, logger="pgmeta_orchestrator.console.outputs")
    warm_until_done(outputs, "run-a", location)
    assert [r.levelno for r in caplog.records] == [logging.WARNING], "a child that died on its own is a fault"

    caplog.clear()
    drain.begin(1.0)
    warm_until_done(outputs, "run-a", location)
    assert [r.levelno for r in caplog.records if r.name.endswith("outputs")] == [logging.INFO]
    assert "shutting down" in caplog.records[-1].getMessage() and not caplog.records[-1].exc_info
    assert "run-a" not in outputs._indexes, "nothing half-built is kept: the next access builds the index"


def test_ca_bundles_offer_what_sslrootcert_may_name(console: tuple[TestClient, Any, Any], tmp_path: Path) -> None:
    client, _, _ = console
    app: Any = client.app
    assert client.get("/console/api/ca-bundles", headers=AUTH).json() == {"directory_configured": False, "files": []}
    cas = tmp_path / "cas"
    (cas / "nested").mkdir(parents=True)
    for name in ("rds-global.pem", "internal-ca.crt", ".hidden.pem"):
        (cas / name).write_text("-----BEGIN CERTIFICATE-----\n")
    app.state.console_settings = OrchestratorSettings(sslrootcert_dir=cas)
    answer = client.get("/console/api/ca-bundles", headers=AUTH).json()
    assert answer == {"directory_configured": True, "files": ["internal-ca.crt", "rds-global.pem"]}


def test_an_incremental_runs_index_copies_its_carried_files_rows_from_the_earlier_index(tmp_path: Path) -> None:
    """Files an incremental run refers to in an earlier run's folder are not read again when the earlier run's
    index is there and lists the same bytes (sha256); the index is the one a full build makes."""
    reader = DictReader()
    location_a = reader.publish("run-a", catalog(False), None)
    manifest_a = orjson.loads(reader.objects[f"{location_a}/manifest.json"])
    for entry in manifest_a["files"]:
        entry["sha256"] = hashlib.sha256(reader.objects[f"{location_a}/{entry['name']}"]).hexdigest()
    reader.objects[f"{location_a}/manifest.json"] = orjson.dumps(manifest_a)
    location_c = f"{CONN}/run-c"
    carried = [f | {"folder": location_a} if f.get("type") else f for f in manifest_a["files"]]
    reader.objects[f"{location_c}/manifest.json"] = orjson.dumps(
        manifest_a | {"run_id": "run-c", "previous_run_id": "run-a", "files": carried}
    )

    outputs = RunOutputs(reader, tmp_path / "index")
    outputs.index("run-a", location_a)
    reads = reader.reads
    index_c = outputs.index("run-c", location_c)
    assert reader.reads - reads == 1, "only run-c's manifest is read: every entity file's rows come from run-a's index"

    scratch = RunOutputs(reader, tmp_path / "scratch").index("run-c", location_c)
    rows = []
    for index in (index_c, scratch):
        with sqlite3.connect(index.path) as db:
            rows.append(db.execute("SELECT * FROM entity ORDER BY qn").fetchall())
    assert rows[0] and rows[0] == rows[1]

    # Other bytes under the same name (another sha256): read and parsed, not copied.
    changed = [f | {"sha256": "0" * 64} if f.get("type") else f for f in carried]
    reader.objects[f"{CONN}/run-d/manifest.json"] = orjson.dumps(
        manifest_a | {"run_id": "run-d", "previous_run_id": "run-a", "files": changed}
    )
    reads = reader.reads
    outputs.index("run-d", f"{CONN}/run-d")
    assert reader.reads - reads == 1 + sum(1 for f in changed if f.get("type"))
