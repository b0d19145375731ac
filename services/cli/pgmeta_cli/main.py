"""`pgmeta extract | status | runs | publish | trace | dapr`.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pgmeta_cli.consoles import stderr_console
from pgmeta_cli.endpoints import api_endpoint, api_headers, api_token, sidecar_endpoint, stack_secret, unreachable
from pgmeta_cli.event_check import event_problems
from pgmeta_cli.http_client import HttpClient, HttpError, Response, StatusError, TransportError
from pgmeta_cli.observe import add_observe_commands
from pgmeta_shared.topics import TopicName

TERMINAL = {"COMPLETED", "FAILED"}
STAGES = ["extract", "transform", "publish"]


def api_url() -> str:
    return api_endpoint().url


def _unreachable_api(exc: HttpError) -> int:
    return _fail(unreachable(api_endpoint(), "the pgmeta API", exc))


def api_client(timeout: float) -> HttpClient:
    return HttpClient(timeout=timeout, headers=api_headers())


def _fail(message: str, code: int = 2) -> int:
    stderr_console().print(f"[red]error:[/red] {message}")
    return code


LONG_POLL_SECONDS = 30.0


def _get_run(client: HttpClient, run_id: str, wait: float = 0) -> dict[str, Any]:
    """The run; with ``wait``, the orchestrator answers as soon as the run ends (or when the wait is up)."""
    params = {"wait": f"{wait:.1f}"} if wait > 0 else None
    response = client.get(f"{api_url()}/runs/{run_id}", params=params, timeout=wait + 30)
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


@contextmanager
def progress_bar(run_id: str, *, show: bool) -> Iterator[Callable[[float, str], None]]:
    """``update(fraction, label)`` of the progress bar on stderr; without ``show``, nothing (and no rich import:
    start-up time is part of every command's)."""
    if not show:
        yield lambda _fraction, _label: None
        return
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr_console(), transient=False) as bar:
        task = bar.add_task(f"run {run_id}: queued", total=100)
        yield lambda fraction, label: bar.update(task, completed=100 * fraction, description=f"run {run_id}: {label}")


def wait_for(client: HttpClient, run_id: str, *, show: bool, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with progress_bar(run_id, show=show) as update:
        run: dict[str, Any] = {"run_id": run_id, "status": "QUEUED"}
        while True:
            # Every answer is survivable while the stack restarts a process: keep the last known state.
            trouble = None
            # Long polls: the answer comes the moment the run ends; with a progress bar, at least every second.
            wait = max(0.1, min(deadline - time.monotonic(), 1.0 if show else LONG_POLL_SECONDS))
            try:
                run = _get_run(client, run_id, wait)
            except StatusError as exc:
                trouble = _answer_trouble(exc.response)
            except TransportError as exc:
                trouble = f"API unreachable ({exc}), retrying"
            label = run.get("stage") or run["status"].lower()
            if trouble is not None:
                label = f"{label} ({trouble})"
            update(_fraction(run), label)
            if run["status"] in TERMINAL:
                return run
            if time.monotonic() > deadline:
                why = f"gave up waiting after {timeout:.0f} s" + (f": {trouble}" if trouble else "")
                return {**run, "status": "FAILED", "error": why}
            if trouble is not None:
                time.sleep(0.25)  # the API is restarting or does not know the run yet: do not spin
            elif run["status"] == "QUEUED" and "created_at" not in run:
                time.sleep(0.05)


def _answer_trouble(response: Response) -> str:
    """What a non-2xx answer to ``GET /runs/{id}`` means while waiting (the run may not be recorded yet)."""
    if response.status_code == 404:
        return "not known to the API yet"
    return f"API answered {response.status_code}, retrying"


def summary(run: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_id": run["run_id"],
        "status": run["status"],
        "counts": run.get("counts") or {},
        "changes": run.get("changes") or {},
        "schemas": run.get("schemas") or {},
        "output": run.get("output"),
        "error": run.get("error"),
    }


def print_human(run: dict[str, Any]) -> None:
    from rich.console import Console

    out = Console()
    color = "green" if run["status"] == "COMPLETED" else "red"
    out.print(f"run [bold]{run['run_id']}[/bold]: [{color}]{run['status']}[/{color}]")
    for type_name, count in sorted((run.get("counts") or {}).items()):
        out.print(f"  {type_name:<18} {count:>8}")
    if run.get("changes"):
        out.print("changes since the last run: " + describe_changes(run["changes"]))
    schemas = run.get("schemas") or {}
    if schemas:
        out.print(
            f"schemas: {schemas.get('extracted', 0)} read from the catalog, "
            f"{schemas.get('skipped', 0)} unchanged (carried over from the last run)"
        )
    if run.get("output"):
        out.print(f"entities (JSON Lines, zstd-compressed; manifest.json lists the files): {run['output']}")
    if run.get("error"):
        out.print(f"[red]error:[/red] {run['error']}")


CHANGE_KINDS = ("created", "updated", "unchanged", "deleted")


def describe_changes(changes: dict[str, int]) -> str:
    return ", ".join(f"{changes.get(kind, 0)} {kind}" for kind in CHANGE_KINDS)


def print_runs(runs: list[dict[str, Any]]) -> None:
    """One line per run under a header; changes as +created ~updated =unchanged -deleted."""
    rows = [("RUN", "STATUS", "SOURCE", "STARTED", "DURATION", "CHANGES")]
    for run in runs:
        source = run.get("source") or {}
        where = f"{source.get('host')}:{source.get('port')}/{source.get('database') or '*'}" if source else ""
        duration = run.get("duration_seconds")
        changes = run.get("changes") or {}
        marks = zip("+~=-", CHANGE_KINDS, strict=True)
        rows.append(
            (
                run["run_id"],
                run["status"] if run["status"] != "RUNNING" else f"RUNNING ({run.get('stage') or ''})",
                where,
                (run.get("created_at") or "")[:19].replace("T", " "),
                f"{duration:.1f} s" if duration is not None else "",
                " ".join(f"{mark}{changes.get(kind, 0)}" for mark, kind in marks) if changes else "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


class UsageError(Exception):
    pass


def _json_filter(text: str | None, option: str) -> Any:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{option} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f'{option} must be a JSON object like {{"<database regex>": ["<schema regex>"] | "*"}}')
    return value


def _source_spec(args: argparse.Namespace) -> dict[str, Any]:
    if not args.host or not args.user:
        raise UsageError("give --connection NAME (a registered connection), or --host and --user")
    source: dict[str, Any] = {"host": args.host, "port": args.port, "username": args.user, "sslmode": args.sslmode}
    if args.database:
        source["database"] = args.database
    if args.sslrootcert:
        source["sslrootcert"] = args.sslrootcert
    if args.auth != "basic":
        source["auth"] = {"method": args.auth, "aws_region": args.aws_region, "role_arn": args.role_arn}
    return source


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "include": _json_filter(args.include_filter, "--include-filter"),
        "exclude": _json_filter(args.exclude_filter, "--exclude-filter"),
        "temp_table_regex": args.temp_table_regex,
        "exclude_views": args.exclude_views,
        "exclude_empty_tables": args.exclude_empty_tables,
    }


def _filters_given(args: argparse.Namespace) -> bool:
    given = (args.include_filter, args.exclude_filter, args.temp_table_regex, args.exclude_views)
    return any(given) or args.exclude_empty_tables


def source_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request body shared by extract and preflight: a registered connection, or a source and its password."""
    if getattr(args, "connection", None):
        body: dict[str, Any] = {"connection": args.connection}
        if args.database:
            body["database"] = args.database
        if _filters_given(args):
            body["filters"] = _filters(args)
        return body
    password = os.environ.get("PGPASSWORD")
    if password is None:
        raise UsageError(
            "set PGPASSWORD (the password is never taken from the command line), "
            "or name a registered connection with --connection"
        )
    return {"source": _source_spec(args), "filters": _filters(args), "password": password}


def _rejected(response: Response) -> str:
    detail = response.json().get("detail")
    if isinstance(detail, list):
        return "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
    return str(detail)


def _refused(response: Response) -> str:
    if response.status_code == 401 and api_token() is None:
        return "the API wants a token: set PGMETA_API_TOKEN (or run `make up`, which writes the local one)"
    if response.status_code == 401:  # a token was sent: the answer is about that token, not a missing one
        return (
            f"the API refused the API token ({response.json().get('detail')}): "
            "set PGMETA_API_TOKEN to a valid one (`pgmeta tokens create`), or unset it to use the local stack's"
        )
    return f"not allowed: {response.json().get('detail')}"


def cmd_extract(args: argparse.Namespace) -> int:
    try:
        body = source_body(args)
    except UsageError as exc:
        return _fail(str(exc))
    body["stage_timeout_seconds"] = args.stage_timeout
    if args.full:
        body["full"] = True
    if args.request_id:
        body["request_id"] = args.request_id
    with api_client(30) as client:
        try:
            response = client.post(f"{api_url()}/runs", json=body)
        except HttpError as exc:
            return _unreachable_api(exc)
        if response.status_code == 422:
            return _fail(f"the API rejected the request: {_rejected(response)}")
        if response.status_code == 409:  # the request id is taken by a different request
            return _fail(_rejected(response))
        if response.status_code in {401, 403}:
            return _fail(_refused(response))
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


def cmd_preflight(args: argparse.Namespace) -> int:
    try:
        body = source_body(args)
    except UsageError as exc:
        return _fail(str(exc))
    with api_client(120) as client:
        try:
            response = client.post(f"{api_url()}/preflight", json=body)
        except HttpError as exc:
            return _unreachable_api(exc)
    answer = response.json()
    if "detail" in answer:
        return _fail(f"the API rejected the request: {_rejected(response)}")
    if args.json:
        print(json.dumps(answer))
    elif answer.get("ok"):
        names = ", ".join(db["database"] for db in answer["databases"])
        print(f"preflight passed: PostgreSQL {answer['server_version']}; databases: {names}")
        for key, value in answer["counts"].items():
            print(f"  {key:<10} {value:>8}")
        for warning in answer.get("warnings", []):
            print(f"  warning: {warning}")
    else:
        stderr_console().print(f"[red]error:[/red] {answer.get('error')}")
    return 0 if answer.get("ok") else 1


def cmd_status(args: argparse.Namespace) -> int:
    with api_client(30) as client:
        try:
            run = _get_run(client, args.run_id)
        except StatusError as exc:
            return _fail(f"no run {args.run_id!r}" if exc.response.status_code == 404 else str(exc))
        except HttpError as exc:
            return _unreachable_api(exc)
        if args.wait:
            run = wait_for(client, args.run_id, show=not args.json, timeout=args.timeout)
    if args.json:
        print(json.dumps(summary(run) | {"stage": run.get("stage"), "progress": run.get("progress")}))
    else:
        print_human(run)
    return 0 if run["status"] == "COMPLETED" else (1 if run["status"] == "FAILED" else 3)


def cmd_runs(args: argparse.Namespace) -> int:
    with api_client(30) as client:
        try:
            response = client.get(f"{api_url()}/runs", params={"limit": args.limit})
        except HttpError as exc:
            return _unreachable_api(exc)
    if response.status_code in {401, 403}:
        return _fail(_refused(response))
    response.raise_for_status()
    print_runs(response.json())
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    """Publishes a request document to `extraction.requested` through a Dapr sidecar's publish API."""
    data = args.data
    text = Path(data[1:]).read_text() if data.startswith("@") else data
    try:
        document = json.loads(text)
    except ValueError as exc:
        return _fail(f"--data is not JSON: {exc}")
    problems = event_problems(args.topic, document)
    if problems:
        return _fail(problems + " (nothing was published)")
    sidecar = sidecar_endpoint()
    url = f"{sidecar.url}/v1.0/publish/{args.pubsub}/{args.topic}"
    dapr_token = stack_secret("DAPR_API_TOKEN", "dapr-api-token")
    headers = {"dapr-api-token": dapr_token} if dapr_token else {}
    try:
        response = HttpClient(timeout=30, headers=headers).post(url, json=document)
    except HttpError as exc:
        return _fail(unreachable(sidecar, "the Dapr sidecar", exc))
    if response.status_code >= 300:
        return _fail(f"publish failed ({response.status_code}): {response.text}")
    print(f"published to {args.topic}")
    return 0


def cmd_tokens(args: argparse.Namespace) -> int:
    """`pgmeta tokens create | list | revoke` (admin)."""
    with api_client(30) as client:
        if args.action == "create":
            response = client.post(f"{api_url()}/tokens", json={"name": args.name, "role": args.role})
        elif args.action == "list":
            response = client.get(f"{api_url()}/tokens")
        else:
            response = client.delete(f"{api_url()}/tokens/{args.token_id}")
    if response.status_code in {401, 403}:
        return _fail(_refused(response))
    if response.status_code >= 400:
        return _fail(f"{args.action} failed ({response.status_code}): {_rejected(response)}")
    if args.action == "create":
        created = response.json()
        said = f"token {created['id']} ({created['role']}) for {created['name']}; shown once, keep it safe:"
        stderr_console().print(said)
        print(created["token"])
    elif args.action == "list":
        for token in response.json():
            print(
                f"{token['id']}  {token['role']:<9} {token['name']:<30} {token['created_at']}  by {token['created_by']}"
            )
    else:
        print(f"revoked {args.token_id}")
    return 0


def cmd_connections(args: argparse.Namespace) -> int:
    """`pgmeta connections add | list | remove` (admin; operators may list)."""
    with api_client(30) as client:
        if args.action == "add":
            try:
                spec: dict[str, Any] = {
                    "source": _source_spec(args),
                    "secret": {"store": args.secret_store, "key": args.secret},
                }
                if _filters_given(args):
                    spec["filters"] = _filters(args)
            except UsageError as exc:
                return _fail(str(exc))
            response = client.put(f"{api_url()}/connections/{args.name}", json=spec)
        elif args.action == "list":
            response = client.get(f"{api_url()}/connections")
        else:
            response = client.delete(f"{api_url()}/connections/{args.name}")
    if response.status_code in {401, 403}:
        return _fail(_refused(response))
    if response.status_code >= 400:
        return _fail(f"{args.action} failed ({response.status_code}): {_rejected(response)}")
    if args.action == "add":
        connection = response.json()
        print(f"connection {connection['name']}: {connection['qualified_name']}")
    elif args.action == "list":
        for c in response.json():
            print(f"{c['name']:<24} {c['host']}:{c['port']}/{c['database'] or '*'} as {c['username']}")
    else:
        print(f"removed {args.name}")
    return 0


def add_source_arguments(parser: argparse.ArgumentParser, *, registering: bool = False) -> None:
    if not registering:
        parser.add_argument("--connection", help="a registered connection (`pgmeta connections list`)")
    parser.add_argument("--host", required=registering, help="ad hoc (with PGPASSWORD): the server's host")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", required=registering)
    parser.add_argument("--database", help="one database; default: every database the filters admit")
    parser.add_argument(
        "--sslmode", default="prefer", choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
    )
    parser.add_argument("--sslrootcert", help="CA bundle path (as the extractor sees it) for verify-ca/verify-full")
    parser.add_argument(
        "--auth",
        default="basic",
        choices=["basic", "iam_user", "iam_role"],
        help="iam_*: an RDS IAM token per connection, from AWS keys in the connection's secret",
    )
    parser.add_argument("--aws-region", help="region of the RDS/Aurora instance (IAM)")
    parser.add_argument("--role-arn", help="role to assume (iam_role)")
    add_filter_arguments(parser)


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--include-filter", metavar="JSON", help='{"<database regex>": ["<schema regex>", ...] | "*"}')
    parser.add_argument("--exclude-filter", metavar="JSON", help="same format; wins over --include-filter")
    parser.add_argument("--temp-table-regex", metavar="RE", help="skip tables and views whose name matches")
    parser.add_argument("--exclude-views", action="store_true", help="skip views and materialized views")
    parser.add_argument("--exclude-empty-tables", action="store_true", help="skip tables with no rows")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgmeta", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    extract = sub.add_parser("extract", help="request an extraction of one PostgreSQL server")
    add_source_arguments(extract)
    extract.add_argument(
        "--request-id",
        help="idempotency key: the same request again returns its run; a different request under it is refused",
    )
    extract.add_argument("--stage-timeout", type=int, default=900, help="seconds each stage may take")
    extract.add_argument(
        "--full", action="store_true", help="read every schema, even those unchanged since the last successful run"
    )
    extract.add_argument("--wait", action="store_true", help="show progress and wait for the run to end")
    extract.add_argument("--json", action="store_true", help="print one JSON document")
    extract.add_argument("--timeout", type=float, default=3600, help="seconds to wait with --wait")
    extract.set_defaults(func=cmd_extract)

    check = sub.add_parser("preflight", help="check connection, privileges and filters; count what they select")
    add_source_arguments(check)
    check.add_argument("--json", action="store_true", help="print one JSON document")
    check.set_defaults(func=cmd_preflight)

    status = sub.add_parser("status", help="show one run")
    status.add_argument("run_id")
    status.add_argument("--wait", action="store_true")
    status.add_argument("--json", action="store_true")
    status.add_argument("--timeout", type=float, default=3600)
    status.set_defaults(func=cmd_status)

    runs = sub.add_parser("runs", help="list recent runs")
    runs.add_argument("--limit", type=int, default=20)
    runs.set_defaults(func=cmd_runs)

    tokens = sub.add_parser("tokens", help="create, list or revoke API tokens (admin)")
    token_actions = tokens.add_subparsers(dest="action", required=True)
    create = token_actions.add_parser("create", help="a new token, printed once")
    create.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    create.add_argument("--name", required=True, help="who or what holds it (shown in the audit trail)")
    token_actions.add_parser("list", help="tokens (never their values)")
    revoke = token_actions.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("token_id")
    tokens.set_defaults(func=cmd_tokens)

    connections = sub.add_parser("connections", help="register, list or remove connections (admin)")
    connection_actions = connections.add_subparsers(dest="action", required=True)
    add = connection_actions.add_parser("add", help="register (or change) a connection")
    add.add_argument("name", help="lowercase letters, digits, '-'; its qualifiedName is default/postgres/<name>")
    add_source_arguments(add, registering=True)
    add.add_argument("--secret", required=True, help="secret-store entry with 'password' (or AWS keys for IAM)")
    add.add_argument("--secret-store", default="secretstore")
    connection_actions.add_parser("list", help="registered connections")
    remove = connection_actions.add_parser("remove", help="remove a connection")
    remove.add_argument("name")
    connections.set_defaults(func=cmd_connections)

    publish = sub.add_parser("publish", help="publish an event document through a Dapr sidecar (like `dapr publish`)")
    publish.add_argument("--data", required=True, help="JSON, or @file")
    publish.add_argument("--topic", default=TopicName.EXTRACTION_REQUESTED.value)
    publish.add_argument("--pubsub", default="pubsub")
    publish.set_defaults(func=cmd_publish)

    add_observe_commands(sub)
    from pgmeta_cli.control_commands import add_control_commands
    from pgmeta_cli.schedules import add_schedule_commands  # it imports this module's helpers

    add_schedule_commands(sub)
    add_control_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    sys.exit(main())
