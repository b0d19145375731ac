"""`pgmeta cancel <run-id>` and `pgmeta retry <run-id>`: stop a run, or resume a failed one where it stopped."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from pgmeta_cli import main as cli
from pgmeta_cli.http_client import HttpError


def _post(path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    try:
        response = cli.api_client(30).post(f"{cli.api_url()}{path}", json=body)
    except HttpError as exc:
        return 0, {"detail": f"cannot reach the pgmeta API at {cli.api_url()}: {exc} (is the stack up? `make up`)"}
    try:
        answer: dict[str, Any] = response.json()
    except ValueError:
        answer = {"detail": response.text or f"HTTP {response.status_code}"}
    return response.status_code, answer


def cmd_cancel(args: argparse.Namespace) -> int:
    code, answer = _post(f"/runs/{args.run_id}/cancel")
    if code != 202:
        return cli._fail(str(answer.get("detail")), 1)
    print(json.dumps(answer) if args.json else f"run {args.run_id}: cancelled")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    # A run given an inline password needs it again (it was deleted when the run ended); PGPASSWORD has it.
    password = os.environ.get("PGPASSWORD")
    code, answer = _post(f"/runs/{args.run_id}/retry", {"password": password} if password else {})
    if code != 202:
        return cli._fail(str(answer.get("detail")), 1)
    if not args.wait:
        print(json.dumps(answer) if args.json else f"run {args.run_id}: retrying")
        return 0
    with cli.api_client(30) as client:
        run = cli.wait_for(client, args.run_id, show=not args.json, timeout=args.timeout)
    if args.json:
        print(json.dumps(cli.summary(run)))
    else:
        cli.print_human(run)
    return 0 if run["status"] == "COMPLETED" else 1


def add_control_commands(sub: Any) -> None:
    cancel = sub.add_parser("cancel", help="stop a run: no output is committed, its password is deleted")
    cancel.add_argument("run_id")
    cancel.add_argument("--json", action="store_true")
    cancel.set_defaults(func=cmd_cancel)

    retry = sub.add_parser("retry", help="resume a failed or cancelled run from the first unfinished unit")
    retry.add_argument("run_id")
    retry.add_argument("--wait", action="store_true", help="show progress and wait for the run to end")
    retry.add_argument("--json", action="store_true")
    retry.add_argument("--timeout", type=float, default=3600)
    retry.set_defaults(func=cmd_retry)
