"""`pgmeta-bench --rerun`: incremental re-runs against a full run, measured in the same stack, as a user runs them.

Each run is `pgmeta extract --wait --json` (the CLI included in the wall time). In order: the first run (no
baseline: every schema read), a re-run with nothing changed, a re-run after one table's comment changed in one
schema, and a `--full` run (every schema read again, with the same baseline): the reference the re-runs are
compared with. Every run's entity counts are checked against pg_catalog; the no-change run must report 0
created / updated / deleted, the one-table run exactly one updated entity and one schema read. The changed
comment is put back afterwards (the cached catalog is shared by every bench).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from pgmeta_bench.catalog import CatalogShape
from pgmeta_bench.common import BENCH_CONNECTION, BENCH_DATABASE, BENCH_SECRET, BenchError, say
from pgmeta_bench.config import BenchConfig
from pgmeta_bench.runners import BenchStack, check_counts, cpu_delta, cpu_snapshot, postmaster_pid
from pgmeta_devstack.layout import StackLayout, free_port_block
from pgmeta_devstack.postgres import PostgresServer

CHANGED_SCHEMA = "s0000"


@dataclass(frozen=True)
class RerunResult:
    name: str
    wall_seconds: float
    cpu_seconds: dict[str, float]  # per process over the run, the CLI included
    summary: dict[str, Any]

    @property
    def cpu_total(self) -> float:
        return sum(self.cpu_seconds.values())


def _first_table(server: PostgresServer) -> tuple[str, str | None]:
    with psycopg.connect(**server.connect_kwargs(BENCH_DATABASE)) as conn:
        row = conn.execute(
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' "
            "ORDER BY c.relname LIMIT 1",
            (CHANGED_SCHEMA,),
        ).fetchone()
    if row is None:
        raise BenchError(f"schema {CHANGED_SCHEMA} has no table to change")
    return str(row[0]), row[1]


def _comment(server: PostgresServer, table: str, comment: str | None) -> None:
    with psycopg.connect(**server.connect_kwargs(BENCH_DATABASE), autocommit=True) as conn:
        literal = "NULL" if comment is None else "'" + comment.replace("'", "''") + "'"
        conn.execute(f'COMMENT ON TABLE {CHANGED_SCHEMA}."{table}" IS {literal}')


def _cli_run(
    stack: BenchStack, server: PostgresServer, name: str, request_id: str, full: bool, timeout: float
) -> RerunResult:
    layout = stack.layout
    cli = Path(sys.executable).parent / "pgmeta"
    command = [
        str(cli), "extract", "--connection", BENCH_CONNECTION, "--request-id", request_id,
        "--wait", "--json", "--timeout", str(timeout),
    ] + (["--full"] if full else [])  # fmt: skip
    env = stack.cli_env()
    postgres_pid = postmaster_pid(server)
    before = cpu_snapshot(layout, postgres_pid)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout + 60)
    wall = time.monotonic() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = cpu_delta(before, cpu_snapshot(layout, postgres_pid))
    cpu["cli"] = (children.ru_utime - children_before.ru_utime) + (children.ru_stime - children_before.ru_stime)
    if done.returncode != 0:
        raise BenchError(f"{name}: pgmeta extract exited {done.returncode}: {done.stdout[-500:]} {done.stderr[-500:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    if summary.get("status") != "COMPLETED":
        raise BenchError(f"{name}: run {request_id} {summary.get('status')}: {summary.get('error')}")
    return RerunResult(name, wall, cpu, summary)


def run_reruns(
    server: PostgresServer, shape: CatalogShape, config: BenchConfig, catalog: dict[str, int]
) -> list[RerunResult]:
    """The four runs in one fresh stack; raises BenchError when a run fails or reports the wrong thing."""
    state = Path(tempfile.mkdtemp(prefix="pgmeta-bench-rerun-"))
    state.chmod(0o755)
    layout = StackLayout(free_port_block(config.base_port), state)
    stack = BenchStack(layout, server.password)
    table, original_comment = _first_table(server)
    stamp = int(time.time())
    results: list[RerunResult] = []
    succeeded = False
    try:
        stack.up()
        # A user runs a registered connection (`pgmeta connections add`): the bench server and its secret.
        stack.register_connection(BENCH_CONNECTION, BENCH_DATABASE, BENCH_SECRET, port=server.port)
        say(f"stack up on ports {layout.base_port}+ (state in {state})")

        def measured(name: str, full: bool = False) -> RerunResult:
            result = _cli_run(stack, server, name, f"rerun-{shape.key}-{stamp}-{len(results)}", full, config.timeout)
            check_counts(result.summary["counts"], catalog, shape)
            say(
                f"{name}: {result.wall_seconds:.2f} s wall, {result.cpu_total:.2f} CPU-s; "
                f"schemas {result.summary.get('schemas')}; changes {result.summary.get('changes')}"
            )
            results.append(result)
            return result

        measured("first run (no baseline)")
        unchanged = measured("re-run, nothing changed")
        if unchanged.summary["schemas"].get("extracted") != 0:
            raise BenchError(f"the no-change re-run read schemas: {unchanged.summary['schemas']}")
        if any(unchanged.summary["changes"].get(k) for k in ("created", "updated", "deleted")):
            raise BenchError(f"the no-change re-run reported changes: {unchanged.summary['changes']}")
        _comment(server, table, f"changed by pgmeta-bench at {stamp}")
        try:
            one = measured(f"re-run, one table changed ({CHANGED_SCHEMA}.{table} comment)")
        finally:
            _comment(server, table, original_comment)
        if one.summary["schemas"].get("extracted") != 1:
            raise BenchError(f"the one-table re-run read {one.summary['schemas']} schemas, not 1")
        changes = one.summary["changes"]
        if (changes.get("created"), changes.get("updated"), changes.get("deleted")) != (0, 1, 0):
            raise BenchError(f"the one-table re-run reported {changes}, not exactly 1 updated")
        measured("full run (--full, same stack)", full=True)
        succeeded = True
        return results
    finally:
        stack.down()
        if succeeded and not config.keep_state:
            shutil.rmtree(state, ignore_errors=True)
        else:
            say(f"stack state, logs and output kept in {state}")


def render_reruns(shape: CatalogShape, results: list[RerunResult], machine: list[tuple[str, str]]) -> str:
    full = results[-1]
    lines = [
        f"## Incremental re-runs: {shape.schemas} schemas x {shape.tables} tables x {shape.columns} columns",
        "",
        "`pgmeta extract --wait --json` wall time (CLI included) and CPU seconds of every process (stack, source",
        "PostgreSQL, CLI), each run measured once in one stack; ratios against the `--full` run of the same stack.",
        "",
        "\n".join(f"- {k}: {v}" for k, v in machine),
        "",
        "| run | wall | vs full | CPU-s | vs full | schemas read / skipped | created / updated / unchanged / deleted |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for result in results:
        schemas = result.summary.get("schemas") or {}
        changes = result.summary.get("changes") or {}
        lines.append(
            f"| {result.name} | {result.wall_seconds:.2f} s | {result.wall_seconds / full.wall_seconds:.2f} | "
            f"{result.cpu_total:.2f} | {result.cpu_total / full.cpu_total:.2f} | "
            f"{schemas.get('extracted', '?')} / {schemas.get('skipped', '?')} | "
            + " / ".join(str(changes.get(k, 0)) for k in ("created", "updated", "unchanged", "deleted"))
            + " |"
        )
    lines += ["", "CPU seconds per process:", ""]
    names = sorted({name for result in results for name in result.cpu_seconds})
    lines.append("| process | " + " | ".join(result.name for result in results) + " |")
    lines.append("|---|" + "---:|" * len(results))
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{r.cpu_seconds.get(name, 0.0):.2f}" for r in results) + " |")
    return "\n".join(lines) + "\n"
