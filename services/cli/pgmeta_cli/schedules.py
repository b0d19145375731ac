"""`pgmeta schedules add|list|show|pause|resume|delete` and `pgmeta gc [--dry-run]`.

A schedule names a registered connection (``--connection``, see `pgmeta connections`): the connection brings
the server and its credentials, so no password is kept for nightly runs and no secret is named by the caller.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from pgmeta_cli.http_client import Response
from pgmeta_cli.main import (
    UsageError,
    _fail,
    _filters,
    _filters_given,
    _refused,
    _rejected,
    add_filter_arguments,
    api_client,
    api_url,
)


def _answer(response: Response, *, as_json: bool, show: Any) -> int:
    if response.status_code in {401, 403}:
        return _fail(_refused(response))
    if response.status_code == 404:
        return _fail(str(response.json().get("detail")), code=1)
    if response.status_code >= 400:
        return _fail(f"refused ({response.status_code}): {_rejected(response)}")
    if response.status_code == 204:
        return 0
    body = response.json()
    if as_json:
        print(json.dumps(body, indent=2))
    else:
        show(body)
    return 0


def _one_line(schedule: dict[str, Any]) -> str:
    spec = schedule["spec"]
    state = "paused" if schedule["paused"] else f"next {schedule['next_due']}"
    where = f"{spec['connection']}/{spec.get('database') or '*'}"
    return f"{schedule['schedule_id']:<32} {spec['schedule']:<16} {spec['time_zone']:<16} {where:<32} {state}"


def _show(schedule: dict[str, Any]) -> None:
    print(_one_line(schedule))
    spec = schedule["spec"]
    print(f"  overlap={spec['overlap']} missed={spec['missed']} jitter={spec['jitter_seconds']}s")
    for tick in schedule["last_runs"]:
        run = f" {tick['run_id']} {tick.get('status') or ''}" if tick.get("run_id") else ""
        print(f"  {tick['due']}  {tick['outcome']:<18}{run}")


def cmd_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"connection": args.connection}
    if args.database:
        body["database"] = args.database
    try:
        if _filters_given(args):
            body["filters"] = _filters(args)
    except UsageError as exc:
        return _fail(str(exc))
    body |= {
        "schedule": args.schedule,
        "time_zone": args.time_zone,
        "overlap": args.overlap,
        "missed": args.missed,
        "jitter_seconds": args.jitter,
        "stage_timeout_seconds": args.stage_timeout,
    }
    if args.id:
        body["schedule_id"] = args.id
    with api_client(30) as client:
        response = client.post(f"{api_url()}/schedules", json=body)
    return _answer(response, as_json=args.json, show=_show)


def cmd_list(args: argparse.Namespace) -> int:
    with api_client(30) as client:
        response = client.get(f"{api_url()}/schedules")
    return _answer(response, as_json=args.json, show=lambda items: [print(_one_line(s)) for s in items])


def _by_id(method: str, suffix: str = "") -> Any:
    def command(args: argparse.Namespace) -> int:
        with api_client(30) as client:
            response = client.request(method, f"{api_url()}/schedules/{args.schedule_id}{suffix}")
        return _answer(response, as_json=getattr(args, "json", False), show=_show)

    return command


def cmd_gc(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"dry_run": str(args.dry_run).lower()}
    if args.keep is not None:
        params["keep"] = args.keep
    with api_client(600) as client:
        response = client.post(f"{api_url()}/gc", params=params)

    def show(report: dict[str, Any]) -> None:
        verb = "would delete" if report["dry_run"] else "deleted"
        for run in report["runs"]:
            print(f"{verb} run {run['run_id']:<40} {run['location'] or '':<60} {run['files']} files")
        for run_id in report["workflows"]:
            print(f"{verb} workflow history of {run_id}")
        runs, workflows, kept = len(report["runs"]), len(report["workflows"]), len(report["kept"])
        print(f"{verb}: {runs} run folders, {report['files']} files, {workflows} workflow histories; kept {kept}")

    return _answer(response, as_json=args.json, show=show)


def add_schedule_commands(sub: Any) -> None:
    """Registers `schedules ...` and `gc` on the top-level parser's subcommands."""
    schedules = sub.add_parser("schedules", help="scheduled extractions (cron, @every, @daily) on Dapr's scheduler")
    verbs = schedules.add_subparsers(dest="verb", required=True)

    add = verbs.add_parser("add", help="create a schedule of a registered connection")
    add.add_argument("--connection", required=True, help="a registered connection (`pgmeta connections list`)")
    add.add_argument("--database", help="one database, for a connection registered for all of them")
    add_filter_arguments(add)
    add.add_argument("--schedule", required=True, help="'0 2 * * *', '@every 15m', '@daily', ...")
    add.add_argument("--time-zone", default="UTC", help="IANA zone the cron fields are read in")
    add.add_argument("--id", help="schedule id (lowercase letters, digits, dashes); derived when absent")
    add.add_argument("--overlap", choices=["skip", "queue"], default="skip", help="a tick while the last run runs")
    add.add_argument("--missed", choices=["run_once", "skip"], default="run_once", help="a tick missed while down")
    add.add_argument("--jitter", type=int, default=0, help="delay each tick by a stable 0..N seconds")
    add.add_argument("--stage-timeout", type=int, default=900, help="seconds each stage may take")
    add.add_argument("--json", action="store_true")
    add.set_defaults(func=cmd_add)

    listing = verbs.add_parser("list", help="every schedule and its next due time")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    for verb, method, suffix, text in (
        ("show", "GET", "", "one schedule: next due time, last runs and their outcomes"),
        ("pause", "POST", "/pause", "stop ticking (the definition stays)"),
        ("resume", "POST", "/resume", "tick again from now on"),
        ("delete", "DELETE", "", "remove the schedule and its pending job"),
    ):
        command = verbs.add_parser(verb, help=text)
        command.add_argument("schedule_id")
        command.add_argument("--json", action="store_true")
        command.set_defaults(func=_by_id(method, suffix))

    gc = sub.add_parser("gc", help="retention: delete old run output and finished workflow histories")
    gc.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    gc.add_argument("--keep", type=int, help="successful runs to keep per connection (default: the server's)")
    gc.add_argument("--json", action="store_true")
    gc.set_defaults(func=cmd_gc)
