"""`pgmeta-stack up | down | status | demo`: the local stack behind `make up`, `make down` and `make run`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from pgmeta_devstack.layout import StackLayout
from pgmeta_devstack.processes import StackError
from pgmeta_devstack.stack import DEMO_DATABASE, LocalStack


def _print_layout(layout: StackLayout) -> None:
    width = max(len(name) for name, _ in layout.describe())
    for name, where in layout.describe():
        print(f"  {name:<{width}}  {where}")


def demo(stack: LocalStack) -> int:
    """Starts the stack, extracts the demo database through the CLI, keeps the stack up until Ctrl-C."""
    started = time.monotonic()
    stack.up()
    print(f"[stack] up in {time.monotonic() - started:.1f} s")
    _print_layout(stack.layout)
    env = dict(
        os.environ,
        PGPASSWORD=stack.demo_password(),
        PGMETA_API_URL=stack.layout.api_url,
        PGMETA_API_TOKEN=stack.api_token(),
    )
    print(f"\n[demo] extracting database {DEMO_DATABASE!r} from the demo PostgreSQL\n", flush=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pgmeta_cli.main",
            "extract",
            "--host",
            "127.0.0.1",
            "--port",
            str(stack.layout.postgres_port),
            "--user",
            "postgres",
            "--database",
            DEMO_DATABASE,
            "--request-id",
            f"demo-{int(time.time())}",
            "--wait",
        ],
        env=env,
        check=False,
    )
    if result.returncode != 0:
        print("[demo] the extraction failed; the stack stays up for a look (logs above). Ctrl-C stops it.")
    if os.environ.get("PGMETA_DEMO_EXIT"):
        stack.down()
        return result.returncode
    print(f"\n[demo] the stack and the REST API ({stack.layout.api_url}) stay up until Ctrl-C.", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print("\n[stack] stopping: " + ", ".join(stack.down()))
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pgmeta-stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "demo"])
    args = parser.parse_args(argv)
    stack = LocalStack(StackLayout.default())
    try:
        if args.command == "up":
            started = time.monotonic()
            stack.up()
            print(f"[stack] up in {time.monotonic() - started:.1f} s")
            _print_layout(stack.layout)
        elif args.command == "down":
            stopped = stack.down()
            print("[stack] stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        elif args.command == "status":
            print("[stack] " + ("up" if stack.is_up() else "not (fully) up"))
            _print_layout(stack.layout)
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
