"""The extractor against a server an attacker runs: it asks for the password in clear and gets nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from pgmeta_extractor.source import connect
from pgmeta_shared.errors import AuthenticationFailedError, SourceUnreachableError
from pgmeta_shared.events import SourceSpec
from tests.plugins.fake_postgres import fake_postgres

pytestmark = pytest.mark.integration

PASSWORD = "the-victims-password-1234"


def _try(source: SourceSpec) -> BaseException:
    with (
        pytest.raises((AuthenticationFailedError, SourceUnreachableError)) as caught,
        connect(source, lambda: PASSWORD) as connection,
    ):
        connection.execute(text("SELECT 1"))
    return caught.value


def test_a_server_asking_for_a_cleartext_password_receives_nothing() -> None:
    with fake_postgres() as server:
        error = _try(SourceSpec(host="127.0.0.1", port=server.port, username="postgres", sslmode="disable"))
    assert server.connections >= 1
    assert not any(PASSWORD.encode() in data for data in server.received), server.received
    assert "no password was sent" in str(error)


def test_opting_out_of_scram_is_what_would_hand_the_password_over() -> None:
    """The control: with any exchange allowed, the same fake server does receive the password."""
    with fake_postgres() as server:
        _try(
            SourceSpec(
                host="127.0.0.1", port=server.port, username="postgres", sslmode="disable", password_exchange="any"
            )
        )
    assert any(PASSWORD.encode() in data for data in server.received)


def test_a_closed_port_and_a_server_that_is_not_postgresql_look_the_same() -> None:
    """The extractor is no port prober: libpq's text (refused vs. invalid response) stays in its log."""
    with fake_postgres(reply=b"HTTP/1.1 400 Bad Request\r\n\r\n") as not_postgres:
        other = _try(SourceSpec(host="127.0.0.1", port=not_postgres.port, username="postgres", sslmode="disable"))
    closed = _try(SourceSpec(host="127.0.0.1", port=not_postgres.port, username="postgres", sslmode="disable"))
    assert str(other) == str(closed)
    assert str(closed).startswith(f"cannot connect to PostgreSQL at 127.0.0.1:{not_postgres.port} (hint:")
