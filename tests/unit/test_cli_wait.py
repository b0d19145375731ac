"""`--wait` survives every answer a restarting stack gives: connection refused, 5xx, 404, then the run."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from pgmeta_cli import main as cli


def _client(answers: Iterator[httpx.Response | Exception]) -> httpx.Client:
    def handle(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.Client(transport=httpx.MockTransport(handle))


def test_wait_rides_out_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    answers: Iterator[httpx.Response | Exception] = iter(
        [
            httpx.Response(404, json={"detail": "no run"}),
            httpx.ConnectError("connection refused"),
            httpx.Response(500, text="Internal Server Error"),
            httpx.Response(503, text="unavailable"),
            httpx.Response(200, json={"run_id": "r1", "status": "RUNNING", "stage": "extract"}),
            httpx.ReadTimeout("slow"),
            httpx.Response(200, json={"run_id": "r1", "status": "COMPLETED", "stage": "done"}),
        ]
    )
    run = cli.wait_for(_client(answers), "r1", show=False, timeout=60)
    assert run["status"] == "COMPLETED"


def test_wait_gives_up_with_a_reason_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(0, 10_000, 10))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(time, "sleep", lambda _s: None)

    def refused() -> Iterator[Exception]:
        while True:
            yield httpx.ConnectError("connection refused")

    run = cli.wait_for(_client(refused()), "r1", show=False, timeout=30)
    assert run["status"] == "FAILED"
    assert "gave up waiting after 30 s" in run["error"] and "unreachable" in run["error"]
