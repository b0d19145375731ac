"""Graceful shutdown on the real, supervised stack with two transformers: SIGTERM versus kill -9 mid-unit.

`make up REPLICAS=transformer=2` and a catalog big enough that a transform command is still working when it
is signalled. The replica that holds the unit's work lease (read from Redis: the lease names its pid) gets
SIGTERM: it must hand the unit back, exit 0 within its drain time, and the run must complete with exactly the
undisturbed entity set. The same with kill -9: the run also completes exactly, but only after the dead
worker's lease and message time out, so SIGTERM's run must finish sooner (docs/reliability.md has the numbers).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from pgmeta_bench.catalog import CatalogShape, ensure_catalog
from pgmeta_bench.common import BENCH_DATABASE
from pgmeta_devstack.layout import StackLayout, free_port_block
from pgmeta_devstack.processes import alive
from pgmeta_devstack.stack import LocalStack
from pgmeta_devstack.supervisor import read_status, start_detached, stop_supervisor
from pgmeta_shared.shutdown import DrainSettings
from tests.faults.api import wait_finished
from tests.plugins.servers import register_connection

from .test_faults import BENCH_CONNECTION, assert_exact, output_of, submit

pytestmark = pytest.mark.faults

# Big enough that the transform commands outlast the extract on this machine: a lease is there to catch.
SHAPE = CatalogShape(schemas=20, tables=200, columns=20)  # 4,000 tables
RUN_TIMEOUT = 300.0
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("shutdown")
    os.chmod(state, 0o755)
    layout = StackLayout(free_port_block(27500), state)
    start_detached(layout, "transformer=2")
    local = LocalStack(layout)
    try:
        ensure_catalog(local.postgres, SHAPE)
        register_connection(local, BENCH_CONNECTION, BENCH_DATABASE)
        yield local
    finally:
        if RESULTS:
            sys.stderr.write(f"\nshutdown timings (this machine): {json.dumps(RESULTS)}\n")
        pids = [info["pid"] for info in (read_status(layout) or {"processes": {}})["processes"].values()]
        stop_supervisor(layout)
        local.down()
        assert not [pid for pid in pids if pid and alive(pid)], "the supervisor left processes behind"


@pytest.fixture(scope="module")
def undisturbed(stack: LocalStack) -> Counter[str]:
    started = time.monotonic()
    submit(stack, "calm")
    run = wait_finished(stack, "calm", RUN_TIMEOUT)
    RESULTS["undisturbed run s"] = round(time.monotonic() - started, 1)
    names = output_of(stack, run)
    assert names and max(names.values()) == 1
    return names


def transform_lease_holder(stack: LocalStack, run_id: str, timeout: float = RUN_TIMEOUT) -> tuple[str, int]:
    """(instance name, pid) of the transformer holding a database unit's transform lease of ``run_id``, as soon
    as one does (on an idle machine the server unit's lease came first, and ended before the signal landed)."""
    client = redis.Redis(port=stack.layout.redis_port)
    names = {
        info["pid"]: name
        for name, info in (read_status(stack.layout) or {"processes": {}})["processes"].items()
        if name.startswith("transformer") and not name.endswith("-daprd")
    }
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key in client.scan_iter(match=f"{run_id}/transform/*/lease", count=1000):
            if b"/transform/server/" in key:
                continue  # the server unit is a few records in one chunk: there is nothing to hand over
            data = client.hget(key, "data")
            if data:
                pid = int(json.loads(data)["holder"].split(":")[1])
                if pid in names:
                    return names[pid], pid
        time.sleep(0.02)
    raise AssertionError(f"no transformer held a transform lease of {run_id} within {timeout:.0f} s")


def wait_exit(stack: LocalStack, name: str, pid: int, timeout: float) -> str:
    """The supervisor's record of how ``name`` (pid) exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = (read_status(stack.layout) or {"processes": {}})["processes"][name]
        if info["pid"] != pid or not info["running"]:
            assert info["last_exit"], info
            last_exit: str = info["last_exit"]
            return last_exit
        time.sleep(0.1)
    raise AssertionError(f"{name} (pid {pid}) still running {timeout:.0f} s after the signal")


def signalled_run(stack: LocalStack, run_id: str, signum: signal.Signals) -> tuple[str, float, str]:
    """Submits a run, signals the transformer holding a transform lease; (instance, seconds to completion
    after the signal, how the instance exited)."""
    submit(stack, run_id)
    name, pid = transform_lease_holder(stack, run_id)
    os.kill(pid, signum)
    signalled = time.monotonic()
    exited = wait_exit(stack, name, pid, DrainSettings().drain_seconds + 10)
    RESULTS[f"{signum.name}: {name} exited after s"] = round(time.monotonic() - signalled, 1)
    wait_finished(stack, run_id, RUN_TIMEOUT)
    seconds = time.monotonic() - signalled
    RESULTS[f"{signum.name}: run completed s after the signal"] = round(seconds, 1)
    return name, seconds, exited


def test_sigterm_hands_the_unit_over_and_exits_0_and_beats_kill_9(stack: LocalStack, undisturbed: Counter[str]) -> None:
    name, after_sigterm, exited = signalled_run(stack, "sigterm", signal.SIGTERM)
    assert exited == "exit 0"
    assert_exact(stack, wait_finished(stack, "sigterm", 5), undisturbed)
    log = (stack.layout.logs / f"{name}.log").read_text()
    if "handed back to the other replicas" not in log:
        # Seen on an idle machine: the unit's last chunk was in hand when the signal landed, so it finished
        # instead (exit 0 and an exact run are checked above); the hand-over and the race with kill -9 are
        # then not exercised by this run. Under load (the conditions measured in docs/reliability.md) it is.
        pytest.skip("SIGTERM landed on the unit's last chunk: nothing to hand over in this run")

    _, after_kill, exited = signalled_run(stack, "sigkill", signal.SIGKILL)
    assert exited == "signal SIGKILL"
    assert_exact(stack, wait_finished(stack, "sigkill", 5), undisturbed)

    # kill -9 leaves a fresh lease and a pending message behind: the unit waits for them to expire.
    assert after_sigterm < after_kill, RESULTS
