"""`pgmeta-stack up | down | status | demo`: the local stack behind `make up`, `make down` and `make run`."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import subprocess
import sys
import time

from pgmeta_devstack import supervisor
from pgmeta_devstack.layout import StackLayout
from pgmeta_devstack.local_secrets import USER_FILE, SecretsFileError, set_user_secret
from pgmeta_devstack.processes import StackError, recorded_pid
from pgmeta_devstack.stack import DEMO_DATABASE, LocalStack
from pgmeta_devstack.tracing import print_trace_link


def _print_layout(layout: StackLayout) -> None:
    width = max(len(name) for name, _ in layout.describe())
    for name, where in layout.describe():
        print(f"  {name:<{width}}  {where}")


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while the demo runs."""


def _interrupted(signum: int, _frame: object) -> None:
    # A terminal's Ctrl-C reaches us twice under `uv run` (the group's SIGINT and uv's forwarded copy):
    # from the first signal on, ignore both so that nothing interrupts the shutdown.
    _ignore_stop_signals()
    raise Interrupted(signal.Signals(signum).name)


def _ignore_stop_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def demo(stack: LocalStack) -> int:
    """Starts the supervised stack (as `make up`), extracts the demo database through the CLI, keeps the stack
    up until Ctrl-C: a process that dies meanwhile is restarted.

    Ctrl-C (once or more) or SIGTERM at any point, start-up included, stops the whole stack and exits 0.
    """
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupted)
    code = 0
    try:
        code = _demo_run(stack)
    except Interrupted as exc:
        print(f"\n[stack] {exc} received", flush=True)
    finally:
        _ignore_stop_signals()
        stopped = ["supervisor and its children"] if supervisor.stop_supervisor(stack.layout) else []
        stopped += stack.down()
        print("[stack] stopped: " + (", ".join(stopped) if stopped else "nothing was running"), flush=True)
    return code


def _demo_run(stack: LocalStack) -> int:
    started = time.monotonic()
    print(f"[stack] starting, supervised (its log: {stack.layout.logs / 'supervisor.log'})", flush=True)
    supervisor.start_detached(stack.layout, os.environ.get("PGMETA_REPLICAS"))
    print(f"[stack] up in {time.monotonic() - started:.1f} s (supervised: crashed processes restart)")
    _print_layout(stack.layout)
    print(f"\n[demo] extracting database {DEMO_DATABASE!r} from the demo PostgreSQL\n", flush=True)
    request_id = f"demo-{int(time.time())}"
    result = subprocess.run(
        stack.extract_argv(request_id),
        env=stack.cli_env(),
        check=False,
        # Its own session: Ctrl-C is ours to handle (subprocess.run kills the CLI when we are interrupted).
        start_new_session=True,
    )
    if result.returncode != 0:
        print("[demo] the extraction failed; the stack stays up for a look (logs above). Ctrl-C stops it.")
    print_trace_link(stack, request_id)
    if os.environ.get("PGMETA_DEMO_EXIT"):
        return result.returncode
    print(f"\n[demo] the stack and the REST API ({stack.layout.api_url}) stay up until Ctrl-C.", flush=True)
    print(f"[demo] web console: {stack.layout.api_url}/console/ (sign in with the token in {stack.state}/api-token)")
    # Until Ctrl-C, or until `make down` in another terminal stops the supervisor (and the stack) under us.
    while recorded_pid(stack.layout.pids, supervisor.SUPERVISOR) is not None:
        time.sleep(1)
    print("\n[demo] the stack was stopped elsewhere (make down)", flush=True)
    return result.returncode


def secrets_command(stack: LocalStack, words: list[str], username: str | None) -> int:
    """`secrets set NAME [--username U]` (password from the terminal or stdin) or `secrets reload`."""
    if words[:1] == ["set"] and len(words) == 2:
        password = getpass.getpass(f"password for {words[1]!r}: ") if sys.stdin.isatty() else sys.stdin.readline()
        fields = {"password": password.rstrip("\n")} | ({"username": username} if username else {})
        try:
            set_user_secret(stack.state, words[1], fields)
        except SecretsFileError as exc:
            raise StackError(str(exc)) from None
        print(f"[stack] secret {words[1]!r} saved in {stack.state / USER_FILE}")
    elif words != ["reload"]:
        raise StackError("usage: pgmeta-stack secrets set NAME [--username U] | pgmeta-stack secrets reload")
    try:
        reloaded = stack.reload_secretstore()
    except SecretsFileError as exc:
        raise StackError(str(exc)) from None
    if reloaded:
        print("[stack] extractor and publisher sidecars restarted: the secret store is current")
    else:
        print("[stack] the stack is not up; `make up` will read the secrets")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgmeta-stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "demo", "secrets"])
    parser.add_argument("words", nargs="*", metavar="set NAME | reload", help="secrets: what to do")
    parser.add_argument("--username", help="secrets set: the username stored with the password")
    args = parser.parse_args(argv)
    stack = LocalStack(StackLayout.default())
    try:
        if args.command == "up":
            started = time.monotonic()
            supervisor.start_detached(stack.layout, os.environ.get("PGMETA_REPLICAS"))
            print(f"[stack] up in {time.monotonic() - started:.1f} s (supervised: crashed processes restart)")
            _print_layout(stack.layout)
        elif args.command == "down":
            stopped = ["supervisor and its children"] if supervisor.stop_supervisor(stack.layout) else []
            stopped += stack.down()
            print("[stack] stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        elif args.command == "secrets":
            return secrets_command(stack, args.words, args.username)
        elif args.command == "status":
            print("[stack] " + ("up" if stack.is_up() else "not (fully) up"))
            _print_layout(stack.layout)
            print("\n".join(supervisor.describe(stack.layout)))
        else:
            return demo(stack)
    except StackError as exc:
        print(f"[stack] ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    sys.exit(main())
