"""`pgmeta publish` checks the document against the event model before anything is sent."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pgmeta_cli import main as cli
from pgmeta_cli.http_client import HttpClient, Response

GOOD = {
    "request_id": "sales-20261129-1",
    "source": {"host": "db", "username": "reader"},
    "credentials": {"kind": "secret", "store": "secretstore", "key": "sales-db"},
}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def exchange(
        _client: HttpClient, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> Response:
        calls.append({"url": url, "json": json.loads(body or b"null")})
        return Response(204, b"", url)

    monkeypatch.setattr(HttpClient, "exchange", exchange)
    monkeypatch.setenv("PGMETA_DAPR_HTTP_URL", "http://127.0.0.1:1")
    return calls


@pytest.mark.parametrize(
    ("document", "says"),
    [
        (GOOD | {"request_id": "has a space"}, "request_id"),
        (GOOD | {"password": "leak?"}, "password: Extra inputs are not permitted"),
        ({k: v for k, v in GOOD.items() if k != "source"}, "source: Field required"),
        (GOOD | {"filters": {"include": "sales"}}, "filters.include"),
    ],
)
def test_a_malformed_request_is_refused_with_the_reason_and_not_sent(
    sent: list[dict[str, Any]], capsys: pytest.CaptureFixture[str], document: dict[str, Any], says: str
) -> None:
    assert cli.main(["publish", "--data", json.dumps(document)]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert "not a valid extraction.requested event" in said and says in said
    assert "leak?" not in said
    assert sent == []


def test_a_valid_request_is_published(sent: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["publish", "--data", json.dumps(GOOD)]) == 0
    assert sent == [{"url": "http://127.0.0.1:1/v1.0/publish/pubsub/extraction.requested", "json": GOOD}]
    assert "published to extraction.requested" in capsys.readouterr().out


def test_an_unknown_topic_is_refused(sent: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["publish", "--topic", "extraction.requestd", "--data", json.dumps(GOOD)]) == 2
    assert "extraction.requestd" in capsys.readouterr().err and sent == []
