"""`pgmeta-capacity --replicas 1,2,3`: the same multi-run workload with 1, 2 and 3 replicas of every stage.

The bench server gets ``databases`` copies of the synthetic catalog (one extract command per database), ``runs``
runs over all of them are submitted at once, and when they are done each replica's own ``/metrics`` says how
many units (``*.requested`` commands) and chunks (``*.chunk_ready`` events) it handled: the share of the work
each replica did. Wall time gives the throughput per replica count. On a machine with few cores the throughput
cannot grow with replicas (they share the same cores); the per-replica counts show that the work spreads.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from pgmeta_bench.capacity import cpu_seconds
from pgmeta_bench.catalog import CatalogShape, bench_postgres, catalog_counts
from pgmeta_bench.common import BENCH_DATABASE, BENCH_SECRET, say
from pgmeta_bench.runners import BenchStack, wait_for_completion
from pgmeta_devstack.layout import StackLayout, free_port_block
from pgmeta_devstack.postgres import PostgresServer
from pgmeta_devstack.supervisor import SupervisedStack, instance_name
from pgmeta_shared.events import TopicName

STAGES = ("extractor", "transformer", "publisher")
# What one replica of each stage consumes: its units (commands) and its chunks (started early, as announced).
WORK_TOPICS = {
    "extractor": (TopicName.EXTRACT_REQUESTED, None),
    "transformer": (TopicName.TRANSFORM_REQUESTED, TopicName.EXTRACT_CHUNK_READY),
    "publisher": (TopicName.PUBLISH_REQUESTED, TopicName.TRANSFORM_CHUNK_READY),
}
DELIVERIES = re.compile(r"^pgmeta_deliveries_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$", re.MULTILINE)


@dataclass
class ReplicaShare:
    instance: str
    units: int
    chunks: int
    cpu_seconds: float


@dataclass
class SeriesPoint:
    replicas: int
    tables: int  # over all runs and databases
    seconds: float
    shares: list[ReplicaShare]


class ReplicatedBenchStack(SupervisedStack):
    """The supervisor's stack (replicas included), in this process, with the bench database's secret."""

    def __init__(self, layout: StackLayout, bench_password: str, replicas: dict[str, int]) -> None:
        super().__init__(layout, replicas)
        self._bench_password = bench_password

    def write_secretstore(self) -> None:
        super().write_secretstore()
        BenchStack.add_bench_secret(self.state, self._bench_password)


def ensure_databases(server: PostgresServer, count: int) -> list[str]:
    """``bench`` plus ``count - 1`` copies of it (made once, from it as template)."""
    names = [BENCH_DATABASE] + [f"{BENCH_DATABASE}_{n}" for n in range(2, count + 1)]
    with psycopg.connect(**server.connect_kwargs(), autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in names[1:]:
            if name not in existing:
                say(f"copying the catalog into database {name}")
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {BENCH_DATABASE}')
    return names


def delivered(metrics_text: str, topic: TopicName | None) -> int:
    """Successful deliveries of ``topic`` in one app's Prometheus exposition."""
    if topic is None:
        return 0
    total = 0.0
    for match in DELIVERIES.finditer(metrics_text):
        labels = match["labels"]
        if f'topic="{topic.value}"' in labels and 'outcome="SUCCESS"' in labels:
            total += float(match["value"])
    return int(total)


def metrics_port(stack: SupervisedStack, instance: str, service: str) -> int:
    port = stack.children[instance].env.get("OTEL_EXPORTER_PROMETHEUS_PORT")
    return int(port) if port else stack.layout.app_metrics_port(service)


def measure_point(
    server: PostgresServer, databases: list[str], tables_per_database: int, replicas: int, runs: int, base_port: int
) -> SeriesPoint:
    state = Path(tempfile.mkdtemp(prefix=f"pgmeta-capacity-x{replicas}-"))
    state.chmod(0o755)
    layout = StackLayout(free_port_block(base_port), state)
    stack = ReplicatedBenchStack(layout, server.password, {"orchestrator": 1} | dict.fromkeys(STAGES, replicas))
    try:
        stack.up()
        stack.start_replicas()
        run_ids = [f"x{replicas}-run{n}-{int(time.time())}" for n in range(1, runs + 1)]
        with redis.Redis(port=layout.redis_port) as client:
            before = cpu_seconds(layout)
            started = time.monotonic()
            for run_id in run_ids:
                document: dict[str, Any] = {
                    "request_id": run_id,
                    # No database named: every database of the server, one extract command each.
                    "source": {"host": "127.0.0.1", "port": server.port, "username": "postgres"},
                    "credentials": {"kind": "secret", "store": "secretstore", "key": BENCH_SECRET},
                    "filters": {"include": {f"{BENCH_DATABASE}.*": "*"}},
                }
                stack.publish_request(document).raise_for_status()
            for run_id in run_ids:
                _, completed = wait_for_completion(client, layout, run_id, 3600)
                if completed.get("status") != "COMPLETED":
                    raise RuntimeError(f"run {run_id} {completed.get('status')}: {completed.get('error')}")
            seconds = time.monotonic() - started
            after = cpu_seconds(layout)
        shares = []
        for service in STAGES:
            units_topic, chunks_topic = WORK_TOPICS[service]
            for n in range(1, replicas + 1):
                instance = instance_name(service, n)
                text = httpx.get(f"http://127.0.0.1:{metrics_port(stack, instance, service)}/metrics", timeout=10).text
                shares.append(
                    ReplicaShare(
                        instance,
                        delivered(text, units_topic),
                        delivered(text, chunks_topic),
                        round(after.get(instance, 0.0) - before.get(instance, 0.0), 2),
                    )
                )
        return SeriesPoint(replicas, tables_per_database * len(databases) * runs, seconds, shares)
    finally:
        stack.stop_all()
        stack.down()
        shutil.rmtree(state, ignore_errors=True)


def measure_series(
    shape: CatalogShape, cache_dir: Path, base_port: int, replica_counts: list[int], databases: int, runs: int
) -> list[SeriesPoint]:
    with bench_postgres(shape, cache_dir, base_port + 1000) as server:
        tables = catalog_counts(server)["Table"]
        names = ensure_databases(server, databases)
        points = []
        for replicas in replica_counts:
            say(f"{runs} runs over {len(names)} databases with {replicas} replica(s) per stage")
            points.append(measure_point(server, names, tables, replicas, runs, base_port))
        return points


def render_series(points: list[SeriesPoint]) -> str:
    lines = [
        "| replicas per stage | tables (all runs) | wall s | tables/s | replica: units / chunks / CPU-s |",
        "|---|---|---|---|---|",
    ]
    for point in points:
        shares = "; ".join(f"{s.instance} {s.units} / {s.chunks} / {s.cpu_seconds:.1f}" for s in point.shares)
        lines.append(
            f"| {point.replicas} | {point.tables:,} | {point.seconds:.1f} | {point.tables / point.seconds:,.0f} | "
            f"{shares} |"
        )
    return "\n".join(lines)


def series_json(points: list[SeriesPoint]) -> str:
    return json.dumps(
        [
            {
                "replicas": p.replicas,
                "tables": p.tables,
                "seconds": round(p.seconds, 2),
                "shares": [s.__dict__ for s in p.shares],
            }
            for p in points
        ]
    )
