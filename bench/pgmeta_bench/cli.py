"""`pgmeta-bench` (`make bench`): pgmeta end to end against the bare catalog queries and DataHub, one catalog.

Each repetition measures, on the same synthetic catalog: the floor (the extractor's own catalog SQL through
server-side cursors, rows discarded), pgmeta through a freshly started local stack (event in, entities out),
and DataHub's `postgres` source with a file sink. Every mode checks that pgmeta's entity counts equal what
pg_catalog holds, and fails loudly when they do not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from pgmeta_bench.catalog import CatalogShape, bench_postgres, catalog_counts
from pgmeta_bench.common import (
    DEFAULT_BASE_PORT,
    BenchError,
    say,
)
from pgmeta_bench.config import BenchConfig
from pgmeta_bench.floor import run_floor
from pgmeta_bench.overhead import render_overhead, run_overhead
from pgmeta_bench.report import (
    BenchReport,
    Repetition,
    describe_machine,
    mb,
    render_failure,
    render_section,
    render_table,
    update_doc,
)
from pgmeta_bench.rerun import render_reruns, run_reruns
from pgmeta_bench.runners import (
    check_counts,
    ensure_datahub,
    run_datahub,
    run_pgmeta,
)
from pgmeta_devstack.layout import dapr_bin_dir, repo_root
from pgmeta_devstack.processes import StackError


def _timings(seconds: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f} s" for name, value in seconds.items())


def run_benchmark(config: BenchConfig) -> BenchReport:
    """All repetitions on one catalog; raises BenchError on a failed run or a wrong count."""
    shape = config.shape
    for binary in ("daprd", "placement", "scheduler"):
        if not (dapr_bin_dir() / binary).exists():
            raise BenchError(f"{dapr_bin_dir() / binary} is missing: run `make dapr`")
    datahub = ensure_datahub(config.cache_dir) if config.datahub else None
    # The bench PostgreSQL's port is searched for 1000 ports above the stack's, outside any stack's block.
    with bench_postgres(shape, config.cache_dir, config.base_port + 1000) as server:
        catalog = catalog_counts(server)
        report = BenchReport(config, describe_machine(server), catalog)
        load = os.getloadavg()[0]
        if load > 1.0:
            say(f"WARNING: load average {load:.1f} before the first run: other work on this machine skews the numbers")
        run_floor(server)  # warm-up, not counted: every measured run finds the catalog in the page cache
        for repetition in range(1, config.repeat + 1):
            say(f"repetition {repetition}/{config.repeat} on {shape.key}")
            floor = run_floor(server)
            say(f"floor: {floor.seconds:.2f} s ({_timings(floor.per_query)})")
            pgmeta = run_pgmeta(server, shape, config, repetition)
            say(f"pgmeta: {pgmeta.seconds:.2f} s ({_timings(pgmeta.stages)}; hand-offs {_timings(pgmeta.handoffs)})")
            check_counts(pgmeta.counts, catalog, shape)
            say("correctness check passed: pgmeta's entity counts equal pg_catalog's")
            datahub_result = None
            if datahub is not None:
                datahub_result = run_datahub(
                    datahub, server, config.cache_dir / "logs" / f"datahub-{shape.key}-{repetition}.log"
                )
                say(f"DataHub: {datahub_result.seconds:.2f} s, peak RSS {mb(datahub_result.peak_rss)}")
            report.repetitions.append(Repetition(floor, pgmeta, datahub_result, os.getloadavg()[0]))
    return report


def parse_args(argv: list[str] | None) -> BenchConfig:
    parser = argparse.ArgumentParser(prog="pgmeta-bench", description=__doc__)
    parser.add_argument("--schemas", type=int, default=50)
    parser.add_argument("--tables", type=int, default=200, help="tables per schema")
    parser.add_argument("--columns", type=int, default=20, help="columns per table")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; medians are reported")
    parser.add_argument("--datahub", type=int, choices=(0, 1), default=1, help="1 to run DataHub too")
    parser.add_argument("--quick", action="store_true", help="2 x 10 x 5, one repetition, no DataHub (CI smoke)")
    parser.add_argument(
        "--output", type=Path, help="Markdown file to update (default docs/benchmarks.md, not in --quick)"
    )
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pgmeta" / "bench")
    parser.add_argument(
        "--base-port",
        type=int,
        default=DEFAULT_BASE_PORT,
        help="first port block to try for the stack; the bench PostgreSQL's port is searched from 1000 above",
    )
    parser.add_argument("--stage-timeout", type=int, default=3600, help="per-stage limit given to pgmeta (s)")
    parser.add_argument("--keep-state", action="store_true", help="keep each stack's state, logs and output")
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="measure incremental re-runs (nothing changed, one table changed) against a --full run, CLI included",
    )
    parser.add_argument(
        "--telemetry-ab",
        type=int,
        default=0,
        metavar="PAIRS",
        help="instead of the comparison: PAIRS runs with telemetry on and off, interleaved; prints the cost",
    )
    args = parser.parse_args(argv)
    if args.quick:
        shape, repeat, datahub = CatalogShape(2, 10, 5), 1, False
        output = args.output
    else:
        shape, repeat, datahub = CatalogShape(args.schemas, args.tables, args.columns), args.repeat, bool(args.datahub)
        output = args.output or repo_root() / "docs" / "benchmarks.md"
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    return BenchConfig(
        shape=shape,
        repeat=repeat,
        datahub=datahub,
        cache_dir=args.cache_dir.expanduser().resolve(),
        output=output,
        base_port=args.base_port,
        stage_timeout=args.stage_timeout,
        timeout=4 * args.stage_timeout,
        keep_state=args.keep_state,
        rerun=args.rerun,
        telemetry_pairs=args.telemetry_ab,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ValueError as exc:
        print(f"[bench] ERROR: {exc}", file=sys.stderr)
        return 2
    if config.rerun:
        return rerun_main(config)
    if config.telemetry_pairs:
        return telemetry_ab(config)
    try:
        report = run_benchmark(config)
    except (BenchError, StackError, subprocess.CalledProcessError) as exc:
        print(f"[bench] FAILED: {exc}", file=sys.stderr)
        if config.output is not None and isinstance(exc, BenchError):
            # A size pgmeta cannot handle is a result too: the document says so instead of keeping stale numbers.
            update_doc(config.output, config.shape.key, render_failure(config, exc))
            say(f"failure written to {config.output}")
        return 1
    table = render_table(report)
    print()
    print("\n".join(f"{k}: {v}" for k, v in report.machine))
    print()
    print(table)
    print()
    say("correctness check passed" if report.correct else "correctness check FAILED")
    if config.output is not None:
        update_doc(config.output, config.shape.key, render_section(report, table))
        say(f"results written to {config.output}")
    return 0 if report.correct else 1


def rerun_main(config: BenchConfig) -> int:
    try:
        with bench_postgres(config.shape, config.cache_dir, config.base_port + 1000) as server:
            catalog = catalog_counts(server)
            machine = describe_machine(server)
            results = run_reruns(server, config.shape, config, catalog)
    except (BenchError, StackError, subprocess.CalledProcessError) as exc:
        print(f"[bench] FAILED: {exc}", file=sys.stderr)
        return 1
    section = render_reruns(config.shape, results, machine)
    print()
    print(section)
    if config.output is not None:
        update_doc(config.output, f"rerun-{config.shape.key}", section)
        say(f"results written to {config.output}")
    return 0


def telemetry_ab(config: BenchConfig) -> int:
    """The --telemetry-ab mode: prints the table and the on/off ratios; documents nothing by itself."""
    try:
        results = run_overhead(config, config.telemetry_pairs)
    except (BenchError, StackError, subprocess.CalledProcessError) as exc:
        print(f"[bench] FAILED: {exc}", file=sys.stderr)
        return 1
    print()
    print(render_overhead(config, results))
    return 0


def run() -> None:
    sys.exit(main())
