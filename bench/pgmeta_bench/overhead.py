"""`pgmeta-bench --telemetry-ab N`: what tracing and metrics cost a run, telemetry on against off.

Each pair runs the same catalog twice on fresh stacks, once with telemetry on (Zipkin running, every sidecar
sampling at 1, every service exporting spans and serving metrics) and once off (`PGMETA_TRACING=off`: no
Zipkin, sidecars sampling 0; `OTEL_SDK_DISABLED=true`: the services create no spans and no metrics). The order
alternates (on-off, off-on, …) so that a drift in the machine's load falls on both sides alike, and each pair
gives one ratio. The cost is read in CPU seconds of pgmeta's own processes (the four services, their sidecars,
Redis; /proc utime+stime over the run), which other work on the machine disturbs far less than wall time;
Zipkin's own CPU is the backend's, reported apart.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass

from pgmeta_bench.catalog import bench_postgres, catalog_counts
from pgmeta_bench.common import say
from pgmeta_bench.config import BenchConfig
from pgmeta_bench.runners import check_counts, run_pgmeta
from pgmeta_devstack.postgres import PostgresServer
from pgmeta_devstack.tracing import ZIPKIN

TELEMETRY_ON = {"PGMETA_TRACING": "on", "OTEL_SDK_DISABLED": "false"}
TELEMETRY_OFF = {"PGMETA_TRACING": "off", "OTEL_SDK_DISABLED": "true"}
# Not pgmeta's cost: the trace backend's, and the source database's (the same queries either way).
NOT_PGMETA = {ZIPKIN, "source-postgres"}
OVERHEAD_TARGET = 0.03


@contextlib.contextmanager
def environment(overrides: dict[str, str]) -> Iterator[None]:
    """``overrides`` in os.environ while a stack starts (the stack passes its environment to every process)."""
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass(frozen=True)
class Sample:
    telemetry: bool
    wall: float
    cpu: float  # pgmeta's processes, over the run
    zipkin_cpu: float
    load: float
    per_process: dict[str, float]  # CPU seconds over the run, by process (where the difference sits)


@dataclass(frozen=True)
class Spread:
    median: float
    low: float
    high: float
    mean: float
    ci95: tuple[float, float]  # of the mean, Student's t


# Two-sided 95 % quantiles of Student's t for small samples (n - 1 degrees of freedom).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def spread(values: list[float]) -> Spread:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Spread(values[0], values[0], values[0], mean, (math.nan, math.nan))
    half = _T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return Spread(statistics.median(values), min(values), max(values), mean, (mean - half, mean + half))


def measure_one(
    server: PostgresServer, catalog: dict[str, int], config: BenchConfig, pair: int, telemetry: bool
) -> Sample:
    label = "on" if telemetry else "off"
    say(f"pair {pair}: telemetry {label}")
    with environment(TELEMETRY_ON if telemetry else TELEMETRY_OFF):
        result = run_pgmeta(server, config.shape, config, pair * 10 + int(telemetry))
    check_counts(result.counts, catalog, config.shape)
    cpu = sum(seconds for name, seconds in result.cpu_seconds.items() if name not in NOT_PGMETA)
    sample = Sample(
        telemetry, result.seconds, cpu, result.cpu_seconds.get(ZIPKIN, 0.0), os.getloadavg()[0], result.cpu_seconds
    )
    say(f"pair {pair} {label}: {sample.wall:.2f} s wall, {sample.cpu:.2f} CPU-s (Zipkin {sample.zipkin_cpu:.2f})")
    return sample


def run_overhead(config: BenchConfig, pairs: int) -> list[tuple[Sample, Sample]]:
    """``pairs`` (on, off) samples on one catalog, the order alternating from pair to pair."""
    results: list[tuple[Sample, Sample]] = []
    with bench_postgres(config.shape, config.cache_dir, config.base_port + 1000) as server:
        catalog = catalog_counts(server)
        for pair in range(1, pairs + 1):
            order = (True, False) if pair % 2 else (False, True)
            samples = {telemetry: measure_one(server, catalog, config, pair, telemetry) for telemetry in order}
            results.append((samples[True], samples[False]))
    return results


def render_overhead(config: BenchConfig, results: list[tuple[Sample, Sample]]) -> str:
    cpu = spread([on.cpu / off.cpu for on, off in results])
    wall = spread([on.wall / off.wall for on, off in results])
    rows = [
        "| pair | order | on: wall, CPU-s (Zipkin) | off: wall, CPU-s | CPU on/off | wall on/off | load |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, (on, off) in enumerate(results, 1):
        order = "on, off" if index % 2 else "off, on"
        rows.append(
            f"| {index} | {order} | {on.wall:.2f} s, {on.cpu:.2f} ({on.zipkin_cpu:.2f}) | {off.wall:.2f} s, "
            f"{off.cpu:.2f} | {on.cpu / off.cpu:.3f} | {on.wall / off.wall:.3f} | {max(on.load, off.load):.1f} |"
        )

    def line(name: str, s: Spread) -> str:
        return (
            f"{name} on/off: median {s.median:.3f} (range {s.low:.3f}–{s.high:.3f}), mean {s.mean:.3f}, "
            f"95 % CI of the mean {s.ci95[0]:.3f}–{s.ci95[1]:.3f}"
        )

    processes = sorted({name for on, off in results for name in on.per_process | off.per_process} - NOT_PGMETA)
    by_process = ["| process | CPU-s on (median) | CPU-s off (median) |", "|---|---|---|"]
    for name in processes:
        on_cpu = statistics.median(on.per_process.get(name, 0.0) for on, _ in results)
        off_cpu = statistics.median(off.per_process.get(name, 0.0) for _, off in results)
        by_process.append(f"| {name} | {on_cpu:.2f} | {off_cpu:.2f} |")
    verdict = "within" if cpu.ci95[1] <= 1 + OVERHEAD_TARGET else "NOT shown within"
    return "\n".join(
        [
            f"catalog {config.shape.key}, {len(results)} pairs, each run on a fresh stack",
            "",
            *rows,
            "",
            line("CPU (pgmeta's processes)", cpu),
            line("wall", wall),
            "",
            *by_process,
            "",
            f"telemetry overhead {verdict} the {OVERHEAD_TARGET:.0%} target (CPU, upper end of the 95 % CI)",
        ]
    )
