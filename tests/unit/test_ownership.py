"""`make down` finds the stack's processes without its pid files, and leaves everyone else's alone."""

import subprocess
import sys
from pathlib import Path

from pgmeta_devstack.ownership import stack_processes, terminate
from pgmeta_devstack.processes import alive, recorded_pid, spawn

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_a_process_whose_pid_file_is_gone_is_still_found_and_stopped(tmp_path: Path) -> None:
    state = tmp_path.resolve()
    pid = spawn("sleeper", SLEEP, logs=state / "logs", pids=state / "pids", cwd=state, env={})
    try:
        assert recorded_pid(state / "pids", "sleeper") == pid
        (state / "pids" / "sleeper.pid").unlink()
        assert stack_processes(state) == [pid]
        terminate(stack_processes(state), timeout=5)
        assert not alive(pid)
    finally:
        subprocess.run(["kill", "-9", str(pid)], check=False, capture_output=True)


def test_a_stranger_is_neither_found_nor_trusted_with_a_recorded_pid(tmp_path: Path) -> None:
    state = tmp_path.resolve()
    (state / "pids").mkdir()
    # Looks at a file in the state directory, and reuses a pid the stack once recorded.
    stranger = subprocess.Popen([*SLEEP, str(state / "logs" / "redis.log")], cwd=state)
    try:
        (state / "pids" / "redis.pid").write_text(str(stranger.pid))
        assert stack_processes(state) == []
        assert recorded_pid(state / "pids", "redis") is None
    finally:
        stranger.kill()
        stranger.wait()
