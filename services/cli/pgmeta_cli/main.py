"""`pgmeta extract | status | runs | publish`.

`extract` posts to the orchestrator's REST API, which publishes `extraction.requested`; `publish` sends
a request document straight to the pub/sub through a Dapr sidecar, like `dapr publish` does.
The source password comes from PGPASSWORD, never from argv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

TERMINAL = {"COMPLETED", "FAILED"}
STAGES = ["extract", "transform", "publish"]

err = Console(stderr=True)


def api_url() -> str:
    return os.environ.get("PGMETA_API_URL", "http://127.0.0.1:18000").rstrip("/")


def _fail(message: str, code: int = 2) -> int:
    err.print(f"[red]error:[/red] {message}")
    return code


def _get_run(client: httpx.Client, run_id: str) -> dict[str, Any]:
    response = client.get(f"{api_url()}/runs/{run_id}")
    response.raise_for_status()
    run: dict[str, Any] = response.json()
    return run


def _fraction(run: dict[str, Any]) -> float:
    """Overall progress in [0, 1]: a third per stage, refined by the stage's own progress."""
    stage = run.get("stage")
    if run["status"] == "COMPLETED" or stage == "done":
        return 1.0
    if stage not in STAGES:
        return 0.0
    within = 0.0
    progress = run.get("progress") or {}
    if progress.get("stage") == stage and progress.get("total"):
        within = min(1.0, progress["done"] / progress["total"])
    return (STAGES.index(stage) + within) / len(STAGES)


def wait_for(client: httpx.Client, run_id: str, *, show: bool, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, disable=not show, transient=False) as bar:
        task = bar.add_task(f"run {run_id}: queued", total=100)
        while True:
            try:
                run = _get_run(client, run_id)
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 404 or time.monotonic() > deadline:
                    raise
                run = {"run_id": run_id, "status": "QUEUED"}
            label = run.get("stage") or run["status"].lower()
            bar.update(task, completed=100 * _fraction(run), description=f"run {run_id}: {label}")
            if run["status"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                return {**run, "status": "FAILED", "error": f"gave up waiting after {timeout:.0f} s"}
            time.sleep(0.25)


def summary(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run["run_id"],
        "status": run["status"],
        "counts": run.get("counts") or {},
        "output": run.get("output"),
        "error": run.get("error"),
    }


def print_human(run: dict[str, Any]) -> None:
    out = Console()
    color = "green" if run["status"] == "COMPLETED" else "red"
    out.print(f"run [bold]{run['run_id']}[/bold]: [{color}]{run['status']}[/{color}]")
    for type_name, count in sorted((run.get("counts") or {}).items()):
        out.print(f"  {type_name:<18} {count:>8}")
    if run.get("output"):
        out.print(f"entities (JSON Lines, one Atlas entity per line): {run['output']}")
    if run.get("error"):
        out.print(f"[red]error:[/red] {run['error']}")


def cmd_extract(args: argparse.Namespace) -> int:
    password = os.environ.get("PGPASSWORD")
    if password is None and args.credentials_secret is None:
        return _fail(
            "set PGPASSWORD (the password is never taken from the command line), "
            "or name a secret with --credentials-secret"
        )
    body: dict[str, Any] = {
        "source": {
            "host": args.host,
            "port": args.port,
            "username": args.user,
            "database": args.database,
            "sslmode": args.sslmode,
        },
        "stage_timeout_seconds": args.stage_timeout,
    }
    if args.request_id:
        body["request_id"] = args.request_id
    if args.connection_qualified_name:
        body["connection_qualified_name"] = args.connection_qualified_name
    if args.credentials_secret:
        body["credentials"] = {"kind": "secret", "store": "secretstore", "key": args.credentials_secret}
    else:
        body["password"] = password
    with httpx.Client(timeout=30) as client:
        try:
            response = client.post(f"{api_url()}/runs", json=body)
        except httpx.HTTPError as exc:
            return _fail(f"cannot reach the pgmeta API at {api_url()}: {exc} (is the stack up? `make up`)")
        if response.status_code == 422:
            return _fail(f"the API rejected the request: {response.json().get('detail')}")
        response.raise_for_status()
        run_id = response.json()["run_id"]
        if not args.wait:
            print(json.dumps({"run_id": run_id}) if args.json else run_id)
            return 0
        run = wait_for(client, run_id, show=not args.json, timeout=args.timeout)
    if args.json:
        print(json.dumps(summary(run)))
    else:
        print_human(run)
    return 0 if run["status"] == "COMPLETED" else 1


def cmd_status(args: argparse.Namespace) -> int:
    with httpx.Client(timeout=30) as client:
        try:
            run = _get_run(client, args.run_id)
        except httpx.HTTPStatusError as exc:
            return _fail(f"no run {args.run_id!r}" if exc.response.status_code == 404 else str(exc))
        except httpx.HTTPError as exc:
            return _fail(f"cannot reach the pgmeta API at {api_url()}: {exc}")
        if args.wait:
            run = wait_for(client, args.run_id, show=not args.json, timeout=args.timeout)
    if args.json:
        print(json.dumps(summary(run) | {"stage": run.get("stage"), "progress": run.get("progress")}))
    else:
        print_human(run)
    return 0 if run["status"] == "COMPLETED" else (1 if run["status"] == "FAILED" else 3)


def cmd_runs(args: argparse.Namespace) -> int:
    with httpx.Client(timeout=30) as client:
        response = client.get(f"{api_url()}/runs", params={"limit": args.limit})
        response.raise_for_status()
    for run in response.json():
        print(f"{run['run_id']:<40} {run['status']:<10} {run.get('stage') or '':<10} {run.get('created_at') or ''}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Publishes a request document to `extraction.requested` through a Dapr sidecar's publish API."""
    data = args.data
    text = Path(data[1:]).read_text() if data.startswith("@") else data
    try:
        document = json.loads(text)
    except ValueError as exc:
        return _fail(f"--data is not JSON: {exc}")
    sidecar = os.environ.get("PGMETA_DAPR_HTTP_URL", "http://127.0.0.1:18010").rstrip("/")
    url = f"{sidecar}/v1.0/publish/{args.pubsub}/{args.topic}"
    response = httpx.post(url, json=document, timeout=30)
    if response.status_code >= 300:
        return _fail(f"publish failed ({response.status_code}): {response.text}")
    print(f"published to {args.topic}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgmeta", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    extract = sub.add_parser("extract", help="request an extraction of one PostgreSQL server")
    extract.add_argument("--host", required=True)
    extract.add_argument("--port", type=int, default=5432)
    extract.add_argument("--user", required=True)
    extract.add_argument("--database", default="postgres")
    extract.add_argument(
        "--sslmode",
        default="prefer",
        choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
    )
    extract.add_argument("--connection-qualified-name", help="Atlan connection qualifiedName, default/postgres/<id>")
    extract.add_argument("--credentials-secret", help="name of a secret in the Dapr secret store instead of PGPASSWORD")
    extract.add_argument("--request-id", help="idempotency key (a repeat starts no second run)")
    extract.add_argument("--stage-timeout", type=int, default=900, help="seconds each stage may take")
    extract.add_argument("--wait", action="store_true", help="show progress and wait for the run to end")
    extract.add_argument("--json", action="store_true", help="print one JSON document")
    extract.add_argument("--timeout", type=float, default=3600, help="seconds to wait with --wait")
    extract.set_defaults(func=cmd_extract)

    status = sub.add_parser("status", help="show one run")
    status.add_argument("run_id")
    status.add_argument("--wait", action="store_true")
    status.add_argument("--json", action="store_true")
    status.add_argument("--timeout", type=float, default=3600)
    status.set_defaults(func=cmd_status)

    runs = sub.add_parser("runs", help="list recent runs")
    runs.add_argument("--limit", type=int, default=20)
    runs.set_defaults(func=cmd_runs)

    publish = sub.add_parser("publish", help="publish an event document through a Dapr sidecar (like `dapr publish`)")
    publish.add_argument("--data", required=True, help="JSON, or @file")
    publish.add_argument("--topic", default="extraction.requested")
    publish.add_argument("--pubsub", default="pubsub")
    publish.set_defaults(func=cmd_publish)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    sys.exit(main())
