"""The CLI's HTTP client against a real HTTP server on loopback: what it sends, what it makes of each answer."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pgmeta_cli.http_client import HttpClient, StatusError, TransportError


class Recorder(BaseHTTPRequestHandler):
    """Answers by path; records every request it sees (target, headers, body)."""

    seen: list[dict[str, Any]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        Recorder.seen.append({"method": self.command, "target": self.path, "headers": dict(self.headers), "body": body})
        if self.path.startswith("/moved"):
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/slow"):
            threading.Event().wait(2)
        status = 404 if self.path.startswith("/missing") else 200
        payload = json.dumps({"detail": "no such run"} if status == 404 else {"echo": body.decode() or None}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_json_body_query_and_auth_header_reach_the_server(server: str) -> None:
    client = HttpClient(timeout=5, headers={"Authorization": "Bearer t0ken"})
    answer = client.post(f"{server}/runs", json={"request_id": "r 1"}, params={"wait": "1.0", "q": "a&b"})
    assert answer.status_code == 200
    assert answer.json() == {"echo": '{"request_id": "r 1"}'}
    seen = Recorder.seen[-1]
    assert seen["method"] == "POST" and seen["target"] == "/runs?wait=1.0&q=a%26b"
    assert seen["headers"]["Authorization"] == "Bearer t0ken"
    assert seen["headers"]["Content-Type"] == "application/json"


def test_an_error_status_is_an_answer_until_raise_for_status(server: str) -> None:
    answer = HttpClient(timeout=5).get(f"{server}/missing/r1")
    assert answer.status_code == 404 and answer.json() == {"detail": "no such run"}
    with pytest.raises(StatusError) as raised:
        answer.raise_for_status()
    assert raised.value.response.status_code == 404 and "404" in str(raised.value)


def test_a_redirect_is_not_followed(server: str) -> None:
    answer = HttpClient(timeout=5).delete(f"{server}/moved")
    assert answer.status_code == 307
    assert [s["target"] for s in Recorder.seen] == ["/moved"]


def test_no_answer_is_a_transport_error_naming_the_cause() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with pytest.raises(TransportError, match="refused"):
        HttpClient(timeout=5).get(f"http://127.0.0.1:{closed}/runs")


def test_a_slow_answer_times_out_as_a_transport_error(server: str) -> None:
    with pytest.raises(TransportError, match="timed out"):
        HttpClient(timeout=5).get(f"{server}/slow", timeout=0.2)


def test_the_proxy_environment_is_honoured(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The recording server plays the proxy: a plain-HTTP proxy is sent the absolute URL.
    monkeypatch.setenv("HTTP_PROXY", server)
    HttpClient(timeout=5).get("http://api.example.invalid:18000/runs")
    assert Recorder.seen[-1]["target"] == "http://api.example.invalid:18000/runs"
    monkeypatch.setenv("NO_PROXY", "api.example.invalid")
    with pytest.raises(TransportError):  # straight to a host that does not exist
        HttpClient(timeout=5).get("http://api.example.invalid:18000/runs")
    assert len(Recorder.seen) == 1
