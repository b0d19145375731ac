"""`pgmeta trace <run-id>` (the run's trace from Zipkin, as a tree) and `pgmeta dapr` (what each sidecar runs)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from typing import Any

from pgmeta_cli.consoles import stderr_console, stdout_console
from pgmeta_cli.endpoints import api_endpoint, zipkin_endpoint
from pgmeta_cli.http_client import HttpClient, HttpError

# Span tags worth a glance in the tree; the rest is one click away in the UI.
KEY_TAGS = (
    "pgmeta.unit",
    "pgmeta.stage",
    "pgmeta.chunk",
    "pgmeta.records",
    "pgmeta.bytes",
    "pgmeta.topic",
    "pgmeta.outcome",
    "pgmeta.error_code",
    "db.query.name",
    "db.response.returned_rows",
    "messaging.destination.name",
    "dapr.topic",
    "dapr.store",
    "dapr.binding",
    "http.route",
    "http.response.status_code",
    "error",
)


def zipkin_url() -> str:
    return zipkin_endpoint().url


def api_url() -> str:
    return api_endpoint().url


def trace_link(trace_id: str) -> str:
    return f"{zipkin_url()}/zipkin/traces/{trace_id}"


def find_run_traces(client: HttpClient, run_id: str, lookback_hours: float = 24 * 7) -> list[list[dict[str, Any]]]:
    """Every trace holding a span tagged with the run id (one, when the run's context travelled intact)."""
    response = client.get(
        f"{zipkin_url()}/api/v2/traces",
        params={
            "annotationQuery": f"pgmeta.run_id={run_id}",
            "endTs": int(time.time() * 1000),
            "lookback": int(lookback_hours * 3600 * 1000),
            "limit": 100,
        },
    )
    response.raise_for_status()
    traces: list[list[dict[str, Any]]] = response.json()
    return traces


def _label(span: dict[str, Any]) -> str:
    service = (span.get("localEndpoint") or {}).get("serviceName", "?")
    duration = span.get("duration")
    took = f"{duration / 1000:.1f} ms" if isinstance(duration, int) else "-"
    tags = span.get("tags") or {}
    facts = " ".join(f"{k.removeprefix('pgmeta.')}={tags[k]}" for k in KEY_TAGS if k in tags)
    counts = " ".join(
        f"{k.removeprefix('pgmeta.count.')}={v}" for k, v in tags.items() if k.startswith("pgmeta.count.")
    )
    error = " [red]ERROR[/red]" if "error" in tags or tags.get("otel.status_code") == "ERROR" else ""
    return f"[cyan]{service}[/cyan] {span.get('name', '?')} [dim]{took}[/dim]{error} {facts} {counts}".rstrip()


def render_tree(spans: list[dict[str, Any]]) -> Iterator[str]:
    """The spans as an indented tree, children in start order; spans whose parent is missing are roots."""
    by_id = {span["id"]: span for span in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans:
        parent = span.get("parentId")
        children.setdefault(parent if parent in by_id else None, []).append(span)
    for siblings in children.values():
        siblings.sort(key=lambda s: s.get("timestamp", 0))

    def walk(span: dict[str, Any], depth: int) -> Iterator[str]:
        yield "  " * depth + _label(span)
        for child in children.get(span["id"], []):
            yield from walk(child, depth + 1)

    for root in children.get(None, []):
        yield from walk(root, 0)


def cmd_trace(args: argparse.Namespace) -> int:
    out, err = stdout_console(), stderr_console()
    try:
        with HttpClient(timeout=30) as client:
            traces = find_run_traces(client, args.run_id)
    except HttpError as exc:
        err.print(f"[red]error:[/red] cannot read traces from Zipkin at {zipkin_url()}: {exc} (is the stack up?)")
        return 2
    if not traces:
        err.print(f"[red]error:[/red] Zipkin at {zipkin_url()} has no trace for run {args.run_id!r} (yet)")
        return 1
    if args.json:
        out.print_json(json.dumps(traces))
        return 0
    for spans in traces:
        trace_id = spans[0]["traceId"]
        services = sorted({(s.get("localEndpoint") or {}).get("serviceName", "?") for s in spans})
        out.print(f"trace {trace_id}: {len(spans)} spans from {', '.join(services)}")
        lines = list(render_tree(spans))
        for line in lines[: args.max_spans]:
            out.print(line)
        if len(lines) > args.max_spans:
            out.print(f"… {len(lines) - args.max_spans} more spans (--max-spans, or the UI)")
        out.print(f"UI: {trace_link(trace_id)}\n")
    return 0


def cmd_dapr(args: argparse.Namespace) -> int:
    out, err = stdout_console(), stderr_console()
    try:
        with HttpClient(timeout=30) as client:
            response = client.get(f"{api_url()}/dapr")
            response.raise_for_status()
    except HttpError as exc:
        err.print(f"[red]error:[/red] cannot read sidecar metadata from {api_url()}/dapr: {exc}")
        return 2
    sidecars: list[dict[str, Any]] = response.json()
    if args.json:
        out.print_json(json.dumps(sidecars))
        return 0
    for sidecar in sidecars:
        health = "[green]healthy[/green]" if sidecar.get("healthy") else "[red]unhealthy[/red]"
        out.print(f"[bold]{sidecar.get('app_id')}[/bold] {health} dapr {sidecar.get('runtime_version', '?')}")
        if sidecar.get("error"):
            out.print(f"  [red]{sidecar['error']}[/red]")
            continue
        for component in sidecar.get("components", []):
            out.print(f"  component {component['name']}: {component['type']} {component.get('version', '')}")
        for subscription in sidecar.get("subscriptions", []):
            dead = (
                f" (dead letters: {subscription['dead_letter_topic']})" if subscription.get("dead_letter_topic") else ""
            )
            out.print(
                f"  subscription {subscription['pubsub']}/{subscription['topic']} → {subscription['route']}{dead}"
            )
        for actor in sidecar.get("actors", []):
            out.print(f"  actor type {actor['type']}: {actor.get('count', 0)} active")
        if sidecar.get("workflow_workers") is not None:
            out.print(f"  workflow workers connected: {sidecar['workflow_workers']}")
    return 0


def add_observe_commands(sub: Any) -> None:
    """Registers `trace` and `dapr` on the CLI's subcommands."""
    trace = sub.add_parser("trace", help="print a run's trace (from Zipkin) as a tree, and its UI link")
    trace.add_argument("run_id")
    trace.add_argument("--json", action="store_true", help="the raw Zipkin spans")
    trace.add_argument("--max-spans", type=int, default=300, help="lines of the tree to print")
    trace.set_defaults(func=cmd_trace)

    dapr = sub.add_parser("dapr", help="each sidecar's app id, version, components, subscriptions, actors, health")
    dapr.add_argument("--json", action="store_true")
    dapr.set_defaults(func=cmd_dapr)
