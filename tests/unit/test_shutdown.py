"""Graceful shutdown: a draining process takes no new work, hands its unit back at the next chunk, exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from pgmeta_devstack.layout import free_port_block
from pgmeta_shared import progress
from pgmeta_shared.delivery import Delivery
from pgmeta_shared.events import Stage, TopicName, TransformCompleted, TransformRequested
from pgmeta_shared.keys import ArtifactStage, StageName, chunk_done_key, work_lease_key
from pgmeta_shared.service import create_stage_app
from pgmeta_shared.settings import DaprSettings
from pgmeta_shared.shutdown import HANDBACK_MARGIN_SECONDS, Drain, ShuttingDownError
from pgmeta_shared.stages import stage_handler
from pgmeta_shared.subscriptions import deliver
from pgmeta_transformer.transformation import transform

from ..fakes import InMemoryPlatform
from .records import CONNECTION_QN, sample_catalog

CHUNKS = 3


def command() -> TransformRequested:
    return TransformRequested(run_id="r1", connection_qualified_name=CONNECTION_QN, unit="db000", chunk_count=CHUNKS)


def cloud_event(event: TransformRequested) -> dict[str, Any]:
    return {"id": "e1", "data": event.model_dump(mode="json")}


class CountingPlatform(InMemoryPlatform):
    """Counts chunk loads, and starts ``drain`` after the first one (SIGTERM arriving mid-unit)."""

    def __init__(self, drain: Drain | None = None) -> None:
        super().__init__()
        self.loads = 0
        self.drain_on_first_load = drain

    def load_chunk(self, run_id: str, stage: StageName, unit: str, index: int) -> list[Any]:
        self.loads += 1
        if self.drain_on_first_load is not None:
            self.drain_on_first_load.begin(20)
        return super().load_chunk(run_id, stage, unit, index)


@pytest.fixture
def platform() -> CountingPlatform:
    platform = CountingPlatform()
    catalog = sample_catalog()
    for index in range(CHUNKS):
        platform.save_chunk("r1", ArtifactStage.EXTRACT, "db000", index, catalog[index::CHUNKS])
    return platform


def replica(platform: InMemoryPlatform, drain: Drain, monkeypatch: pytest.MonkeyPatch) -> Any:
    """One transformer replica's delivery path over the shared platform, with its own drain."""
    handler = stage_handler(platform, Stage.TRANSFORM, transform, TopicName.TRANSFORM_COMPLETED)
    drain.handback = platform.publish

    def on(event: dict[str, Any]) -> Delivery:
        monkeypatch.setattr(progress, "process_drain", lambda: drain)
        return deliver(TransformRequested, handler, event, TopicName.TRANSFORM_REQUESTED.value, drain)

    return on


def test_a_new_delivery_while_draining_is_handed_back_unworked_or_answered_retry() -> None:
    drain = Drain()
    drain.begin(20)
    seen: list[TransformRequested] = []
    topic = TopicName.TRANSFORM_REQUESTED.value
    assert deliver(TransformRequested, seen.append, cloud_event(command()), topic, drain) == Delivery.RETRY
    platform = InMemoryPlatform()
    drain.handback = platform.publish
    assert deliver(TransformRequested, seen.append, cloud_event(command()), topic, drain) == Delivery.SUCCESS
    assert seen == []
    assert platform.published == [(TopicName.TRANSFORM_REQUESTED, command())]
    malformed = {"id": "e9", "data": {"run_id": "r1"}}
    assert deliver(TransformRequested, seen.append, malformed, topic, drain) == Delivery.RETRY


def test_sigterm_mid_unit_releases_the_lease_and_hands_the_unit_to_another_replica(
    platform: CountingPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaving, staying = Drain(), Drain()
    platform.drain_on_first_load = leaving

    assert replica(platform, leaving, monkeypatch)(cloud_event(command())) == Delivery.SUCCESS
    # Stopped after one chunk: its marker is kept, the lease is gone at once, no completion announced,
    # and the very command is back on its topic for the other replicas.
    assert platform.loads == 1
    assert platform.get_json(chunk_done_key("r1", Stage.TRANSFORM, "db000", 0)) is not None
    assert platform.get_json(chunk_done_key("r1", Stage.TRANSFORM, "db000", 1)) is None
    assert platform.get_json(work_lease_key("r1", Stage.TRANSFORM, "db000")) is None
    assert TopicName.TRANSFORM_COMPLETED not in platform.topics()
    handed_back = [event for topic, event in platform.published if topic is TopicName.TRANSFORM_REQUESTED]
    assert handed_back == [command()]
    assert leaving.in_flight == 0

    # The other replica takes the handed-back command without waiting for any lease and does only the rest.
    platform.drain_on_first_load = None
    started = time.monotonic()
    handed = {"id": "e2", "data": handed_back[0].model_dump(mode="json")}
    assert replica(platform, staying, monkeypatch)(handed) == Delivery.SUCCESS
    assert time.monotonic() - started < 2
    assert platform.loads == CHUNKS
    completed = [event for topic, event in platform.published if topic is TopicName.TRANSFORM_COMPLETED]
    assert len(completed) == 1 and isinstance(completed[0], TransformCompleted)
    assert completed[0].chunk_count == CHUNKS


def test_a_failed_hand_back_leaves_the_message_with_the_sidecar(
    platform: CountingPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaving = Drain()
    platform.drain_on_first_load = leaving
    on = replica(platform, leaving, monkeypatch)

    def sidecar_gone(topic: TopicName, event: Any) -> None:
        raise ConnectionError("sidecar gone")

    leaving.handback = sidecar_gone
    assert on(cloud_event(command())) == Delivery.RETRY
    assert platform.get_json(work_lease_key("r1", Stage.TRANSFORM, "db000")) is None


def test_work_that_cannot_resume_goes_on_until_the_drain_time_runs_short() -> None:
    now = [100.0]
    drain = Drain(clock=lambda: now[0])
    drain.check(resumable=True)  # not draining: nothing stops
    drain.begin(20)
    with pytest.raises(ShuttingDownError):
        drain.check(resumable=True)
    drain.check(resumable=False)
    now[0] += 20 - HANDBACK_MARGIN_SECONDS
    with pytest.raises(ShuttingDownError):
        drain.check(resumable=False)


def test_the_drain_waits_for_deliveries_in_flight_and_gives_up_at_its_deadline() -> None:
    drain = Drain()
    release = threading.Event()

    def in_flight() -> None:
        with drain.delivery() as admitted:
            assert admitted
            release.wait(5)

    worker = threading.Thread(target=in_flight)
    worker.start()
    while drain.in_flight == 0:
        time.sleep(0.01)
    drain.begin(0.3)
    assert drain.wait_idle() is False  # still in flight after the drain time
    drain.begin(5)  # a second SIGTERM does not move the deadline
    release.set()
    worker.join()
    assert drain.wait_idle() is True

    lingering = Drain()
    lingering.begin(5)
    started = time.monotonic()
    assert lingering.wait_idle(linger=0.3) is True
    assert time.monotonic() - started >= 0.3  # idle for the whole linger before it says so


class OutboundHealth(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(204 if self.path == "/v1.0/healthz/outbound" else 404)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def sidecar_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), OutboundHealth)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def readiness(sidecar_http_port: int, drain: Drain, platform: InMemoryPlatform) -> httpx.Response:
    settings = DaprSettings(dapr_http_port=sidecar_http_port)
    app = create_stage_app(
        service="transformer", settings=settings, routes=[], platform_factory=lambda _: platform, drain=drain
    )
    with TestClient(app) as client:
        answer: httpx.Response = client.get("/readyz")
    return answer


def test_ready_only_with_a_sidecar_a_store_and_no_shutdown(sidecar_port: int) -> None:
    assert readiness(sidecar_port, Drain(), InMemoryPlatform()).status_code == 200

    draining = Drain()
    draining.begin(20)
    answer = readiness(sidecar_port, draining, InMemoryPlatform())
    assert answer.status_code == 503 and answer.json()["problems"] == ["shutting down"]

    closed = free_port_block(29000, 1)
    answer = readiness(closed, Drain(), InMemoryPlatform())
    assert answer.status_code == 503 and "sidecar not reachable" in answer.json()["problems"][0]

    class StoreDown(InMemoryPlatform):
        def get_json(self, key: str) -> Any:
            raise ConnectionError("redis: connection refused")

    answer = readiness(sidecar_port, Drain(), StoreDown())
    assert answer.status_code == 503 and "artifacts store not reachable" in answer.json()["problems"][0]


SERVER = textwrap.dedent(
    """
    import sys, time
    from fastapi import FastAPI
    from pgmeta_shared.shutdown import process_drain, serve_draining

    app = FastAPI()
    drain = process_drain()

    @app.get("/work")
    def work() -> dict[str, str]:
        with drain.delivery() as admitted:
            if not admitted:
                return {"status": "RETRY"}
            print("working", flush=True)
            time.sleep(1.5)
            return {"status": "SUCCESS"}

    serve_draining(app, "127.0.0.1", int(sys.argv[1]))
    """
)


def test_sigterm_lets_the_delivery_in_flight_finish_then_the_process_exits_0() -> None:
    """A real uvicorn process: without the drain it would exit "killed by SIGTERM" (uvicorn re-raises it)."""
    port = free_port_block(29100, 1)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port)],
        env=dict(os.environ, PGMETA_DRAIN_SECONDS="30"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120  # importing FastAPI and uvicorn on a busy machine
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "the test server did not start"
                time.sleep(0.1)
        answers: list[str] = []
        caller = threading.Thread(
            target=lambda: answers.append(httpx.get(f"http://127.0.0.1:{port}/work", timeout=10).json()["status"])
        )
        caller.start()
        assert server.stdout is not None and server.stdout.readline().strip() == "working"
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        # Draining: the server still answers, but takes no new work.
        assert httpx.get(f"http://127.0.0.1:{port}/work", timeout=5).json()["status"] == "RETRY"
        caller.join()
        assert answers == ["SUCCESS"]
        assert server.wait(timeout=40) == 0
        assert time.monotonic() - started < 20, "it waited for the drain deadline instead of exiting once idle"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
