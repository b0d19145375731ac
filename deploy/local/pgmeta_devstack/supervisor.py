"""The local stack's supervisor, as Kubernetes is in a cluster: one process that owns every child of a stack.

`pgmeta-stack up` starts it detached (``python -m pgmeta_devstack.supervisor``). It starts the stack in the
usual order (``LocalStack.up``, readiness awaited), plus any replicas asked for with
``PGMETA_REPLICAS=transformer=2,publisher=2``, then watches: a child that exits is logged, counted and
restarted with exponential backoff. ``<state>/supervisor.json`` says what runs (pid, restarts, last exit) for
`make status`. SIGTERM (or SIGINT, SIGHUP) stops restarting and stops every child, then the supervisor exits:
`make down` only has to signal the supervisor (its pid is ``<state>/pids/supervisor.pid``).

The demo PostgreSQL is started (and stopped) with the stack but not watched: it is a source, not part of
the platform.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgmeta_devstack import tracing
from pgmeta_devstack.layout import SERVICES, StackLayout
from pgmeta_devstack.processes import StackError, alive, http_ok, port_open, recorded_pid, spawn, stop, wait_until
from pgmeta_devstack.stack import LocalStack

log = logging.getLogger("pgmeta.supervisor")

SUPERVISOR = "supervisor"
STATUS_FILE = "supervisor.json"
HOLD_DIR = "hold"  # a file <state>/hold/<name> keeps that process down after it exits (outages in tests)
# KEY=VALUE lines in <state>/env/<name> are added to that process's environment at each (re)start: a changed
# configuration rolls out with the next restart, as a changed Deployment does in a cluster.
ENV_DIR = "env"
FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 10.0
STABLE_AFTER_SECONDS = 30.0
# An app with work in flight drains for up to PGMETA_DRAIN_SECONDS (25 by default) before it exits by itself.
APP_STOP_SECONDS = 35.0  # a child that ran this long restarts at the first backoff again
# Ports base+82..base+99 of the stack's block (base+70..73 are the apps' metrics, base+80 the trace viewer):
# 6 per extra replica.
REPLICA_PORT_OFFSET = 82
PORTS_PER_REPLICA = 6
MAX_EXTRA_REPLICAS = (100 - REPLICA_PORT_OFFSET) // PORTS_PER_REPLICA


def parse_replicas(text: str | None) -> dict[str, int]:
    """``transformer=2,publisher=2`` → instances per stage service (1 for any not named)."""
    replicas = dict.fromkeys(SERVICES, 1)
    for item in (text or "").replace(" ", "").split(","):
        if not item:
            continue
        name, sep, count = item.partition("=")
        if not sep or name not in SERVICES or not count.isdigit() or int(count) < 1:
            raise StackError(f"REPLICAS: {item!r} is not <service>=<count> with a service of {', '.join(SERVICES)}")
        replicas[name] = int(count)
    extra = sum(n - 1 for n in replicas.values())
    if extra > MAX_EXTRA_REPLICAS:
        raise StackError(f"REPLICAS: at most {MAX_EXTRA_REPLICAS} instances beyond one per service ({extra} asked)")
    return replicas


@dataclass(frozen=True)
class ReplicaPorts:
    """Ports of one extra instance of a service (the first instance keeps the layout's ports)."""

    app: int
    dapr_http: int
    dapr_grpc: int
    dapr_internal_grpc: int
    dapr_metrics: int
    app_metrics: int

    @classmethod
    def slot(cls, layout: StackLayout, slot: int) -> ReplicaPorts:
        first = layout.base_port + REPLICA_PORT_OFFSET + PORTS_PER_REPLICA * slot
        return cls(first, first + 1, first + 2, first + 3, first + 4, first + 5)


def instance_name(service: str, instance: int) -> str:
    """``transformer`` for the first instance, ``transformer-2`` for the second, ..."""
    return service if instance == 1 else f"{service}-{instance}"


def _replace_flags(argv: Sequence[str], values: dict[str, int]) -> list[str]:
    out = list(argv)
    for flag, value in values.items():
        out[out.index(flag) + 1] = str(value)
    return out


@dataclass
class Child:
    """One supervised process: how to start it, how to tell it is healthy, what happened to it so far."""

    name: str
    argv: list[str]
    env: dict[str, str]
    health: str  # "http://..." or "tcp:<port>"
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    last_exit: str | None = None
    restart_at: float | None = None
    backoff: float = FIRST_BACKOFF_SECONDS
    history: list[str] = field(default_factory=list)


def env_overrides(state: Path, name: str) -> dict[str, str]:
    """The KEY=VALUE lines of ``<state>/env/<name>`` (blank lines and ``#`` comments skipped)."""
    path = state / ENV_DIR / name
    if not path.exists():
        return {}
    overrides = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            overrides[key.strip()] = value.strip()
    return overrides


def health_ok(health: str) -> bool:
    if health.startswith("tcp:"):
        return port_open(int(health.removeprefix("tcp:")))
    return http_ok(health)


class SupervisedStack(LocalStack):
    """``LocalStack`` whose processes are children of this process, restarted when they exit."""

    def __init__(self, layout: StackLayout, replicas: dict[str, int] | None = None) -> None:
        super().__init__(layout)
        self.replicas = replicas or dict.fromkeys(SERVICES, 1)
        self.children: dict[str, Child] = {}
        self.phase = "starting"
        self.error: str | None = None
        self._stopping = False

    # -- starting: LocalStack's order and readiness checks, with every process a child of ours ------------------

    def _health_of(self, name: str) -> str:
        layout = self.layout
        if name == "redis":
            return f"tcp:{layout.redis_port}"
        if name in {"placement", "scheduler"}:
            base = layout.placement_port if name == "placement" else layout.scheduler_port
            return f"http://127.0.0.1:{base + 1}/healthz"
        if name == tracing.ZIPKIN:
            return f"{layout.zipkin_url}/health"
        if name.endswith("-daprd"):
            return f"http://127.0.0.1:{layout.dapr_http_port(name.removesuffix('-daprd'))}/v1.0/healthz"
        return f"http://127.0.0.1:{layout.app_port(name)}/healthz"

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None, health: str | None = None) -> int:
        child = Child(name, list(argv), env or dict(os.environ), health or self._health_of(name))
        self.children[name] = child
        self._start(child)
        assert child.process is not None
        return child.process.pid

    def _start(self, child: Child) -> None:
        logs, pids = self.layout.logs, self.layout.pids
        logs.mkdir(parents=True, exist_ok=True)
        pids.mkdir(parents=True, exist_ok=True)
        with open(logs / f"{child.name}.log", "ab") as out:
            # Its own session: a Ctrl-C in the terminal that ran `make up` reaches the supervisor only,
            # which then stops the children in order.
            child.process = subprocess.Popen(
                child.argv,
                cwd=self.state,
                env=child.env | env_overrides(self.state, child.name),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (pids / f"{child.name}.pid").write_text(str(child.process.pid))
        child.started_at = time.monotonic()
        child.restart_at = None

    def start_replicas(self) -> None:
        slot = 0
        for service in SERVICES:
            for instance in range(2, self.replicas[service] + 1):
                ports = ReplicaPorts.slot(self.layout, slot)
                slot += 1
                name = instance_name(service, instance)
                env = self._service_env(service) | {
                    "PGMETA_APP_PORT": str(ports.app),
                    "PGMETA_DAPR_GRPC_PORT": str(ports.dapr_grpc),
                    "PGMETA_DAPR_HTTP_PORT": str(ports.dapr_http),
                    "DAPR_GRPC_PORT": str(ports.dapr_grpc),
                    "DAPR_HTTP_PORT": str(ports.dapr_http),
                    "OTEL_EXPORTER_PROMETHEUS_PORT": str(ports.app_metrics),
                }
                app_pid = self._spawn(
                    name, [sys.executable, "-m", f"pgmeta_{service}"], env, f"http://127.0.0.1:{ports.app}/healthz"
                )
                sidecar_argv = _replace_flags(
                    self.daprd_argv(service),
                    {
                        "--app-port": ports.app,
                        "--dapr-http-port": ports.dapr_http,
                        "--dapr-grpc-port": ports.dapr_grpc,
                        "--dapr-internal-grpc-port": ports.dapr_internal_grpc,
                        "--metrics-port": ports.dapr_metrics,
                    },
                )
                sidecar_pid = self._spawn(
                    f"{name}-daprd",
                    sidecar_argv,
                    self._sidecar_env(),
                    f"http://127.0.0.1:{ports.dapr_http}/v1.0/healthz",
                )
                for what, pid in ((name, app_pid), (f"{name}-daprd", sidecar_pid)):
                    wait_until(what, self._healthy(what), timeout=90, pid=pid, log=self.layout.logs / f"{what}.log")

    def _healthy(self, name: str) -> Callable[[], bool]:
        health = self.children[name].health
        return lambda: health_ok(health)

    # -- watching -------------------------------------------------------------------------------------------------

    def watch_once(self, now: float) -> None:
        """One pass: note exits, restart those whose backoff is over."""
        for child in self.children.values():
            process = child.process
            if process is None:
                continue
            code = process.poll()
            if code is not None and child.restart_at is None:
                ran = now - child.started_at
                child.backoff = FIRST_BACKOFF_SECONDS if ran >= STABLE_AFTER_SECONDS else child.backoff
                child.last_exit = f"exit {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
                child.restart_at = now + child.backoff
                log.warning(
                    "%s (pid %d) exited (%s) after %.1f s; restarting in %.1f s",
                    child.name,
                    process.pid,
                    child.last_exit,
                    ran,
                    child.backoff,
                )
                child.backoff = min(child.backoff * 2, MAX_BACKOFF_SECONDS)
            if child.restart_at is not None and (self.state / HOLD_DIR / child.name).exists():
                child.restart_at = now + FIRST_BACKOFF_SECONDS  # held down on purpose (fault injection)
                continue
            if child.restart_at is not None and now >= child.restart_at and not self._stopping:
                child.restarts += 1
                self._start(child)
                assert child.process is not None
                log.warning("%s restarted (pid %d, restart #%d)", child.name, child.process.pid, child.restarts)
                child.history.append(f"{_now()} restarted after {child.last_exit}")
                del child.history[:-10]

    def write_status(self) -> None:
        status = {
            "supervisor_pid": os.getpid(),
            "phase": self.phase,
            "error": self.error,
            "updated_at": _now(),
            "replicas": self.replicas,
            "processes": {
                child.name: {
                    "pid": child.process.pid if child.process else None,
                    "running": child.process is not None and child.process.poll() is None,
                    "restarts": child.restarts,
                    "last_exit": child.last_exit,
                    "health": child.health,
                    "history": child.history,
                }
                for child in self.children.values()
            },
        }
        path = self.state / STATUS_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, indent=2))
        tmp.replace(path)

    def request_stop(self, signum: int, _frame: Any) -> None:
        log.info("received %s: stopping the stack", signal.Signals(signum).name)
        self._stopping = True
        if self.phase == "starting":  # interrupt the readiness waits of start-up
            raise StackError(f"stopped by {signal.Signals(signum).name} during start-up")

    def stop_all(self) -> list[str]:
        """Every child stopped, in reverse start order (apps and sidecars, then scheduler, placement, redis, and the
        trace collector: the apps and sidecars send it their last spans as they stop)."""
        self._stopping = True
        self.phase = "stopping"
        stopped = []
        infrastructure = {"redis", "placement", "scheduler", "zipkin"}
        apps = [c for c in self.children.values() if c.name not in infrastructure and not c.name.endswith("-daprd")]
        # The apps first, all at once: each drains (pgmeta_shared.shutdown) through its sidecar, which must
        # still serve it — in Kubernetes Dapr's block-shutdown-duration keeps it; here the order does. Then
        # the sidecars, then the infrastructure they use.
        for child in apps:
            if child.process is not None and child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        for child in apps:
            if stop(self.layout.pids, child.name, timeout=APP_STOP_SECONDS):
                stopped.append(child.name)
        for child in self.children.values():
            if child.name not in infrastructure and child.process is not None and child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        for name in reversed(list(self.children)):
            if stop(self.layout.pids, name):
                stopped.append(name)
        for child in self.children.values():
            if child.process is not None:
                child.process.poll()  # reap
        if self.stop_postgres():
            stopped.append("postgres")
        return stopped

    def serve(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self.request_stop)
        try:
            self.write_status()
            self.up()
            self.start_replicas()
            self.phase = "up"
            log.info("stack up: %s", ", ".join(self.children))
            while not self._stopping:
                self.watch_once(time.monotonic())
                self.write_status()
                time.sleep(0.2)
        except StackError as exc:
            self.error = str(exc)
            self.phase = "failed"
            log.error("start-up failed: %s", exc)
        finally:
            stopped = self.stop_all()
            log.info("stopped: %s", ", ".join(stopped) or "nothing")
            self.phase = "failed" if self.error else "stopped"
            self.write_status()
        return 1 if self.error else 0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- what `pgmeta-stack up | down | status` call ------------------------------------------------------------------


def read_status(layout: StackLayout) -> dict[str, Any] | None:
    path = layout.state_dir / STATUS_FILE
    try:
        status: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return status


def start_detached(layout: StackLayout, replicas: str | None, timeout: float = 300.0) -> None:
    """Starts the supervisor in its own session and waits until it reports the stack up (or failed)."""
    parse_replicas(replicas)  # a typo fails here, in the caller's terminal
    if recorded_pid(layout.pids, SUPERVISOR) is not None:
        raise StackError(f"a supervisor already runs for {layout.state_dir} (`make down` first)")
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    (layout.state_dir / STATUS_FILE).unlink(missing_ok=True)
    env = dict(os.environ, PGMETA_BASE_PORT=str(layout.base_port), PGMETA_STATE_DIR=str(layout.state_dir))
    if replicas:
        env["PGMETA_REPLICAS"] = replicas
    pid = spawn(
        SUPERVISOR,
        [sys.executable, "-m", "pgmeta_devstack.supervisor"],
        logs=layout.logs,
        pids=layout.pids,
        cwd=layout.state_dir,
        env=env,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            status = read_status(layout) or {}
            if status.get("phase") == "up":
                return
            if status.get("phase") == "failed" or not alive(pid):
                raise StackError(f"the stack did not start: {status.get('error') or 'see ' + str(layout.logs)}")
            time.sleep(0.2)
    except KeyboardInterrupt:  # Ctrl-C while waiting: nothing may stay behind
        stop_supervisor(layout)
        raise StackError("interrupted during start-up; everything started was stopped") from None
    stop_supervisor(layout)
    raise StackError(f"the stack was not up after {timeout:.0f} s (see {layout.logs / 'supervisor.log'})")


def stop_supervisor(layout: StackLayout, timeout: float = 120.0) -> bool:
    """SIGTERM to the supervisor, which stops its children; True when one was running."""
    return stop(layout.pids, SUPERVISOR, timeout=timeout)


def describe(layout: StackLayout) -> list[str]:
    """One line per supervised process: running or not, restarts, whether its health endpoint answers."""
    status = read_status(layout)
    if status is None:
        return []
    lines = [
        f"supervisor pid {status['supervisor_pid']}: {status['phase']}"
        + (f" ({status['error']})" if status.get("error") else "")
    ]
    processes: dict[str, dict[str, Any]] = status["processes"]
    width = max((len(name) for name in processes), default=0)
    for name, info in processes.items():
        running = info["pid"] is not None and alive(info["pid"])
        healthy = running and health_ok(info["health"])
        state = "healthy" if healthy else ("running, not answering" if running else "DOWN")
        exit_note = f", last exit: {info['last_exit']}" if info["last_exit"] else ""
        lines.append(f"  {name:<{width}}  pid {info['pid']:<7} {state:<23} restarts {info['restarts']}{exit_note}")
    return lines


def main() -> int:
    layout = StackLayout.default()
    layout.logs.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout, force=True
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # readiness polls are not news
    try:
        replicas = parse_replicas(os.environ.get("PGMETA_REPLICAS"))
    except StackError as exc:
        log.error("%s", exc)
        return 2
    return SupervisedStack(layout, replicas).serve()


if __name__ == "__main__":
    sys.exit(main())
