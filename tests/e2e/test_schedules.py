"""Scheduled crawls through the real stack: Dapr's scheduler fires the jobs, the orchestrator starts the runs.

Tolerance: a tick's run is started within ``LATE`` seconds of its due time (the scheduler's own trigger
latency plus a loaded 2-core machine); every tick is handled exactly once, even with two orchestrators.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest
import redis

from pgmeta_devstack.layout import StackLayout, free_port_block
from pgmeta_devstack.local_secrets import read_user_secrets, set_user_secret
from pgmeta_devstack.processes import http_ok, recorded_pid, wait_until
from pgmeta_devstack.stack import DEMO_CONNECTION, DEMO_DATABASE, DEMO_SECRET, LocalStack
from pgmeta_orchestrator.connections import connection_qualified_name
from pgmeta_shared.outputfiles import decode
from tests.e2e.test_pipeline import stream_events
from tests.plugins.servers import _assert_all_stopped, _recorded_pids, _stack, api_headers

pytestmark = pytest.mark.e2e

LATE = 4.0  # seconds between a tick's due time and the start of its run, at most


MEASURED: list[str] = []  # numbers worth reading in the report (shown by pytest -rA / the log)
ARTIFACT_TTL = 30  # seconds: short, so that the key-count test sees expiry within the test


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = _stack(tmp_path_factory, "schedules", 28600)
    with pytest.MonkeyPatch.context() as env:
        # Read by the services the stack spawns (their environment is a copy of ours).
        env.setenv("PGMETA_ARTIFACT_TTL_SECONDS", str(ARTIFACT_TTL))
        env.setenv("PGMETA_RETENTION_WORKFLOW_AGE_HOURS", "0")
        env.setenv("PGMETA_RETENTION_GC_EVERY", "")
        try:
            stack.up()
            yield stack
        finally:
            pids = _recorded_pids(stack)
            stack.down()
            _assert_all_stopped(pids)


def api(stack: LocalStack) -> httpx.Client:
    return httpx.Client(base_url=stack.layout.api_url, timeout=30, headers=api_headers(stack))


def schedule_body(stack: LocalStack, schedule_id: str, every: str = "@every 5s", **extra: Any) -> dict[str, Any]:
    """A schedule of the stack's registered `demo` connection: it names no server, secret or password."""
    return {
        "schedule_id": schedule_id,
        "schedule": every,
        "connection": DEMO_CONNECTION,
        "stage_timeout_seconds": 60,
        **extra,
    }


def ticks(stack: LocalStack, schedule_id: str) -> list[dict[str, Any]]:
    with api(stack) as client:
        response = client.get(f"/schedules/{schedule_id}")
        response.raise_for_status()
        history: list[dict[str, Any]] = response.json()["last_runs"]
        return sorted(history, key=lambda t: t["due"])


def requested_ids(stack: LocalStack, schedule_id: str) -> list[str]:
    prefix = f"sched-{schedule_id}-"
    return [
        e["data"]["request_id"]
        for e in stream_events(stack, "extraction.requested")
        if e["data"]["request_id"].startswith(prefix)
    ]


class Replica:
    """A second orchestrator (app + sidecar, same app id) on ports of its own, outside the stack's pid files."""

    def __init__(self, stack: LocalStack) -> None:
        base = free_port_block(stack.layout.base_port + 100)
        self.layout = StackLayout(base, stack.state)
        self.stack = stack
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        stack, mine = self.stack, self.layout
        env = stack._service_env("orchestrator") | {
            "PGMETA_APP_PORT": str(mine.app_port("orchestrator")),
            "PGMETA_DAPR_GRPC_PORT": str(mine.dapr_grpc_port("orchestrator")),
            "PGMETA_DAPR_HTTP_PORT": str(mine.dapr_http_port("orchestrator")),
            "DAPR_GRPC_PORT": str(mine.dapr_grpc_port("orchestrator")),
            "DAPR_HTTP_PORT": str(mine.dapr_http_port("orchestrator")),
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(mine.app_metrics_port("orchestrator")),
        }
        argv = LocalStack(mine).daprd_argv("orchestrator")
        # Control plane of the main stack, not of the (unused) port block above.
        argv = [
            a.replace(f":{mine.placement_port}", f":{stack.layout.placement_port}").replace(
                f":{mine.scheduler_port}", f":{stack.layout.scheduler_port}"
            )
            for a in argv
        ]
        logs = stack.layout.logs
        for name, command, environment in (
            ("orchestrator-2", [sys.executable, "-m", "pgmeta_orchestrator"], env),
            ("orchestrator-2-daprd", argv, stack._sidecar_env()),
        ):
            log = (logs / f"{name}.log").open("ab")
            self.processes.append(
                subprocess.Popen(command, env=environment, stdout=log, stderr=log, start_new_session=True)
            )
        wait_until(
            "second orchestrator",
            lambda: http_ok(f"http://127.0.0.1:{mine.app_port('orchestrator')}/healthz"),
            timeout=90,
            pid=self.processes[0].pid,
            log=logs / "orchestrator-2.log",
        )
        wait_until(
            "second orchestrator sidecar",
            lambda: http_ok(f"http://127.0.0.1:{mine.dapr_http_port('orchestrator')}/v1.0/healthz"),
            timeout=90,
            pid=self.processes[1].pid,
            log=logs / "orchestrator-2-daprd.log",
        )

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(5)


def test_every_5s_runs_on_time_exactly_once_per_tick_with_two_orchestrators(stack: LocalStack) -> None:
    replica = Replica(stack)
    replica.start()
    try:
        with api(stack) as client:
            created = client.post("/schedules", json=schedule_body(stack, "every5"))
            assert created.status_code == 201, created.text
            assert created.json()["next_due"] is not None
        time.sleep(32)
        history = ticks(stack, "every5")
    finally:
        replica.stop()
    with api(stack) as client:
        client.post("/schedules/every5/pause").raise_for_status()
    dues = [datetime.fromisoformat(t["due"]) for t in history]
    assert len(dues) >= 5, history
    assert len(set(dues)) == len(dues), f"a tick handled twice: {history}"
    gaps = {(b - a).total_seconds() for a, b in zip(dues, dues[1:], strict=False)}
    assert gaps == {5.0}, f"ticks are not 5 s apart (one missing?): {sorted(gaps)}"
    for tick in history:
        lateness = (datetime.fromisoformat(tick["at"]) - datetime.fromisoformat(tick["due"])).total_seconds()
        assert 0 <= lateness <= LATE, tick
    started = [t["run_id"] for t in history if t["outcome"] == "started"]
    assert started, history
    published = Counter(requested_ids(stack, "every5"))
    assert all(n == 1 for n in published.values()), published
    assert set(started) <= set(published)
    # Both orchestrators took triggers: the scheduler shares an app id's jobs among its connected sidecars.
    logs = [(stack.layout.logs / name).read_text() for name in ("orchestrator.log", "orchestrator-2.log")]
    handled = [log.count("schedule every5: tick") for log in logs]
    assert sum(handled) >= len(history), handled
    worst = max((datetime.fromisoformat(t["at"]) - datetime.fromisoformat(t["due"])).total_seconds() for t in history)
    MEASURED.append(f"@every 5s: {len(history)} ticks, worst lateness {worst:.2f} s, ticks per replica {handled}")
    logging.getLogger(__name__).warning(MEASURED[-1])


def test_pause_stops_ticks_and_resume_restarts_them(stack: LocalStack) -> None:
    with api(stack) as client:
        client.post("/schedules", json=schedule_body(stack, "pausable", "@every 3s")).raise_for_status()
        time.sleep(7)
        paused = client.post("/schedules/pausable/pause").json()
        assert paused["paused"] is True and paused["next_due"] is None
        before = len(ticks(stack, "pausable"))
        assert before >= 1
        time.sleep(8)
        assert len(ticks(stack, "pausable")) == before, "a paused schedule ticked"
        resumed = client.post("/schedules/pausable/resume").json()
        assert resumed["next_due"] is not None
        time.sleep(8)
        assert len(ticks(stack, "pausable")) >= before + 2
        client.delete("/schedules/pausable").raise_for_status()


class BlackHole:
    """A TCP server that accepts connections and never answers: a source whose run outlasts the interval."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        self.sock.close()
        for connection in self.held:
            connection.close()


@pytest.mark.parametrize("policy", ["skip", "queue"])
def test_overlap_policy_with_a_slow_source(stack: LocalStack, policy: str) -> None:
    hole = BlackHole()
    schedule_id = f"slow-{policy}"
    body = schedule_body(stack, schedule_id, "@every 3s", overlap=policy, connection=schedule_id)
    # A connection to a port that accepts and never answers. Its secret names no server: the demo's is bound to
    # the demo port, and the extractor would refuse it here at once instead of hanging.
    if "slow-source" not in read_user_secrets(stack.state):
        set_user_secret(stack.state, "slow-source", {"username": "postgres", "password": "unused"})
        stack.reload_secretstore()
    source = {"host": "127.0.0.1", "port": hole.port, "username": "postgres", "connect_timeout_seconds": 10}
    try:
        with api(stack) as client:
            connection = {"source": source, "secret": {"store": "secretstore", "key": "slow-source"}}
            client.put(f"/connections/{schedule_id}", json=connection).raise_for_status()
            client.post("/schedules", json=body).raise_for_status()
            time.sleep(11)
            if policy == "skip":
                client.post(f"/schedules/{schedule_id}/pause").raise_for_status()
        history = ticks(stack, schedule_id)
        outcomes = [t["outcome"] for t in history]
        assert outcomes[0] == "started", history
        # The first run waits ~10 s for a server that never answers: the ticks meanwhile do not start runs.
        expected = "skipped_overlap" if policy == "skip" else "queued"
        assert outcomes.count(expected) >= 2, history
        assert outcomes.count("started") == 1, history
        if policy == "queue":
            # When the first run ends (its connection attempt times out), one queued run starts, not three.
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and "started_from_queue" not in [
                t["outcome"] for t in ticks(stack, schedule_id)
            ]:
                time.sleep(1)
            final = ticks(stack, schedule_id)
            assert [t["outcome"] for t in final].count("started_from_queue") == 1, final
            assert len(set(requested_ids(stack, schedule_id))) == 2
    finally:
        hole.close()
        with api(stack) as client:
            client.delete(f"/schedules/{schedule_id}")


def wait_for_new_ticks(stack: LocalStack, schedule_id: str, after: str, count: int, timeout: float) -> float:
    """Seconds until ``count`` ticks due after ``after`` were handled."""
    started = time.monotonic()
    while len([t for t in ticks(stack, schedule_id) if t["due"] > after]) < count:
        assert time.monotonic() - started < timeout, ticks(stack, schedule_id)
        time.sleep(1)
    return time.monotonic() - started


def test_schedule_survives_stack_down_up_and_a_scheduler_kill(stack: LocalStack) -> None:
    with api(stack) as client:
        client.post("/schedules", json=schedule_body(stack, "durable", "@every 4s")).raise_for_status()
    try:
        survive_restarts(stack)
    finally:
        with api(stack) as client:
            client.delete("/schedules/durable")


def survive_restarts(stack: LocalStack) -> None:
    time.sleep(6)
    before = ticks(stack, "durable")
    assert before
    stack.down()
    time.sleep(3)
    stack.up()
    # The tick that fell due while everything was down runs once ("missed": "run_once"), then 4 s ticks resume.
    time.sleep(14)
    after = ticks(stack, "durable")
    later = [t for t in after if t["due"] > before[-1]["due"]]
    assert len(later) >= 2, after
    assert len({t["due"] for t in after}) == len(after)

    scheduler = recorded_pid(stack.layout.pids, "scheduler")
    assert scheduler is not None
    os.kill(scheduler, signal.SIGKILL)
    (stack.layout.pids / "scheduler.pid").unlink()
    time.sleep(1)
    stack.start_scheduler()
    mark = ticks(stack, "durable")[-1]["due"]
    # The sidecars reconnect to the new scheduler; a tick that fell due meanwhile is delivered then, or found
    # overdue by the orchestrator's reconciliation (every 60 s, 30 s grace) at the latest.
    waited = wait_for_new_ticks(stack, "durable", mark, 2, timeout=150)
    MEASURED.append(f"scheduler kill -9: ticks resumed {waited:.0f} s after the restart")
    logging.getLogger(__name__).warning(MEASURED[-1])


def test_delete_stops_the_schedule(stack: LocalStack) -> None:
    with api(stack) as client:
        client.post("/schedules", json=schedule_body(stack, "doomed", "@every 3s")).raise_for_status()
        time.sleep(4)
        job = client.get("/schedules/doomed").json()["pending_job"]
        assert client.delete("/schedules/doomed").status_code == 204
        assert client.get("/schedules/doomed").status_code == 404
    count = len(requested_ids(stack, "doomed"))
    sidecar = f"http://127.0.0.1:{stack.layout.dapr_http_port('orchestrator')}"
    sidecar_token = {"dapr-api-token": stack.dapr_api_token()}  # without it the answer is 401 whatever the job
    gone = httpx.get(f"{sidecar}/v1.0-alpha1/jobs/{job}", headers=sidecar_token, timeout=10)
    assert gone.status_code >= 400 and gone.status_code != 401, gone.text
    time.sleep(8)
    assert len(requested_ids(stack, "doomed")) == count


def test_bad_schedules_are_refused_with_a_named_problem(stack: LocalStack) -> None:
    with api(stack) as client:
        bad_cron = client.post("/schedules", json=schedule_body(stack, "bad", "every day"))
        assert bad_cron.status_code == 422 and "cron" in bad_cron.text
        bad_zone = client.post("/schedules", json=schedule_body(stack, "bad", "@daily", time_zone="Mars/Olympus"))
        assert bad_zone.status_code == 422 and "time zone" in bad_zone.text
        inline = schedule_body(stack, "bad", "@daily")
        inline["credentials"] = {"kind": "secret", "store": "secretstore", "key": DEMO_SECRET}
        refused = client.post("/schedules", json=inline)
        assert refused.status_code == 422 and "credentials" in refused.text and DEMO_SECRET not in refused.text
        unknown = client.post("/schedules", json=schedule_body(stack, "bad", "@daily", connection="nope"))
        assert unknown.status_code == 422 and "nope" in unknown.text
        first = client.post("/schedules", json=schedule_body(stack, "twice", "@daily"))
        assert first.status_code == 201
        assert client.post("/schedules", json=schedule_body(stack, "twice", "@daily")).status_code == 201
        assert client.post("/schedules", json=schedule_body(stack, "twice", "@hourly")).status_code == 409
        client.delete("/schedules/twice")


def completed_runs(stack: LocalStack, schedule_id: str) -> list[str]:
    """From the pub/sub itself (GET /schedules/{id} shows only the last 10 ticks)."""
    prefix = f"sched-{schedule_id}-"
    return [
        e["data"]["run_id"]
        for e in stream_events(stack, "extraction.completed")
        if e["data"]["run_id"].startswith(prefix) and e["data"]["status"] == "COMPLETED"
    ]


def wait_for_runs(stack: LocalStack, schedule_id: str, count: int, timeout: float = 120) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = completed_runs(stack, schedule_id)
        if len(done) >= count:
            return done
        time.sleep(1)
    raise AssertionError(f"{schedule_id}: under {count} completed runs in {timeout} s: {ticks(stack, schedule_id)}")


def settle(stack: LocalStack, schedule_id: str) -> None:
    """Paused, and no run of the schedule still going."""
    with api(stack) as client:
        client.post(f"/schedules/{schedule_id}/pause").raise_for_status()
    deadline = time.monotonic() + 90
    while any(t.get("status") in ("QUEUED", "RUNNING") for t in ticks(stack, schedule_id)):
        assert time.monotonic() < deadline, ticks(stack, schedule_id)
        time.sleep(1)


def run_folders(stack: LocalStack, connection_qn: str) -> set[str]:
    root = stack.layout.objects / connection_qn
    return {path.parent.name for path in root.glob("*/manifest.json")}


def gc(stack: LocalStack, *, dry_run: bool, keep: int) -> dict[str, Any]:
    with api(stack) as client:
        response = client.post("/gc", params={"dry_run": str(dry_run).lower(), "keep": keep}, timeout=300)
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        return report


def test_retention_keeps_n_runs_and_the_baseline_and_the_next_diff_is_still_right(stack: LocalStack) -> None:
    connection_qn = connection_qualified_name(DEMO_CONNECTION)
    with api(stack) as client:  # only this test's schedule may move the baseline
        for schedule in client.get("/schedules").json():
            settle(stack, schedule["schedule_id"])
    gc(stack, dry_run=False, keep=50)  # earlier tests' failed runs out of the way
    with api(stack) as client:
        client.post("/schedules", json=schedule_body(stack, "kept", "@every 4s")).raise_for_status()
    wait_for_runs(stack, "kept", 4)
    settle(stack, "kept")
    before = run_folders(stack, connection_qn)
    assert len(before) >= 4, before

    dry = gc(stack, dry_run=True, keep=2)
    assert run_folders(stack, connection_qn) == before, "a dry run deleted something"
    doomed = {r["run_id"] for r in dry["runs"] if r["status"] == "COMPLETED"}
    # Kept: the last two, the baseline, and every run whose folder a kept run's manifest refers to (the files of
    # schemas carried over unread stay in the folder of the run that read them).
    assert doomed and doomed.isdisjoint(dry["kept"]) and before == doomed | (before & set(dry["kept"])), dry

    done = gc(stack, dry_run=False, keep=2)
    assert {r["run_id"] for r in done["runs"] if r["status"] == "COMPLETED"} == doomed
    kept = run_folders(stack, connection_qn)
    baseline = json.loads(redis.Redis(port=stack.layout.redis_port).hget(f"snapshot/{connection_qn}", "data") or b"{}")
    assert kept == before - doomed and baseline["run_id"] in kept, (kept, baseline)
    for kept_run in kept:  # every file a kept run lists is still where its manifest says
        manifest = json.loads((stack.layout.objects / connection_qn / kept_run / "manifest.json").read_text())
        for entry in manifest["files"]:
            home = entry.get("folder", f"{connection_qn}/{kept_run}")
            assert (stack.layout.objects / home / entry["name"]).is_file()
    left = [str(p) for gone in doomed for p in (stack.layout.objects / connection_qn / gone).rglob("*") if p.is_file()]
    assert not left, left

    # The next run still compares against the baseline: one new table is "created", nothing is "deleted".
    with psycopg.connect(**stack.postgres.connect_kwargs(DEMO_DATABASE), autocommit=True) as conn:
        conn.execute("CREATE TABLE public.gc_probe (id int PRIMARY KEY)")
    document = {"request_id": "after-gc", "connection": DEMO_CONNECTION}
    with api(stack) as client:
        client.post("/runs", json=document).raise_for_status()
        deadline = time.monotonic() + 90
        while (run := client.get("/runs/after-gc").json())["status"] not in ("COMPLETED", "FAILED"):
            assert time.monotonic() < deadline, run
            time.sleep(0.5)
    assert run["status"] == "COMPLETED", run
    folder = stack.layout.objects / run["location"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["previous_run_id"] == baseline["run_id"]
    assert manifest["changes"]["deleted"] == 0, manifest["changes"]
    changes = [
        json.loads(line)
        for path in folder.glob("changes-*.jsonl*")
        for line in decode(path.name, path.read_bytes()).splitlines()
    ]
    created = {c["qualifiedName"] for c in changes if c["change"] == "created"}
    probe = f"{connection_qn}/{DEMO_DATABASE}/public/gc_probe"
    assert probe in created and f"{probe}/id" in created, sorted(created)
    assert manifest["changes"]["unchanged"] > 0


def persistent_keys(stack: LocalStack) -> list[str]:
    """Redis keys without a TTL: the ones that would pile up if a run left them behind."""
    client = redis.Redis(port=stack.layout.redis_port)
    return sorted(k.decode() for k in client.scan_iter(count=1000) if client.ttl(k) == -1)


def test_redis_key_count_stays_flat_over_scheduled_runs(stack: LocalStack) -> None:
    with api(stack) as client:
        client.post("/schedules", json=schedule_body(stack, "flat", "@every 3s")).raise_for_status()
    counts: list[int] = []
    total = 0
    for batch in range(1, 5):
        total = len(wait_for_runs(stack, "flat", 3 * batch, timeout=180))
        settle(stack, "flat")  # counted between runs: a run in flight holds keys until it ends
        gc(stack, dry_run=False, keep=2)
        counts.append(len(persistent_keys(stack)))
        with api(stack) as client:
            client.post("/schedules/flat/resume").raise_for_status()
    settle(stack, "flat")
    gc(stack, dry_run=False, keep=2)
    kinds = Counter(re.sub(r"sched-[a-z0-9-]+-\d{8}T\d{6}Z", "<run>", k).split("/")[0] for k in persistent_keys(stack))
    MEASURED.append(f"keys without TTL at the end, by kind: {dict(kinds)}")
    logging.getLogger(__name__).warning(MEASURED[-1])
    measured = f"{total} scheduled runs; keys without TTL after each batch of 3 + gc: {counts}"
    MEASURED.append(measured)
    logging.getLogger(__name__).warning(measured)
    # Each batch adds runs; none adds a key that outlives it. (Slack: runs in flight at the moment of counting.)
    assert max(counts) - min(counts) <= 2, counts
    time.sleep(ARTIFACT_TTL + 5)
    everything = redis.Redis(port=stack.layout.redis_port).dbsize()
    left = persistent_keys(stack)
    MEASURED.append(f"after the artifact TTL: {everything} keys, {len(left)} without TTL")
    logging.getLogger(__name__).warning(MEASURED[-1])
    assert everything - len(left) <= 10, everything
