"""Background processes with pid files and log files, readiness awaited by polling, never by sleeping blind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from pgmeta_devstack.ownership import STACK_MARKER, belongs_to


class StackError(RuntimeError):
    pass


def spawn(name: str, argv: Sequence[str], *, logs: Path, pids: Path, cwd: Path, env: dict[str, str]) -> int:
    """Starts ``argv`` in its own session (it outlives the caller) and records its pid.

    The pid folder lives in the stack's state directory; the process is marked with that directory, so
    the stack can tell its own processes from strangers that reuse a recorded pid (see ownership.py).
    """
    logs.mkdir(parents=True, exist_ok=True)
    pids.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**env, STACK_MARKER: str(pids.parent)},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (pids / f"{name}.pid").write_text(str(process.pid))
    return process.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone: reap it if it is our child; otherwise its parent (perhaps a PID 1 that
    # never reaps, as in some containers) will.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in {"Z", "X"}


def recorded_pid(pids: Path, name: str) -> int | None:
    path = pids / f"{name}.pid"
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
    except ValueError:
        return None
    return pid if alive(pid) and belongs_to(pid, pids.parent) else None


def stop(pids: Path, name: str, timeout: float = 10.0) -> bool:
    """SIGTERM to the process group, SIGKILL after ``timeout``. True when something was stopped."""
    pid = recorded_pid(pids, name)
    (pids / f"{name}.pid").unlink(missing_ok=True)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    if alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code < 300
    except httpx.HTTPError:
        return False


def wait_until(
    what: str, ready: Callable[[], bool], *, timeout: float, pid: int | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if pid is not None and not alive(pid):
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise StackError(f"{what} exited during start-up; last log lines:\n{tail}")
        time.sleep(0.1)
    raise StackError(f"{what} not ready after {timeout:.0f} s" + (f" (see {log})" if log else ""))
