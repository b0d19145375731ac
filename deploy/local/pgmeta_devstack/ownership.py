"""Which running processes belong to one local stack, found without trusting its pid files.

Pid files go stale (deleted, or left behind by a stack that was killed); ``make down`` must still stop
everything a checkout started. Every process the stack spawns carries ``STACK_MARKER=<state dir>`` in its
environment and works in the state directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

# Not PGMETA_-prefixed: the sidecars' `envstore` secret store exposes every PGMETA_ variable.
STACK_MARKER = "DEVSTACK_STATE_DIR"


def _environ(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return []


def marked_by(pid: int, state_dir: Path) -> bool:
    """True when ``pid`` was spawned by the stack whose state directory is ``state_dir``."""
    return f"{STACK_MARKER}={state_dir}".encode() in _environ(pid)


# Servers that overwrite their own environment and command line (Redis's process title does) or that
# pg_ctl starts without the marker (PostgreSQL): theirs are the stack's when they also work in its state
# directory (the stack starts everything there; Redis and PostgreSQL move into their data folder inside).
SERVER_EXECUTABLES = frozenset({"redis-server", "postgres", "daprd", "placement", "scheduler"})


def _server_working_in(pid: int, state_dir: Path) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        executable = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return False
    inside = cwd == str(state_dir) or cwd.startswith(f"{state_dir}/")
    return inside and executable in SERVER_EXECUTABLES


def belongs_to(pid: int, state_dir: Path) -> bool:
    """True when ``pid`` is one of the processes of the stack in ``state_dir`` (not a stranger reusing a pid)."""
    return marked_by(pid, state_dir) or _server_working_in(pid, state_dir)


def _ancestors() -> set[int]:
    """This process and its parents: `make` or a shell may well run with the state dir in their arguments."""
    found = set()
    pid = os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return found


def stack_processes(state_dir: Path) -> list[int]:
    """Live processes of the stack in ``state_dir``, whether or not a pid file names them."""
    own = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in own:
            continue
        pid = int(entry.name)
        if belongs_to(pid, state_dir):
            found.append(pid)
    return sorted(found)


def supervisor_processes(state_dir: Path) -> list[int]:
    """The stack's supervisor(s), found without their pid file: stopped first, so none restarts a child."""
    found = []
    for pid in stack_processes(state_dir):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"pgmeta_devstack.supervisor" in cmdline:
            found.append(pid)
    return found


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return state in {"Z", "X"}


def terminate(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM (to the process group where the process leads one), SIGKILL to what is left after ``timeout``."""

    def send(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    for pid in pids:
        send(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(_gone(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        if not _gone(pid):
            send(pid, signal.SIGKILL)
