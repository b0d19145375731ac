"""The floor: the least any run costs — the extractor's own catalog reads, rows fetched and discarded.

Everything here is the extractor's code, not a copy of it: its connection (session options, read-only), its
bind parameters for a request without filters, its server-side-cursor streaming with the next query computed
ahead (``stream_queries``), and its batched view-definition reads on a second connection. A change to any of
them moves the floor with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import exc as sa_exc

from pgmeta_bench.common import BENCH_DATABASE, BenchError
from pgmeta_devstack.postgres import PostgresServer
from pgmeta_extractor.catalog_sql import CATALOG_QUERIES, SERVER_QUERY
from pgmeta_extractor.extraction import view_definitions
from pgmeta_extractor.selection import relation_params
from pgmeta_extractor.source import connect, fetch_one, stream_queries
from pgmeta_shared.events import DatabaseSelection, FilterSpec, SourceSpec


@dataclass
class FloorResult:
    seconds: float
    per_query: dict[str, float]
    rows: int


def run_floor(server: PostgresServer) -> FloorResult:
    """Runs the extractor's catalog reads for the bench database, as an unfiltered request would."""
    source = SourceSpec(
        host="127.0.0.1", port=server.port, username="postgres", database=BENCH_DATABASE, sslmode="disable"
    )
    selection = DatabaseSelection(database=BENCH_DATABASE, unit="bench")
    params = relation_params(selection, FilterSpec())
    per_query: dict[str, float] = {}
    rows = 0
    problems: list[dict[str, str]] = []
    with connect(source, lambda: server.password, BENCH_DATABASE) as connection:
        started = time.perf_counter()
        fetch_one(connection, SERVER_QUERY)
        per_query["server"] = time.perf_counter() - started
        query_started = time.perf_counter()
        for kind, streamed in stream_queries(connection, list(CATALOG_QUERIES.items()), params):
            try:
                rows += sum(1 for _ in streamed)
            except sa_exc.DBAPIError as exc:
                spent = time.perf_counter() - query_started
                raise BenchError(f"floor: the extractor's {kind!r} query failed after {spent:.1f} s: {exc}") from exc
            per_query[kind] = time.perf_counter() - query_started  # waiting for it and reading it
            query_started = time.perf_counter()
        query_started = time.perf_counter()
        rows += sum(1 for _ in view_definitions(connection, params, BENCH_DATABASE, problems))
        per_query["view definitions"] = time.perf_counter() - query_started
        seconds = time.perf_counter() - started
        connection.rollback()
    if problems:
        raise BenchError(f"floor: reading view definitions failed: {problems}")
    return FloorResult(seconds, per_query, rows)
