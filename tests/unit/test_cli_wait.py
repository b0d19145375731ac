"""`--wait` survives every answer a restarting stack gives: connection refused, 5xx, 404, then the run."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pgmeta_cli import main as cli
from pgmeta_cli.http_client import HttpClient, Response, TransportError


def _answer(status: int, body: Any) -> Response:
    return Response(status, body.encode() if isinstance(body, str) else json.dumps(body).encode(), "http://api/runs/r1")


def _client(answers: Iterator[Response | Exception]) -> HttpClient:
    """A client whose wire gives ``answers`` in turn (an exception: no answer at all)."""

    class Scripted(HttpClient):
        def exchange(
            self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
        ) -> Response:
            answer = next(answers)
            if isinstance(answer, Exception):
                raise answer
            return answer

    return Scripted(timeout=1)


def test_wait_rides_out_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    answers: Iterator[Response | Exception] = iter(
        [
            _answer(404, {"detail": "no run"}),
            TransportError("[Errno 111] Connection refused"),
            _answer(500, "Internal Server Error"),
            _answer(503, "unavailable"),
            _answer(200, {"run_id": "r1", "status": "RUNNING", "stage": "extract"}),
            TransportError("timed out"),
            _answer(200, {"run_id": "r1", "status": "COMPLETED", "stage": "done"}),
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
            yield TransportError("[Errno 111] Connection refused")

    run = cli.wait_for(_client(refused()), "r1", show=False, timeout=30)
    assert run["status"] == "FAILED"
    assert "gave up waiting after 30 s" in run["error"] and "unreachable" in run["error"]
