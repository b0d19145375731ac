"""The local stack's trace viewer (a Zipkin server) and how the services and sidecars are told to report to it.

Zipkin is optional: without Java or its jar (deploy/local/ensure-zipkin.sh fetches it) the stack still comes up,
services keep tracing for their logs, and nothing is exported.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pgmeta_devstack.layout import SERVICES, StackLayout, repo_root

if TYPE_CHECKING:
    from pgmeta_devstack.stack import LocalStack

ZIPKIN_VERSION = "3.5.1"
ZIPKIN = "zipkin"


def zipkin_jar() -> Path:
    home = Path(os.environ.get("PGMETA_ZIPKIN_HOME", Path.home() / ".cache" / "pgmeta" / "zipkin"))
    return home / f"zipkin-server-{ZIPKIN_VERSION}-exec.jar"


def zipkin_unavailable() -> str | None:
    """Why the trace viewer cannot start here, or None when it can."""
    if os.environ.get("PGMETA_TRACING", "on").lower() in {"off", "0", "false"}:
        return "PGMETA_TRACING=off"
    if shutil.which("java") is None:
        return "no `java` on PATH (Java 17+ runs the Zipkin server)"
    if not zipkin_jar().is_file():
        return f"{zipkin_jar()} is missing (run deploy/local/ensure-zipkin.sh)"
    return None


def zipkin_argv(layout: StackLayout) -> list[str]:
    port = layout.zipkin_port
    return [
        "java",
        # In-memory storage: a small heap holds the traces of many local runs.
        "-Xmx384m",
        "-XX:+UseSerialGC",
        "-jar",
        str(zipkin_jar()),
        f"--armeria.ports[0].port={port}",
        "--armeria.ports[0].ip=127.0.0.1",
        "--armeria.ports[0].protocols=http",
    ]


def zipkin_env() -> dict[str, str]:
    return dict(os.environ, STORAGE_TYPE="mem", MEM_MAX_SPANS=os.environ.get("PGMETA_ZIPKIN_MAX_SPANS", "200000"))


def spans_endpoint(layout: StackLayout) -> str:
    return f"{layout.zipkin_url}/api/v2/spans"


def service_telemetry_env(layout: StackLayout, service: str, *, export: bool) -> dict[str, str]:
    """The standard OTEL_* variables of one service (Prometheus scrape port, Zipkin when it runs), and for the
    orchestrator the sidecars GET /dapr describes."""
    env = {
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(layout.app_metrics_port(service)),
    }
    if export:
        env["OTEL_EXPORTER_ZIPKIN_ENDPOINT"] = spans_endpoint(layout)
    if service == "orchestrator":
        # GET /dapr describes every sidecar of the stack, not only the orchestrator's own.
        env["PGMETA_DAPR_SIDECARS"] = ",".join(
            f"{name}=http://127.0.0.1:{layout.dapr_http_port(name)}" for name in SERVICES
        )
    return env


def sidecar_config(layout: StackLayout, *, export: bool) -> Path:
    """components/config.yaml with this stack's tracing: every span to Zipkin when it runs, none otherwise.

    Written into the state directory (the port is the stack's); everything else in the configuration is kept.
    Sampling: PGMETA_TRACE_SAMPLING (a rate in [0, 1], default 1).
    """
    config: dict[str, Any] = yaml.safe_load((repo_root() / "components" / "config.yaml").read_text())
    spec = config.setdefault("spec", {})
    tracing: dict[str, Any] = {"samplingRate": os.environ.get("PGMETA_TRACE_SAMPLING", "1") if export else "0"}
    if export:
        tracing["zipkin"] = {"endpointAddress": spans_endpoint(layout)}
    spec["tracing"] = tracing
    path = layout.state_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


Trace = list[dict[str, Any]]


def trace_link(layout: StackLayout, trace_id: str) -> str:
    """The trace's page in the Zipkin UI."""
    return f"{layout.zipkin_url}/zipkin/traces/{trace_id}"


def run_traces(layout: StackLayout, run_id: str, *, settle: float = 0.0, timeout: float = 20.0) -> list[Trace]:
    """The traces in Zipkin whose spans are tagged with the run, as soon as there are any, or with ``settle``,
    once their span count has not grown for that long (spans arrive in batches from nine processes).

    Empty when none arrived within ``timeout``.
    """
    import httpx

    deadline = time.monotonic() + timeout
    query: dict[str, str | int] = {"annotationQuery": f"pgmeta.run_id={run_id}", "lookback": 3_600_000, "limit": 100}
    last: list[Trace] = []
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        try:
            traces: list[Trace] = httpx.get(f"{layout.zipkin_url}/api/v2/traces", params=query, timeout=10).json()
        except httpx.HTTPError:
            traces = []
        if sum(map(len, traces)) != sum(map(len, last)):
            last, stable_since = traces, time.monotonic()
        if last and time.monotonic() - stable_since >= settle:
            return last
        time.sleep(1)  # the exporters send their batches every few seconds
    return last


def print_trace_link(stack: LocalStack, run_id: str, timeout: float = 20.0) -> None:
    """Prints where the run's trace is: the Zipkin UI link once its spans arrived, and `pgmeta trace`."""
    if not stack.exports_traces():
        print(f"[demo] no trace viewer running ({zipkin_unavailable() or 'Zipkin is down'}): no trace link")
        return
    traces = run_traces(stack.layout, run_id, timeout=timeout)
    if traces:
        links = ", ".join(trace_link(stack.layout, spans[0]["traceId"]) for spans in traces)
        print(f"[demo] the run's trace: {links}")
        print(f"[demo] as a tree: PGMETA_ZIPKIN_URL={stack.layout.zipkin_url} uv run pgmeta trace {run_id}")
        return
    print(
        f"[demo] no trace of {run_id} reached Zipkin within {timeout:.0f} s; look at {stack.layout.zipkin_url}/zipkin/"
    )
