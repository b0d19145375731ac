"""One trace per run across every service and sidecar, read back from a real Zipkin; metrics, logs, /dapr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest

from pgmeta_devstack import tracing
from pgmeta_devstack.layout import SERVICES
from pgmeta_devstack.stack import DEMO_DATABASE, LocalStack
from pgmeta_devstack.tracing import Trace
from tests.plugins.servers import api_headers

pytestmark = pytest.mark.e2e

PYTHON_SERVICES = set(SERVICES)


def extract(stack: LocalStack, run_id: str, database: str = DEMO_DATABASE) -> dict[str, Any]:
    """`pgmeta extract --wait --json`, as a user runs it: REST call, then the run's progress."""
    argv = stack.extract_argv(run_id, "--stage-timeout", "60", "--json", "--timeout", "120", database=database)
    done = subprocess.run(argv, env=stack.cli_env(), capture_output=True, text=True, timeout=180, check=False)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def run_traces(stack: LocalStack, run_id: str, settle: float = 8.0) -> list[Trace]:
    return tracing.run_traces(stack.layout, run_id, settle=settle, timeout=60.0)


def services_of(spans: list[dict[str, Any]]) -> set[str]:
    return {(s.get("localEndpoint") or {}).get("serviceName", "?") for s in spans}


def test_one_trace_per_run_through_every_service_and_sidecar(traced_stack: LocalStack) -> None:
    run = extract(traced_stack, "obs-ok")
    assert run["status"] == "COMPLETED", run
    traces = run_traces(traced_stack, "obs-ok")
    assert len(traces) == 1, [(t[0]["traceId"], len(t), sorted(services_of(t))) for t in traces]
    spans = traces[0]
    ids = {s["id"] for s in spans}
    roots = [s for s in spans if not s.get("parentId")]
    orphans = [s for s in spans if s.get("parentId") and s["parentId"] not in ids]
    assert [r["name"] for r in roots] == ["post /runs"], roots
    assert not orphans, [(o["name"], services_of([o])) for o in orphans]
    names = {(next(iter(services_of([s]))), s["name"]) for s in spans}
    for service in PYTHON_SERVICES:
        assert any(svc == service for svc, _ in names), f"no span from {service}: {sorted(names)}"
    # The sidecars' own spans (publish, delivery, state and binding calls), from each app's daprd.
    sidecar_spans = [s for s in spans if s.get("tags", {}).get("otel.scope.name") == "dapr-diagnostics"]
    assert services_of(sidecar_spans) >= PYTHON_SERVICES, sorted(services_of(sidecar_spans))
    assert {s["name"] for s in sidecar_spans} >= {"pubsub/extract.requested", "pubsub/transform.requested"}
    # The Workflow engine's own account of the workflow is part of it: daprd's create_orchestration,
    # orchestration and activity spans (the workflow client sends the run's context when it schedules it), and
    # the Python worker's `activity:` spans under them.
    engine = {s["name"] for s in spans if s.get("tags", {}).get("durabletask.task.instance_id") == "obs-ok"}
    assert {"create_orchestration||extraction", "orchestration||extraction", "activity||publish_event"} <= engine
    assert any(s["name"] == "activity: publish_event" for s in spans)
    # No part of the run went off into a trace of its own. The other traces naming the run are the user's reads
    # of it (GET /runs/obs-ok while waiting), each a request of its own.
    everything = httpx.get(
        f"{traced_stack.layout.zipkin_url}/api/v2/traces", params={"lookback": 3_600_000, "limit": 10_000}, timeout=30
    ).json()
    strays = [
        t
        for t in everything
        if t[0]["traceId"] != spans[0]["traceId"]
        and "obs-ok" in json.dumps(t)
        and not any(not s.get("parentId") and s["name"].startswith("get /runs") for s in t)
    ]
    assert not strays, [[(s["name"], s.get("tags")) for s in t] for t in strays]
    catalog = [s for s in spans if s["name"].startswith("catalog ")]
    assert {s["tags"]["db.query.name"] for s in catalog} >= {"COLUMNS_QUERY", "RELATIONS_QUERY"}
    assert all("shop" not in json.dumps(s["tags"].get("db.query.text", "")) for s in catalog)
    chunk_spans = [s for s in spans if s["name"].startswith("claim-check save")]
    assert chunk_spans and all(int(s["tags"]["pgmeta.bytes"]) > 0 for s in chunk_spans)


def test_a_failing_runs_trace_has_the_error_on_the_failing_span(traced_stack: LocalStack) -> None:
    run = extract(traced_stack, "obs-fail", database="no_such_database")
    assert run["status"] == "FAILED", run
    traces = run_traces(traced_stack, "obs-fail")
    assert len(traces) == 1
    failed = [s for s in traces[0] if "error" in s.get("tags", {})]
    failing_work = [s for s in failed if s["name"].startswith("preflight")]
    assert failing_work and services_of(failing_work) == {"extractor"}, [(s["name"], s["tags"]) for s in failed]
    assert failing_work[0]["tags"]["pgmeta.error_code"] == "database_not_found"
    assert any(s["name"] == "workflow finish run" for s in failed)


def scrape(url: str) -> dict[str, float]:
    """Prometheus text format as {series: value}."""
    samples = {}
    for line in httpx.get(url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            samples[series] = float(value)
    return samples


def _sum(samples: dict[str, float], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for s, v in samples.items() if s.startswith(name + "{") and all(w in s for w in wanted))


def test_metrics_endpoints_count_the_runs(traced_stack: LocalStack) -> None:
    run = httpx.get(f"{traced_stack.layout.api_url}/runs/obs-ok", headers=api_headers(traced_stack), timeout=10).json()
    layout = traced_stack.layout
    orchestrator = scrape(f"http://127.0.0.1:{layout.app_metrics_port('orchestrator')}/metrics")
    assert _sum(orchestrator, "pgmeta_runs_finished_total", outcome="COMPLETED") >= 1
    assert _sum(orchestrator, "pgmeta_runs_finished_total", outcome="FAILED") >= 1
    transformer = scrape(f"http://127.0.0.1:{layout.app_metrics_port('transformer')}/metrics")
    for entity_type, count in run["counts"].items():
        if entity_type not in {"Connection", "Database"}:
            assert _sum(transformer, "pgmeta_entities_total", type=entity_type) == count, entity_type
    extractor = scrape(f"http://127.0.0.1:{layout.app_metrics_port('extractor')}/metrics")
    assert _sum(extractor, "pgmeta_catalog_query_duration_seconds_count", statement="COLUMNS_QUERY") >= 1
    assert _sum(extractor, "pgmeta_claimcheck_io_bytes_total", stage="extract", direction="write") > 0
    assert _sum(extractor, "pgmeta_deliveries_total", topic="extract.requested", outcome="SUCCESS") >= 1
    # daprd's own metrics sit next to them, on the sidecar's metrics port.
    sidecar = httpx.get(f"http://127.0.0.1:{layout.dapr_metrics_port('extractor')}/metrics", timeout=10).text
    assert "dapr_component_pubsub_ingress_count" in sidecar


def test_every_log_line_handling_the_run_carries_its_trace_id(traced_stack: LocalStack) -> None:
    (spans,) = run_traces(traced_stack, "obs-ok", settle=0.5)
    trace_id = spans[0]["traceId"]
    lines = 0
    for service in SERVICES:
        for raw in (traced_stack.layout.logs / f"{service}.log").read_text().splitlines():
            if not raw.startswith("{"):
                continue
            line = json.loads(raw)
            # The user's reads of the run (GET /runs/obs-ok?wait=…, a long poll that asks the workflow client to
            # wait for the instance: "Waiting up to …", then "Instance … completed.") are requests of their own,
            # with traces of their own.
            if line["logger"] == "durabletask-client" and (
                line["message"].startswith("Waiting up to") or line["message"].endswith("completed.")
            ):
                continue
            if line.get("run_id") == "obs-ok" or "obs-ok" in line["message"]:
                lines += 1
                assert line.get("trace_id") == trace_id, line
    assert lines >= len(SERVICES)


def test_dapr_describes_every_sidecar(traced_stack: LocalStack) -> None:
    sidecars = httpx.get(f"{traced_stack.layout.api_url}/dapr", headers=api_headers(traced_stack), timeout=10).json()
    assert {s["app_id"] for s in sidecars} == PYTHON_SERVICES
    for sidecar in sidecars:
        assert sidecar["healthy"] and sidecar["runtime_version"], sidecar
        assert any(c["name"] == "pubsub" for c in sidecar["components"]), sidecar
    extractor = next(s for s in sidecars if s["app_id"] == "extractor")
    assert any(s["topic"] == "extract.requested" for s in extractor["subscriptions"])


def test_pgmeta_trace_prints_the_tree_and_the_link(traced_stack: LocalStack) -> None:
    env = dict(os.environ, PGMETA_ZIPKIN_URL=traced_stack.layout.zipkin_url, COLUMNS="200")
    done = subprocess.run(
        [sys.executable, "-m", "pgmeta_cli.main", "trace", "obs-ok"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "orchestrator post /runs" in done.stdout
    assert "\n  " in done.stdout  # children are indented under their parents
    assert f"{traced_stack.layout.zipkin_url}/zipkin/traces/" in done.stdout
