"""`make run` as a terminal drives it: Ctrl-C (a SIGINT to the whole process group), twice, or SIGTERM,
at any point, stops every process of the stack; `make down` stops a stack whose pid files are gone."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pgmeta_devstack.layout import free_port_block, repo_root
from pgmeta_devstack.processes import recorded_pid
from tests.plugins.servers import _assert_all_stopped, _require_dapr

pytestmark = pytest.mark.e2e

READY = "stay up until Ctrl-C"


@dataclass
class StackCommand:
    """`uv run pgmeta-stack <command>` in its own process group, as a terminal's foreground job."""

    process: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        def pump() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for_line(self, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                assert self.process.poll() is None, "".join(self.seen)
                continue
            self.seen.append(line)
            if text in line:
                return
        raise AssertionError(f"no {text!r} within {timeout} s:\n{''.join(self.seen)}")

    def finish(self, timeout: float = 90) -> tuple[int, str]:
        code = self.process.wait(timeout=timeout)
        time.sleep(0.2)  # let the pump thread drain the pipe
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return code, "".join(self.seen)


def stack_command(command: str, state: Path, base_port: int) -> StackCommand:
    env = dict(os.environ, PGMETA_BASE_PORT=str(base_port), PGMETA_STATE_DIR=str(state))
    env.pop("PGMETA_DEMO_EXIT", None)
    uv = shutil.which("uv") or "uv"
    process = subprocess.Popen(
        [uv, "run", "--frozen", "pgmeta-stack", command],
        cwd=repo_root(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    return StackCommand(process)


def stack_processes(state: Path) -> list[int]:
    """Processes working inside the state directory (every process the stack starts runs there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                continue
            if cwd == str(state) or cwd.startswith(f"{state}/"):
                found.append(int(entry.name))
    return found


def _stack_pids(state: Path) -> list[int]:
    pids = [int(p.read_text()) for p in (state / "pids").glob("*.pid")] if (state / "pids").exists() else []
    postmaster = state / "postgres" / "postmaster.pid"
    if postmaster.exists():
        pids.append(int(postmaster.read_text().splitlines()[0]))
    return sorted(set(pids) | set(stack_processes(state)))


@pytest.fixture
def stack_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, int]]:
    _require_dapr()
    state = tmp_path_factory.mktemp("signals").resolve()
    os.chmod(state, 0o755)
    base = free_port_block(28300)
    try:
        yield state, base
    finally:
        down = stack_command("down", state, base)
        down.finish()
        _assert_all_stopped(stack_processes(state))


def _interrupt(run: StackCommand, how: str) -> None:
    group = run.process.pid
    if how == "ctrl-c":
        os.killpg(group, signal.SIGINT)
    elif how == "ctrl-c twice":
        os.killpg(group, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(group, signal.SIGINT)
    else:
        run.process.send_signal(signal.SIGTERM)  # `kill <pid of make's child>`


def test_ctrl_c_twice_and_sigterm_stop_everything_and_exit_cleanly(stack_home: tuple[Path, int]) -> None:
    state, base = stack_home
    for how in ("ctrl-c", "ctrl-c twice", "sigterm"):
        run = stack_command("demo", state, base)
        run.wait_for_line(READY, timeout=300)  # a supervised start-up plus the demo run, on a loaded machine
        pids = _stack_pids(state)
        assert len(pids) >= 12, pids
        _interrupt(run, how)
        code, output = run.finish()
        assert code == 0, f"{how}: exit {code}\n{output}"
        assert "Traceback" not in output, output
        _assert_all_stopped(pids)
        assert stack_processes(state) == [], how


def test_ctrl_c_during_start_up_stops_what_was_started(stack_home: tuple[Path, int]) -> None:
    state, base = stack_home
    run = stack_command("demo", state, base)
    run.wait_for_line("starting, supervised")
    deadline = time.monotonic() + 60  # the supervisor has started Redis: the stack is half up
    while recorded_pid(state / "pids", "redis") is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert recorded_pid(state / "pids", "redis") is not None
    os.killpg(run.process.pid, signal.SIGINT)
    code, output = run.finish()
    assert code == 0, output
    assert "Traceback" not in output, output
    _assert_all_stopped(_stack_pids(state))
    assert stack_processes(state) == []


def test_make_down_stops_a_stack_whose_pid_files_are_gone(stack_home: tuple[Path, int]) -> None:
    state, base = stack_home
    up = stack_command("up", state, base)
    code, output = up.finish(timeout=180)
    assert code == 0, output
    pids = _stack_pids(state)
    assert len(pids) >= 12, pids
    shutil.rmtree(state / "pids")
    (state / "postgres" / "postmaster.pid").rename(state / "postgres" / "postmaster.pid.stale")
    code, output = stack_command("down", state, base).finish()
    assert code == 0, output
    _assert_all_stopped(pids)


def test_make_down_from_another_terminal_ends_make_run(stack_home: tuple[Path, int]) -> None:
    state, base = stack_home
    run = stack_command("demo", state, base)
    run.wait_for_line(READY, timeout=300)  # a supervised start-up plus the demo run, on a loaded machine
    pids = _stack_pids(state)
    code, output = stack_command("down", state, base).finish()
    assert code == 0, output
    code, output = run.finish(timeout=30)
    assert code == 0 and "stopped elsewhere" in output, output
    _assert_all_stopped(pids)
    assert stack_processes(state) == []
