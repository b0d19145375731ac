"""A 401 says what to do: set a token when none was sent, replace it when the API refused the one sent."""

from __future__ import annotations

import pytest

from pgmeta_cli.http_client import Response
from pgmeta_cli.main import _refused


def _unauthorized() -> Response:
    return Response(401, b'{"detail": "unknown or revoked token"}', "http://api/runs")


def test_no_token_sent_asks_for_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgmeta_cli.main.api_token", lambda: None)
    assert "set PGMETA_API_TOKEN" in _refused(_unauthorized())


def test_a_refused_token_is_named_as_refused_not_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pgmeta_cli.main.api_token", lambda: "not-a-token")
    message = _refused(_unauthorized())
    assert "refused the API token" in message and "unknown or revoked token" in message
    assert "not-a-token" not in message
