"""Connection failures are told apart, and the message names the problem (never the password)."""

import psycopg
import pytest

from pgmeta_extractor.source import classify_connect_error
from pgmeta_shared.events import SourceSpec

SOURCE = SourceSpec(host="db.internal", port=6543, username="reader", database="sales")
PREFIX = 'connection failed: connection to server at "10.0.0.5", port 6543 failed: '


@pytest.mark.parametrize(
    ("message", "code", "says"),
    [
        ('FATAL:  password authentication failed for user "reader"', "authentication_failed", "user 'reader'"),
        ('FATAL:  role "reader" does not exist', "authentication_failed", "user 'reader'"),
        ('FATAL:  database "sales" does not exist', "database_not_found", "database 'sales'"),
        ('FATAL:  permission denied for database "sales"', "insufficient_privilege", "GRANT CONNECT"),
        ("Connection refused", "source_unreachable", "db.internal:6543"),
        # refused, timed out, not PostgreSQL: one answer, so the extractor is no port prober (details in its log)
        ("timeout expired", "source_unreachable", "cannot connect to PostgreSQL at db.internal:6543"),
    ],
)
def test_connect_failures_are_classified(message: str, code: str, says: str) -> None:
    error = classify_connect_error(psycopg.OperationalError(PREFIX + message), SOURCE)
    assert error.code == code
    assert says in str(error)
    assert not error.retryable
