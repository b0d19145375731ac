"""What each of the extractor's queries costs the source PostgreSQL, on the cached bench catalog.

``python -m pgmeta_bench.query_cost [--schemas S --tables T --columns C] [--only SCHEMA ...]``: every query a run
sends (preflight's count, the change fingerprints, the extract's count, the catalog queries, the view-definition
batches; with ``--only``, as an incremental run that reads just those schemas sends them), one
after the other through the extractor's own ``connect`` and ``stream_rows``, rows fetched and discarded. Each
line is the server's CPU seconds over that query (postmaster, live and reaped backends, parallel workers, from
``/proc``) and its wall time: CPU seconds hold up on a shared machine, wall times do not.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from pgmeta_bench.catalog import CatalogShape, bench_postgres
from pgmeta_bench.common import BENCH_DATABASE, DEFAULT_BASE_PORT, BenchError, say
from pgmeta_bench.runners import postmaster_pid, server_cpu_seconds
from pgmeta_devstack.postgres import PostgresServer
from pgmeta_extractor.catalog_sql import CATALOG_QUERIES, COUNT_QUERY
from pgmeta_extractor.change_sql import schema_fingerprints_query
from pgmeta_extractor.extraction import schema_params, view_definitions
from pgmeta_extractor.selection import relation_params
from pgmeta_extractor.source import connect, fetch_one, server_version_num, stream_rows
from pgmeta_shared.events import DatabaseSelection, FilterSpec, SourceSpec


def measure_queries(server: PostgresServer, only: list[str] | None = None) -> list[tuple[str, float, float]]:
    """(query, server CPU seconds, wall seconds) for every query of an unfiltered run, in run order: a full run,
    or with ``only`` an incremental run reading those schemas."""
    pid = postmaster_pid(server)
    if pid is None:
        raise BenchError(f"no postmaster.pid in {server.data_dir}")
    source = SourceSpec(
        host="127.0.0.1", port=server.port, username="postgres", database=BENCH_DATABASE, sslmode="disable"
    )
    selection = DatabaseSelection(database=BENCH_DATABASE, unit="bench")
    params = relation_params(selection, FilterSpec()) | {"only_schemas": only}
    schemas = schema_params(selection, FilterSpec())
    results: list[tuple[str, float, float]] = []
    with connect(source, lambda: server.password, BENCH_DATABASE) as connection:

        def measured(name: str, read: Callable[[], object]) -> None:
            cpu_before, started = server_cpu_seconds(pid), time.perf_counter()
            read()
            wall = time.perf_counter() - started
            time.sleep(0.05)  # a backend's last CPU ticks reach /proc a moment after its answer
            results.append((name, server_cpu_seconds(pid) - cpu_before, wall))

        def catalog_rows(sql: str) -> Callable[[], int]:
            def read() -> int:
                with connection.begin_nested():
                    return sum(1 for _ in stream_rows(connection, sql, params))

            return read

        measured("COUNT_QUERY (preflight)", lambda: fetch_one(connection, COUNT_QUERY, params))
        measured(
            "SCHEMA_FINGERPRINTS_QUERY",
            lambda: sum(
                1 for _ in stream_rows(connection, schema_fingerprints_query(server_version_num(connection)), schemas)
            ),
        )
        measured("COUNT_QUERY (extract)", lambda: fetch_one(connection, COUNT_QUERY, params))
        for kind, sql in CATALOG_QUERIES.items():
            measured(kind, catalog_rows(sql))
        problems: list[dict[str, str]] = []
        measured(
            "view definitions", lambda: sum(1 for _ in view_definitions(connection, params, BENCH_DATABASE, problems))
        )
        connection.rollback()
    if problems:
        raise BenchError(f"reading view definitions failed: {problems}")
    return results


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pgmeta_bench.query_cost", description=__doc__)
    parser.add_argument("--schemas", type=int, default=50)
    parser.add_argument("--tables", type=int, default=200, help="tables per schema")
    parser.add_argument("--columns", type=int, default=20, help="columns per table")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pgmeta" / "bench")
    parser.add_argument("--only", nargs="+", metavar="SCHEMA", help="the schemas an incremental run reads")
    args = parser.parse_args(argv)
    shape = CatalogShape(args.schemas, args.tables, args.columns)
    with bench_postgres(shape, args.cache_dir.expanduser().resolve(), DEFAULT_BASE_PORT + 1000) as server:
        say(f"load average before: {os.getloadavg()[0]:.2f}")
        results = measure_queries(server, args.only)
        say(f"load average after: {os.getloadavg()[0]:.2f}")
    for name, cpu, wall in results:
        print(f"{name:28s} {cpu:6.2f} CPU-s {wall * 1000:8.0f} ms wall")
    total_cpu, total_wall = sum(r[1] for r in results), sum(r[2] for r in results)
    print(f"{'total':28s} {total_cpu:6.2f} CPU-s {total_wall * 1000:8.0f} ms wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
