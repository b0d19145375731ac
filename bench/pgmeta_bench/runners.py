"""The two measured runs besides the floor: pgmeta through a fresh local stack, and DataHub's `datahub ingest`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

from pgmeta_bench.catalog import CatalogShape
from pgmeta_bench.common import (
    BENCH_DATABASE,
    BENCH_SECRET,
    DATAHUB_SPEC,
    PIPELINE_STAGES,
    REQUIRED_STAGES,
    BenchError,
    say,
)
from pgmeta_bench.config import BenchConfig
from pgmeta_devstack.layout import StackLayout, free_port_block
from pgmeta_devstack.postgres import PostgresServer
from pgmeta_devstack.processes import alive
from pgmeta_devstack.stack import LocalStack
from pgmeta_shared.events import TopicName

# -- pgmeta end to end -------------------------------------------------------------------------------------


class BenchStack(LocalStack):
    """The local stack with the bench database's password as one more entry of the ``secretstore`` file.

    The file is read once by daprd at start-up, so the entry must be there before the sidecars start.
    """

    def __init__(self, layout: StackLayout, bench_password: str) -> None:
        super().__init__(layout)
        self._bench_password = bench_password

    def write_secretstore(self) -> None:
        super().write_secretstore()
        self.add_bench_secret(self.state, self._bench_password)

    @staticmethod
    def add_bench_secret(state: Path, bench_password: str) -> None:
        path = state / "secrets.json"
        entries = json.loads(path.read_text())
        entries[BENCH_SECRET] = {"username": "postgres", "password": bench_password}
        path.write_text(json.dumps(entries, indent=2))


@dataclass
class PgmetaResult:
    seconds: float
    stages: dict[str, float]
    handoffs: dict[str, float]
    counts: dict[str, int]
    peak_rss: dict[str, int]
    location: str
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per process, over the run alone


def _stream_ms(entry_id: bytes | str) -> int:
    """A Redis stream id is ``<milliseconds>-<sequence>``: the time the entry was added."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[0])


def _event_data(fields: dict[bytes, bytes]) -> dict[str, Any]:
    cloud_event = json.loads(fields[b"data"])
    data: dict[str, Any] = cloud_event.get("data") or {}
    return data


def run_entry_times(client: redis.Redis, topic: str, run_id: str) -> list[int]:
    """When each event of ``run_id`` was added to ``topic`` (ms, Redis clock)."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(topic))
    times = []
    for entry_id, fields in entries:
        data = _event_data(fields)
        if run_id in (data.get("run_id"), data.get("request_id")):
            times.append(_stream_ms(entry_id))
    return times


@dataclass
class StageTimes:
    """Where a run spent its time, from the Redis stream entries of its events."""

    stages: dict[str, float]  # first command (or the stage before's end) to last result; "orchestration" the rest
    handoffs: dict[str, float]  # from one stage's last result to the next stage's first command


def stage_times(client: redis.Redis, run_id: str, requested_ms: int, completed_ms: int) -> StageTimes:
    """Stage spans from the streams themselves, so the numbers need nothing from pgmeta but its events."""
    spans: dict[str, tuple[int, int]] = {}
    for stage in PIPELINE_STAGES:
        commands = run_entry_times(client, f"{stage}.requested", run_id)
        results = run_entry_times(client, f"{stage}.completed", run_id)
        if commands and results:
            spans[stage] = (min(commands), max(results))
    missing = [stage for stage in REQUIRED_STAGES if stage not in spans]
    if missing:
        raise BenchError(f"run {run_id}: no command/result events for stage(s) {', '.join(missing)}")
    # Laid end to end: work of a stage that overlaps the stage before it (workflow v3 transforms the server unit
    # during extraction) counts in the earlier stage's span, so the spans and hand-offs add up to the run.
    stages: dict[str, float] = {}
    handoffs: dict[str, float] = {}
    previous, previous_end = "request", requested_ms
    for stage, (first_command, last_result) in spans.items():
        start = max(first_command, previous_end)
        end = max(last_result, start)
        stages[stage] = (end - start) / 1000
        handoffs[f"{previous}→{stage}"] = (start - previous_end) / 1000
        previous, previous_end = stage, end
    stages["orchestration"] = (completed_ms - requested_ms) / 1000 - sum(stages.values())
    handoffs[f"{previous}→done"] = (completed_ms - previous_end) / 1000
    return StageTimes(stages, handoffs)


def _dead_stack_processes(layout: StackLayout) -> list[str]:
    """Names of recorded stack processes that have died: a dead service would otherwise look like a slow run."""
    dead = []
    for pid_file in layout.pids.glob("*.pid"):
        if not alive(int(pid_file.read_text().strip())):
            dead.append(pid_file.stem)
    return dead


def wait_for_completion(
    client: redis.Redis, layout: StackLayout, run_id: str, timeout: float
) -> tuple[int, dict[str, Any]]:
    """Blocks on the ``extraction.completed`` stream (XREAD, no polling delay) until ``run_id`` is there."""
    deadline = time.monotonic() + timeout
    last_id: bytes | str = "0-0"
    while time.monotonic() < deadline:
        replies = cast(
            list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
            client.xread({TopicName.EXTRACTION_COMPLETED.value: last_id}, block=500),
        )
        for _, entries in replies:
            for entry_id, fields in entries:
                last_id = entry_id
                data = _event_data(fields)
                if data.get("run_id") == run_id:
                    return _stream_ms(entry_id), data
        dead = _dead_stack_processes(layout)
        if dead:
            raise BenchError(f"run {run_id}: {', '.join(dead)} died (logs in {layout.logs})")
        if run_entry_times(client, TopicName.DEAD_LETTER.value, run_id):
            raise BenchError(f"run {run_id}: the request was dead-lettered (reason in {layout.logs}/orchestrator.log)")
    raise BenchError(f"run {run_id}: no extraction.completed within {timeout:.0f} s (logs in {layout.logs})")


def peak_rss(layout: StackLayout) -> dict[str, int]:
    """Each stack process's peak resident set (VmHWM, bytes), read while it still runs."""
    peaks: dict[str, int] = {}
    for pid_file in sorted(layout.pids.glob("*.pid")):
        try:
            status = Path(f"/proc/{pid_file.read_text().strip()}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
        if match:
            peaks[pid_file.stem] = int(match.group(1)) * 1024
    return peaks


def process_cpu_seconds(pid: int, *, with_reaped_children: bool = False) -> float:
    """User + system CPU of ``pid`` from ``/proc/<pid>/stat``; with its waited-for children's too if asked.

    PostgreSQL's backends come and go within a run: their CPU reaches the postmaster's cutime/cstime when it
    reaps them, so the postmaster's total with its children is the server's CPU, backends included.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    ticks = utime + stime + (cutime + cstime if with_reaped_children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _live_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in children.read_text().split()] if children.exists() else []


def cpu_snapshot(layout: StackLayout, postgres_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of every stack process and of the source PostgreSQL (live backends included)."""
    snapshot: dict[str, float] = {}
    for pid_file in sorted(layout.pids.glob("*.pid")):
        try:
            snapshot[pid_file.stem] = process_cpu_seconds(int(pid_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    if postgres_pid is not None:
        snapshot["source-postgres"] = server_cpu_seconds(postgres_pid)
    return snapshot


def server_cpu_seconds(postgres_pid: int) -> float:
    """CPU seconds so far of a PostgreSQL server: its postmaster, reaped and live backends and workers."""
    total = process_cpu_seconds(postgres_pid, with_reaped_children=True)
    for child in _live_children(postgres_pid):
        with contextlib.suppress(OSError):
            total += process_cpu_seconds(child)
    return total


def postmaster_pid(server: PostgresServer) -> int | None:
    """The source server's postmaster, from the first line of its ``postmaster.pid``."""
    try:
        return int((server.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def run_pgmeta(server: PostgresServer, shape: CatalogShape, config: BenchConfig, repetition: int) -> PgmetaResult:
    """Starts a fresh stack, publishes ``extraction.requested``, waits for ``extraction.completed``, stops it.

    A fresh stack per repetition makes each peak RSS that of one run, and starts no run with warm workers.
    """
    state = Path(tempfile.mkdtemp(prefix="pgmeta-bench-stack-"))
    state.chmod(0o755)  # the stack's PostgreSQL runs as an unprivileged user and must reach its data dir
    layout = StackLayout(free_port_block(config.base_port), state)
    stack = BenchStack(layout, server.password)
    succeeded = False
    try:
        started = time.monotonic()
        stack.up()
        say(f"stack up in {time.monotonic() - started:.1f} s on ports {layout.base_port}+ (state in {state})")
        run_id = f"bench-{shape.key}-{repetition}-{int(time.time())}"
        document = {
            "request_id": run_id,
            "source": {"host": "127.0.0.1", "port": server.port, "username": "postgres", "database": BENCH_DATABASE},
            "credentials": {"kind": "secret", "store": "secretstore", "key": BENCH_SECRET},
            "stage_timeout_seconds": config.stage_timeout,
        }
        with redis.Redis(port=layout.redis_port) as client:
            postgres_pid = postmaster_pid(server)
            cpu_before = cpu_snapshot(layout, postgres_pid)
            response = stack.publish_request(document)
            if response.status_code != 204:
                raise BenchError(f"publishing extraction.requested: HTTP {response.status_code} {response.text}")
            completed_ms, completed = wait_for_completion(client, layout, run_id, config.timeout)
            peaks = peak_rss(layout)  # now, before anything stops: VmHWM dies with the process
            cpu = cpu_delta(cpu_before, cpu_snapshot(layout, postgres_pid))
            if completed.get("status") != "COMPLETED":
                raise BenchError(f"run {run_id} {completed.get('status')}: {completed.get('error')}")
            requested = run_entry_times(client, TopicName.EXTRACTION_REQUESTED.value, run_id)
            if not requested:
                raise BenchError(f"run {run_id}: its extraction.requested is not on the stream")
            times = stage_times(client, run_id, min(requested), completed_ms)
        manifest = json.loads((layout.objects / completed["location"] / "manifest.json").read_text())
        if manifest["counts"] != completed["counts"]:
            raise BenchError(f"manifest counts {manifest['counts']} differ from the event's {completed['counts']}")
        succeeded = True
        return PgmetaResult(
            seconds=(completed_ms - min(requested)) / 1000,
            stages=times.stages,
            handoffs=times.handoffs,
            counts=manifest["counts"],
            peak_rss=peaks,
            location=completed["location"],
            cpu_seconds=cpu,
        )
    finally:
        stack.down()
        if succeeded and not config.keep_state:
            shutil.rmtree(state, ignore_errors=True)
        else:
            say(f"stack state, logs and output kept in {state}")


def count_mismatches(got: dict[str, int], catalog: dict[str, int]) -> dict[str, tuple[int, int]]:
    """(written, in pg_catalog) for every catalog type whose counts differ.

    Only the types counted from pg_catalog are compared: entity types pgmeta derives beyond the catalog's
    objects (lineage processes, say) are reported but have no independent count to check against.
    """
    return {k: (got.get(k, 0), n) for k, n in sorted(catalog.items()) if got.get(k, 0) != n}


def check_counts(got: dict[str, int], catalog: dict[str, int], shape: CatalogShape) -> None:
    """pgmeta must write exactly one entity per catalog object; the catalog must be what the generator made."""
    for type_name, n in shape.expected_counts().items():
        if catalog.get(type_name, 0) != n:
            raise BenchError(f"the bench catalog has {catalog.get(type_name, 0)} {type_name}, the generator made {n}")
    wrong = count_mismatches(got, catalog)
    if wrong:
        raise BenchError(f"CORRECTNESS CHECK FAILED: (pgmeta wrote, pg_catalog holds): {wrong}")


# -- DataHub -----------------------------------------------------------------------------------------------


@dataclass
class DatahubResult:
    seconds: float
    peak_rss: int
    scanned: dict[str, int]


def _uv() -> list[str]:
    # `uv run` exports UV, the path of the uv running us; outside it, uv on PATH or as a module.
    found = os.environ.get("UV") or shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def ensure_datahub(cache_dir: Path) -> Path:
    """DataHub in its own virtual environment outside the project (its pins clash with ours), cached."""
    venv = cache_dir / "datahub-venv"
    marker = venv / ".pgmeta-bench-spec"
    executable = venv / "bin" / "datahub"
    if executable.exists() and marker.exists() and marker.read_text() == DATAHUB_SPEC:
        return executable
    say(f"installing {DATAHUB_SPEC} into {venv}")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([*_uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [*_uv(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), DATAHUB_SPEC], check=True
    )
    marker.write_text(DATAHUB_SPEC)
    return executable


def datahub_recipe(server: PostgresServer, output: Path) -> str:
    """Source ``postgres`` with profiling, lineage, usage and stateful ingestion off; a file sink.

    The password is left to DataHub's ``${VAR}`` expansion, so it is never written to disk.
    """
    return f"""\
source:
  type: postgres
  config:
    host_port: "127.0.0.1:{server.port}"
    database: {BENCH_DATABASE}
    username: postgres
    password: "${{PGMETA_BENCH_PASSWORD}}"
    profiling:
      enabled: false
    include_view_lineage: false
    include_view_column_lineage: false
    include_table_location_lineage: false
    include_query_lineage: false
    include_usage_statistics: false
    include_operational_stats: false
    stateful_ingestion:
      enabled: false
sink:
  type: file
  config:
    filename: {json.dumps(str(output))}
"""


def run_datahub(executable: Path, server: PostgresServer, log_path: Path) -> DatahubResult:
    """``datahub ingest`` as a user runs it: wall time from launch to exit, peak RSS from the kernel.

    ``os.wait4`` returns the child's own rusage, the same ``ru_maxrss`` that ``/usr/bin/time -v`` prints.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pgmeta-bench-datahub-") as work:
        recipe = Path(work) / "recipe.yml"
        recipe.write_text(datahub_recipe(server, Path(work) / "datahub.json"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "VIRTUAL_ENV"))}
        env.update(DATAHUB_TELEMETRY_ENABLED="false", PGMETA_BENCH_PASSWORD=server.password)
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            process = subprocess.Popen(
                [str(executable), "ingest", "-c", str(recipe)],
                cwd=work,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
            _, status, usage = os.wait4(process.pid, 0)
            seconds = time.perf_counter() - started
            process.returncode = os.waitstatus_to_exitcode(status)
    text = log_path.read_text(errors="replace")
    if process.returncode != 0:
        raise BenchError(f"datahub ingest exited {process.returncode}; log {log_path}:\n{text[-2000:]}")
    # DataHub prints its report every minute while it runs: the last one is the final count.
    scanned: dict[str, int] = {}
    for label, key in (("tables", "tables_scanned"), ("views", "views_scanned"), ("events", "total_records_written")):
        found = re.findall(rf"'{key}': (\d+)", text)
        if found:
            scanned[label] = int(found[-1])
    return DatahubResult(seconds, usage.ru_maxrss * 1024, scanned)


# -- the report --------------------------------------------------------------------------------------------
