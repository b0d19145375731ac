"""Scale through the real, supervised stack: many runs at once on replicated stages, and a flood of duplicates.

One stack with two instances of each stage service (``REPLICAS=extractor=2,transformer=2,publisher=2``: the
same app ids, their own sidecars, one consumer group per app id) and the bundled demo database, small enough
that 20 runs at once stay within a few minutes on a shared 2-core machine. Timings go to the test log.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pgmeta_devstack.layout import StackLayout, free_port_block
from pgmeta_devstack.processes import alive
from pgmeta_devstack.stack import DEMO_CONNECTION, DEMO_DATABASE, DEMO_SECRET, LocalStack
from pgmeta_devstack.supervisor import read_status, start_detached, stop_supervisor
from pgmeta_shared.outputfiles import decode
from tests.faults.api import api_get, api_post, assert_completed, publish_event, wait_finished

pytestmark = pytest.mark.faults

REPLICAS = "extractor=2,transformer=2,publisher=2"
CONCURRENT_RUNS = int(os.environ.get("PGMETA_SCALE_RUNS", "20"))
DUPLICATES = int(os.environ.get("PGMETA_SCALE_DUPLICATES", "1000"))
RUN_TIMEOUT = float(os.environ.get("PGMETA_SCALE_TIMEOUT", "300"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state = tmp_path_factory.mktemp("scale")
    os.chmod(state, 0o755)
    layout = StackLayout(free_port_block(27400), state)
    # 17 processes on a 2-core machine: no trace viewer (a JVM), and time to start on a loaded machine.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PGMETA_TRACING", "off")
        start_detached(layout, REPLICAS, timeout=900)
    local = LocalStack(layout)
    try:
        yield local
    finally:
        pids = [info["pid"] for info in (read_status(layout) or {"processes": {}})["processes"].values()]
        stop_supervisor(layout)
        local.down()
        assert not [pid for pid in pids if pid and alive(pid)], "the supervisor left processes behind"


def request(stack: LocalStack, run_id: str) -> dict[str, Any]:
    """A run of the stack's registered demo connection, as a caller of the API asks for it."""
    return {"request_id": run_id, "connection": DEMO_CONNECTION, "stage_timeout_seconds": 240}


def event(stack: LocalStack, run_id: str) -> dict[str, Any]:
    """The same extraction as an `extraction.requested` event: a producer on the pub/sub names source and secret."""
    return {
        "request_id": run_id,
        "source": {
            "host": "127.0.0.1",
            "port": stack.layout.postgres_port,
            "username": "postgres",
            "database": DEMO_DATABASE,
        },
        "credentials": {"kind": "secret", "store": "secretstore", "key": DEMO_SECRET},
        "stage_timeout_seconds": 240,
    }


def submit(stack: LocalStack, run_id: str) -> None:
    response = api_post(stack, "/runs", json=request(stack, run_id))
    assert response.status_code == 202, response.text


def output_of(stack: LocalStack, run: dict[str, Any]) -> Counter[str]:
    """qualifiedNames of every entity the run published, after checking the files against the manifest."""
    run_dir = stack.layout.objects / run["location"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # A file carried over from an earlier run stays in that run's folder (the manifest names it); the rest here.
    listed = [entry["name"] for entry in manifest["files"] if "folder" not in entry]
    on_disk = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    assert on_disk == sorted([*listed, "manifest.json"]), "files on disk differ from the manifest"
    names: Counter[str] = Counter()
    for entry in manifest["files"]:
        content = (stack.layout.objects / entry.get("folder", run["location"]) / entry["name"]).read_bytes()
        assert hashlib.sha256(content).hexdigest() == entry["sha256"], entry["name"]
        if "type" in entry:
            names.update(
                json.loads(line)["attributes"]["qualifiedName"] for line in decode(entry["name"], content).splitlines()
            )
    return names


def completions_in(stack: LocalStack, instance: str, run_ids: list[str]) -> int:
    """Stage completions of these runs that one instance logged."""
    log = (stack.layout.logs / f"{instance}.log").read_text(errors="replace")
    return sum(1 for line in log.splitlines() if " done" in line and any(f"run {r}:" in line for r in run_ids))


def test_twenty_concurrent_runs_on_two_replicas_per_stage_all_complete_exactly(stack: LocalStack) -> None:
    submit(stack, "scale-reference")
    reference = wait_finished(stack, "scale-reference", RUN_TIMEOUT)
    assert_completed(stack, reference)
    expected = output_of(stack, reference)
    assert expected and max(expected.values()) == 1

    run_ids = [f"scale-{i:02d}" for i in range(CONCURRENT_RUNS)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CONCURRENT_RUNS) as pool:
        list(pool.map(lambda run_id: submit(stack, run_id), run_ids))
        runs = list(pool.map(lambda run_id: wait_finished(stack, run_id, RUN_TIMEOUT), run_ids))
    seconds = time.monotonic() - started
    sys.stderr.write(f"\n{CONCURRENT_RUNS} concurrent runs ({REPLICAS}): all finished in {seconds:.1f} s\n")
    for run in runs:
        assert_completed(stack, run)
        got = output_of(stack, run)
        assert max(got.values()) == 1, (run["run_id"], [qn for qn, n in got.items() if n > 1][:5])
        assert set(got) == set(expected), run["run_id"]
    # Replicas share one consumer group per app id: each instance took part of the commands.
    for service in ("extractor", "transformer", "publisher"):
        shares = {instance: completions_in(stack, instance, run_ids) for instance in (service, f"{service}-2")}
        sys.stderr.write(f"  {service}: stage completions per instance {shares}\n")
        assert all(shares.values()), shares


def test_a_thousand_duplicate_requests_and_events_make_one_run_each(stack: LocalStack) -> None:
    """Half the duplicates as POST /runs of one request id, half as extraction.requested events of another, all
    at once. (An API request names a registered connection, an event names source and secret: the two forms are
    different requests, so one request id is not shared between them — that would be a 409, by design.)"""
    run_ids = {"api": "scale-duplicates-api", "event": "scale-duplicates-event"}
    body = request(stack, run_ids["api"])
    document = event(stack, run_ids["event"])

    def send(i: int) -> int:
        if i % 2:
            return publish_event(stack, "extraction.requested", document).status_code
        return api_post(stack, "/runs", json=body).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = Counter(pool.map(send, range(DUPLICATES)))
    sent = time.monotonic() - started
    sys.stderr.write(f"\n{DUPLICATES} duplicates sent in {sent:.1f} s: {dict(codes)}\n")
    assert set(codes) <= {202, 204}, codes  # 202: POST /runs; 204: the sidecar accepted the event
    for run_id in run_ids.values():
        run = wait_finished(stack, run_id, RUN_TIMEOUT)
        assert_completed(stack, run)
        listed = api_get(stack, "/runs", params={"limit": 500}).json()
        assert [r["run_id"] for r in listed].count(run_id) == 1
        outputs = list(stack.layout.objects.glob(f"*/*/*/{run_id}/manifest.json"))
        assert len(outputs) == 1, outputs
    sys.stderr.write(f"  one run each, completed {time.monotonic() - started:.1f} s after the first duplicate\n")
