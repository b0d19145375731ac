"""`pgmeta-capacity` (`make capacity`): what one run costs each stage, as inputs to docs/capacity.md.

One run on the local stack (one replica per service) against the synthetic catalog of `make bench`: per stage
its span on the streams and throughput (tables/s, entities/s, output bytes/s), per process the CPU seconds the
run took (/proc utime+stime, after minus before) and peak RSS, and what the run left in Redis (memory used, stream
entries and bytes). Prints a Markdown table and a JSON line; extrapolations are left to docs/capacity.md.
With ``--replicas 1,2,3``: instead, a multi-run workload per replica count and each replica's share of it
(``pgmeta_bench.replicas``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import redis

from pgmeta_bench.catalog import CatalogShape, bench_postgres, catalog_counts
from pgmeta_bench.common import BENCH_DATABASE, BENCH_SECRET, DEFAULT_BASE_PORT
from pgmeta_bench.runners import BenchStack, peak_rss, run_entry_times, stage_times, wait_for_completion
from pgmeta_devstack.layout import StackLayout, free_port_block
from pgmeta_shared.events import TopicName

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class CapacityResult:
    tables: int
    entities: int
    output_bytes: int
    seconds: float
    stages: dict[str, float]
    cpu_seconds: dict[str, float]
    peak_rss_mb: dict[str, float]
    redis_used_memory_mb: float
    redis_peak_memory_mb: float
    stream_entries: int
    stream_bytes: int
    load_average: float


def cpu_seconds(layout: StackLayout) -> dict[str, float]:
    """Each stack process's CPU time so far (user + system), by process name."""
    used: dict[str, float] = {}
    for pid_file in sorted(layout.pids.glob("*.pid")):
        try:
            stat = Path(f"/proc/{pid_file.read_text().strip()}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        used[pid_file.stem] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return used


def stream_usage(client: redis.Redis) -> tuple[int, int]:
    """(entries, bytes) over every stream in Redis: what the run's events cost the pub/sub store."""
    entries = size = 0
    for key in cast(list[bytes], client.keys("*")):
        if client.type(key) == b"stream":
            entries += client.xlen(key)
            size += client.memory_usage(key) or 0
    return entries, size


def measure(shape: CatalogShape, cache_dir: Path, base_port: int) -> CapacityResult:
    with bench_postgres(shape, cache_dir, base_port + 1000) as server:
        tables = catalog_counts(server)["Table"]
        state = Path(tempfile.mkdtemp(prefix="pgmeta-capacity-"))
        state.chmod(0o755)
        layout = StackLayout(free_port_block(base_port), state)
        stack = BenchStack(layout, server.password)
        try:
            stack.up()
            run_id = f"capacity-{shape.key}-{int(time.time())}"
            document = {
                "request_id": run_id,
                "source": {
                    "host": "127.0.0.1",
                    "port": server.port,
                    "username": "postgres",
                    "database": BENCH_DATABASE,
                },
                "credentials": {"kind": "secret", "store": "secretstore", "key": BENCH_SECRET},
            }
            with redis.Redis(port=layout.redis_port) as client:
                before = cpu_seconds(layout)
                response = stack.publish_request(document)
                response.raise_for_status()
                completed_ms, completed = wait_for_completion(client, layout, run_id, 3600)
                after = cpu_seconds(layout)
                peaks = peak_rss(layout)
                if completed.get("status") != "COMPLETED":
                    raise RuntimeError(f"run {run_id} {completed.get('status')}: {completed.get('error')}")
                requested_ms = min(run_entry_times(client, TopicName.EXTRACTION_REQUESTED.value, run_id))
                times = stage_times(client, run_id, requested_ms, completed_ms)
                memory = cast(dict[str, Any], client.info("memory"))
                entries, stream_bytes = stream_usage(client)
            output = layout.objects / completed["location"]
            output_bytes = sum(path.stat().st_size for path in output.rglob("*") if path.is_file())
            return CapacityResult(
                tables=tables,
                entities=sum(completed["counts"].values()),
                output_bytes=output_bytes,
                seconds=(completed_ms - requested_ms) / 1000,
                stages=times.stages,
                cpu_seconds={name: round(after[name] - before.get(name, 0.0), 2) for name in after},
                peak_rss_mb={name: round(peak / 1e6) for name, peak in peaks.items()},
                redis_used_memory_mb=round(int(memory["used_memory"]) / 1e6, 1),
                redis_peak_memory_mb=round(int(memory["used_memory_peak"]) / 1e6, 1),
                stream_entries=entries,
                stream_bytes=stream_bytes,
                load_average=os.getloadavg()[0],
            )
        finally:
            stack.down()
            shutil.rmtree(state, ignore_errors=True)


def render(result: CapacityResult) -> str:
    lines = [
        f"run: {result.tables} tables, {result.entities} entities, {result.output_bytes / 1e6:.1f} MB output, "
        f"{result.seconds:.2f} s end to end (load average {result.load_average:.1f})",
        "",
        "| stage | span (s) | tables/s | entities/s | output MB/s |",
        "|---|---|---|---|---|",
    ]
    for stage, seconds in result.stages.items():
        if stage == "orchestration" or seconds <= 0:
            continue
        lines.append(
            f"| {stage} | {seconds:.2f} | {result.tables / seconds:,.0f} | {result.entities / seconds:,.0f} | "
            f"{result.output_bytes / 1e6 / seconds:.1f} |"
        )
    lines += ["", "| process | CPU-s this run | peak RSS MB |", "|---|---|---|"]
    for name in sorted(result.cpu_seconds):
        lines.append(f"| {name} | {result.cpu_seconds[name]:.2f} | {result.peak_rss_mb.get(name, 0):.0f} |")
    lines += [
        "",
        f"Redis: used {result.redis_used_memory_mb} MB after the run (peak {result.redis_peak_memory_mb} MB); "
        f"streams {result.stream_entries} entries, {result.stream_bytes / 1e6:.2f} MB",
    ]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pgmeta-capacity", description=__doc__)
    parser.add_argument("--schemas", type=int, default=50)
    parser.add_argument("--tables", type=int, default=200, help="tables per schema")
    parser.add_argument("--columns", type=int, default=20, help="columns per table")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pgmeta" / "bench")
    parser.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    parser.add_argument(
        "--replicas",
        default="",
        help="instead of one run: the multi-run workload with these replica counts per stage, e.g. 1,2,3",
    )
    parser.add_argument("--databases", type=int, default=3, help="with --replicas: copies of the catalog")
    parser.add_argument("--runs", type=int, default=2, help="with --replicas: runs submitted at once")
    args = parser.parse_args(argv)
    shape = CatalogShape(args.schemas, args.tables, args.columns)
    cache_dir = args.cache_dir.expanduser().resolve()
    if args.replicas:
        from pgmeta_bench.replicas import measure_series, render_series, series_json

        counts = [int(n) for n in args.replicas.split(",")]
        points = measure_series(shape, cache_dir, args.base_port, counts, args.databases, args.runs)
        sys.stdout.write(render_series(points) + "\n\n" + series_json(points) + "\n")
        return
    result = measure(shape, cache_dir, args.base_port)
    sys.stdout.write(render(result) + "\n\n" + json.dumps(asdict(result)) + "\n")
