"""The local stack's supervisor: exits are noticed, counted and restarted with backoff; SIGTERM stops all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgmeta_devstack.layout import StackLayout
from pgmeta_devstack.ownership import STACK_MARKER
from pgmeta_devstack.processes import StackError, alive
from pgmeta_devstack.supervisor import (
    FIRST_BACKOFF_SECONDS,
    SupervisedStack,
    describe,
    parse_replicas,
    read_status,
)


def test_replicas_parse_and_refuse_typos() -> None:
    assert parse_replicas("transformer=2,publisher=3") == {
        "orchestrator": 1,
        "extractor": 1,
        "transformer": 2,
        "publisher": 3,
    }
    assert parse_replicas("") == dict.fromkeys(("orchestrator", "extractor", "transformer", "publisher"), 1)
    for bad in ("transformr=2", "transformer", "transformer=0", "publisher=x", "transformer=9"):
        with pytest.raises(StackError):
            parse_replicas(bad)


def _stack(tmp_path: Path) -> SupervisedStack:
    stack = SupervisedStack(StackLayout(47000, tmp_path))
    stack.state.mkdir(parents=True, exist_ok=True)
    return stack


def test_a_killed_child_is_restarted_with_backoff_and_counted(tmp_path: Path) -> None:
    stack = _stack(tmp_path)
    first = stack._spawn("sleeper", ["sleep", "60"], health="tcp:1")
    try:
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while stack.children["sleeper"].process.poll() is None and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
        now = time.monotonic()
        stack.watch_once(now)
        child = stack.children["sleeper"]
        assert child.last_exit == "signal SIGKILL" and child.restarts == 0, "restarts after the backoff, not at once"
        stack.watch_once(now + FIRST_BACKOFF_SECONDS)
        assert child.restarts == 1 and child.process is not None and child.process.pid != first
        assert alive(child.process.pid)
        assert (tmp_path / "pids" / "sleeper.pid").read_text() == str(child.process.pid)
        stack.write_status()
        status = read_status(stack.layout)
        assert status is not None and status["processes"]["sleeper"]["restarts"] == 1
        lines = describe(stack.layout)
        assert any("sleeper" in line and "restarts 1" in line and "not answering" in line for line in lines)
        # A crash loop backs off further each time.
        assert child.backoff == 2 * FIRST_BACKOFF_SECONDS
    finally:
        stack.stop_all()
    assert not alive(stack.children["sleeper"].process.pid)  # type: ignore[union-attr]


def test_sigterm_to_the_supervisor_stops_every_child(tmp_path: Path) -> None:
    """The supervisor process itself, started as `make up` does, with only infrastructure it can start here."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pgmeta_devstack.layout import StackLayout\n"
        "from pgmeta_devstack.supervisor import SupervisedStack\n"
        "class Tiny(SupervisedStack):\n"
        "    def up(self):\n"
        "        self._spawn('a', ['sleep', '60'], health='tcp:1')\n"
        "        self._spawn('b', ['sleep', '60'], health='tcp:1')\n"
        "    def start_replicas(self): pass\n"
        "    def stop_postgres(self): return False\n"
        f"sys.exit(Tiny(StackLayout(47000, Path({str(tmp_path)!r}))).serve())\n"
    )
    supervisor = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120  # a loaded machine imports slowly
    status = None
    while time.monotonic() < deadline:
        status = read_status(StackLayout(47000, tmp_path))
        if status and status["phase"] == "up" and len(status["processes"]) == 2:
            break
        time.sleep(0.05)
    assert status is not None and status["phase"] == "up"
    children = [info["pid"] for info in status["processes"].values()]
    assert all(alive(pid) for pid in children)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=60) == 0
    assert not any(alive(pid) for pid in children)
    final = read_status(StackLayout(47000, tmp_path))
    assert final is not None and final["phase"] == "stopped"


def _recorder(tmp_path: Path, name: str, drain_seconds: float) -> list[str]:
    """A child that notes when SIGTERM reaches it and when it exits, taking ``drain_seconds`` in between."""
    log = tmp_path / f"{name}.events"
    code = (
        "import signal, sys, time\n"
        f"def bye(*_):\n    open({str(log)!r}, 'a').write(f'term {{time.time()}}\\n'); time.sleep({drain_seconds})\n"
        f"    open({str(log)!r}, 'a').write(f'exit {{time.time()}}\\n'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "while True: time.sleep(0.05)\n"
    )
    return [sys.executable, "-c", code]


def _event(tmp_path: Path, name: str, kind: str) -> float:
    lines = (tmp_path / f"{name}.events").read_text().split()
    return float(lines[lines.index(kind) + 1])


def test_the_trace_collector_stops_after_the_services_that_send_it_spans(tmp_path: Path) -> None:
    """Services flush their last spans as they drain: a collector stopped beside them dropped the run's tail
    (and every service logged it)."""
    stack = _stack(tmp_path)
    marked = dict(os.environ) | {STACK_MARKER: str(stack.state)}  # as the stack spawns them: its own, to stop
    for name, drain_seconds in (("zipkin", 0.0), ("orchestrator", 0.5), ("orchestrator-daprd", 0.2)):
        stack._spawn(name, _recorder(tmp_path, name, drain_seconds), env=marked, health="tcp:1")
    time.sleep(0.5)  # the children have set their handlers
    stack.stop_all()
    assert _event(tmp_path, "zipkin", "term") >= _event(tmp_path, "orchestrator", "exit")
    assert _event(tmp_path, "zipkin", "term") >= _event(tmp_path, "orchestrator-daprd", "exit")
