"""How fast the console's pages render for a run the size of the benchmark catalog (10,000 tables).

Two published runs shaped like `pgmeta-bench`'s catalog (50 schemas x 200 tables x 20 columns, a view per
10 tables with its lineage; the second run has one more column) are served from memory by the console's
real routes (uvicorn on loopback); Debian's Chromium opens each page and the time until its content shows
is printed (median and worst of three), with the one-off index build.

    uv run --frozen python -m tests.browser.bench_console [--schemas 50 --tables 200 --columns 20]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from pgmeta_orchestrator.console import include_console
from pgmeta_orchestrator.console.outputs import RunOutputs, encode_cursor
from pgmeta_orchestrator.runs import RunView
from pgmeta_orchestrator.settings import OrchestratorSettings
from tests.browser.test_console import CHROMIUM, CHROMIUM_ARGS
from tests.unit.api_harness import admit_bootstrap_admin
from tests.unit.test_console import CONN, DictReader, ref


def bench_catalog(schemas: int, tables: int, columns: int, extra_column: bool) -> list[dict[str, Any]]:
    db = f"{CONN}/bench"
    entities: list[dict[str, Any]] = [{"typeName": "Database", "attributes": {"qualifiedName": db, "name": "bench"}}]
    for s in range(schemas):
        schema = f"{db}/s{s:03d}"
        entities.append(
            {
                "typeName": "Schema",
                "attributes": {"qualifiedName": schema, "name": f"s{s:03d}", "database": ref("Database", db)},
            }
        )
        for t in range(tables):
            table = f"{schema}/t{t:04d}"
            count = columns + (1 if extra_column and s == 0 and t == 0 else 0)
            common = {
                "connectionQualifiedName": CONN,
                "connectorName": "postgres",
                "databaseName": "bench",
                "schemaName": f"s{s:03d}",
                "schemaQualifiedName": schema,
                "description": f"table {t} of {s}",
            }
            entities.append(
                {
                    "typeName": "Table",
                    "attributes": {
                        "qualifiedName": table,
                        "name": f"t{t:04d}",
                        "columnCount": count,
                        "rowCount": 0,
                        "atlanSchema": ref("Schema", schema),
                        **common,
                    },
                }
            )
            for c in range(count):
                entities.append(
                    {
                        "typeName": "Column",
                        "attributes": {
                            "qualifiedName": f"{table}/c{c:02d}",
                            "name": f"c{c:02d}",
                            "order": c + 1,
                            "dataType": "text",
                            "isNullable": True,
                            "table": ref("Table", table),
                            **common,
                        },
                    }
                )
            if t % 10 == 0:
                view = f"{schema}/v{t:04d}"
                entities.append(
                    {
                        "typeName": "View",
                        "attributes": {
                            "qualifiedName": view,
                            "name": f"v{t:04d}",
                            "atlanSchema": ref("Schema", schema),
                            **common,
                        },
                    }
                )
                entities.append(
                    {
                        "typeName": "Process",
                        "attributes": {
                            "qualifiedName": f"{view}/_lineage_",
                            "name": f"v{t:04d}",
                            "inputs": [ref("Table", table)],
                            "outputs": [ref("View", view)],
                        },
                    }
                )
    return entities


class StaticRuns:
    def __init__(self, views: dict[str, RunView]) -> None:
        self.views = views

    def view(self, run_id: str) -> RunView | None:
        return self.views.get(run_id)

    def request_of(self, run_id: str) -> dict[str, Any] | None:
        return {"source": {"host": "bench", "port": 5432, "username": "postgres", "database": "bench"}}

    def recent(self, limit: int) -> list[RunView]:
        return list(self.views.values())[:limit]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemas", type=int, default=50)
    parser.add_argument("--tables", type=int, default=200)
    parser.add_argument("--columns", type=int, default=20)
    args = parser.parse_args()

    reader = DictReader()
    views = {}
    for run_id, extra, previous in (("run-base", False, None), ("run-head", True, "run-base")):
        entities = bench_catalog(args.schemas, args.tables, args.columns, extra)
        views[run_id] = RunView(
            run_id=run_id, status="COMPLETED", location=reader.publish(run_id, entities, previous, lines_per_file=3000)
        )
    print(f"catalog: {len(entities):,} entities per run")  # noqa: T201

    app = FastAPI()
    include_console(app, OrchestratorSettings())
    app.state.runs = StaticRuns(views)
    headers = admit_bootstrap_admin(app)  # every console route needs a caller with a role
    token = headers["Authorization"].removeprefix("Bearer ")
    index_dir = Path(tempfile.mkdtemp(prefix="pgmeta-console-bench-"))  # ~170 MB: removed at the end
    outputs = RunOutputs(reader, index_dir)
    app.state.console_outputs = outputs
    for run_id, view in views.items():
        started = time.perf_counter()
        outputs.index(run_id, view.location or "")
        print(f"index build {run_id}: {time.perf_counter() - started:.2f} s (once per run and replica)")  # noqa: T201

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}/console/"
    # A page in the middle of the columns (sorted by name, then qualifiedName): right after the last column
    # named like the middle one. Pages are cursors; this is the cursor the Next button would carry there.
    middle_name = f"c{args.columns // 2 - 1:02d}"
    last_qn = f"{CONN}/bench/s{args.schemas - 1:03d}/t{args.tables - 1:04d}/{middle_name}"
    term = f"t{min(15, args.tables - 1):04d}"  # a table name in every schema (t0015 at full size)
    middle = encode_cursor((middle_name, last_qn), args.schemas * args.tables * (args.columns // 2))
    table = f"{CONN}/bench/s{args.schemas // 2:03d}/t{args.tables // 2:04d}"
    view_qn = f"{CONN}/bench/s{args.schemas // 2:03d}/v{args.tables // 20 * 10:04d}"
    pages = [
        ("runs list", "#/runs", "main table"),
        ("run overview", "#/runs/run-head", "#changes"),
        ("entities, first page", "#/runs/run-head/entities", "main table"),
        (f"entities, search '{term}'", f"#/runs/run-head/entities?q={term}", "main table"),
        ("entities, Columns, middle page", f"#/runs/run-head/entities?q=&type=Column&after={middle}", "main table"),
        ("table with 20 columns", f"#/runs/run-head/entity?qn={table}", "#children table"),
        ("view with lineage", f"#/runs/run-head/entity?qn={view_qn}", "#lineage"),
        ("compare, updated", "#/runs/run-head/compare?base=run-base&kind=updated", "#compare-items table"),
        ("compare, created", "#/runs/run-head/compare?base=run-base&kind=created", "#compare-items table"),
    ]
    api_calls = [
        ("runs list", "console/api/runs"),
        ("run", "console/api/runs/run-head"),
        ("entities, first page", "runs/run-head/entities"),
        ("entities, search", f"runs/run-head/entities?q={term}"),
        ("entities, Columns, middle page", f"runs/run-head/entities?type=Column&after={middle}"),
        ("table with its columns", f"runs/run-head/entity?qualified_name={table}"),
        ("compare, updated", "runs/run-head/compare?base=run-base&kind=updated"),
        ("compare, created", "runs/run-head/compare?base=run-base&kind=created"),
    ]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/", headers=headers, timeout=120) as client:
        for label, path in api_calls:
            times = []
            for _ in range(5):
                started = time.perf_counter()
                client.get(path).raise_for_status()
                times.append(time.perf_counter() - started)
            print(f"API {label:<32} median {1000 * statistics.median(times):6.0f} ms")  # noqa: T201

    from playwright.sync_api import sync_playwright

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(base + "#/sign-in")
            page.evaluate("token => sessionStorage.setItem('pgmeta.token', token)", token)
            for label, fragment, ready in pages:
                times = []
                for _ in range(3):
                    page.goto("about:blank")
                    started = time.perf_counter()
                    page.goto(base + fragment)
                    page.locator(ready).first.wait_for(timeout=30_000)
                    times.append(time.perf_counter() - started)
                shown = f"median {1000 * statistics.median(times):6.0f} ms, max {1000 * max(times):6.0f} ms"
                print(f"page {label:<31} {shown}")  # noqa: T201
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        shutil.rmtree(index_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
