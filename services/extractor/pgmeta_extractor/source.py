"""Connections to the source PostgreSQL: read-only, bounded in time, errors classified by SQLSTATE."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import URL, Connection, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from pgmeta_shared.errors import (
    AuthenticationFailedError,
    DatabaseNotFoundError,
    InsufficientPrivilegeError,
    PgmetaError,
    SourceUnreachableError,
)
from pgmeta_shared.events import SourceSpec

# A metadata read must never block, or be blocked by, the application's DDL.
SESSION_OPTIONS = "-c default_transaction_read_only=on -c statement_timeout=300000 -c lock_timeout=5000"


# libpq reports connection-time FATALs without a SQLSTATE (psycopg's ``sqlstate`` is None there), so
# these are told apart by the server's message; errors after connecting are classified by class.
CONNECT_FAILURE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("password authentication failed", "authentication"),
    ("no password supplied", "authentication"),
    ("authentication failed", "authentication"),
    ("does not exist", "database"),
    ("permission denied for database", "privilege"),
)


def classify_connect_error(exc: BaseException, source: SourceSpec) -> PgmetaError:
    """Maps a psycopg connection failure to an error that says which problem it is."""
    where = f"{source.host}:{source.port}"
    auth = AuthenticationFailedError(
        f"authentication failed for user {source.username!r} at {where}",
        hint="check the password in the referenced secret or PGPASSWORD",
    )
    missing_db = DatabaseNotFoundError(f"database {source.database!r} does not exist on {where}")
    privilege = InsufficientPrivilegeError(
        f"user {source.username!r} may not connect to database {source.database!r} on {where}",
        hint="GRANT CONNECT ON DATABASE to the role",
    )
    if isinstance(exc, pg_errors.InvalidPassword | pg_errors.InvalidAuthorizationSpecification):
        return auth
    if isinstance(exc, pg_errors.InvalidCatalogName):
        return missing_db
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return privilege
    text = str(exc)
    lowered = text.lower()
    for pattern, kind in CONNECT_FAILURE_PATTERNS:
        if pattern in lowered:
            if kind == "database" and 'role "' in lowered:
                return auth
            return {"authentication": auth, "database": missing_db, "privilege": privilege}[kind]
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return SourceUnreachableError(f"cannot connect to PostgreSQL at {where}: {first_line}")


def make_url(source: SourceSpec, password: str | None) -> URL:
    return URL.create(
        "postgresql+psycopg",
        username=source.username,
        password=password,
        host=source.host,
        port=source.port,
        database=source.database,
    )


@contextmanager
def connect(source: SourceSpec, password: str | None) -> Iterator[Connection]:
    """One read-only connection to the source; connection failures become classified PgmetaErrors."""
    engine = create_engine(
        make_url(source, password),
        poolclass=NullPool,
        connect_args={
            "connect_timeout": source.connect_timeout_seconds,
            "sslmode": source.sslmode,
            "application_name": "pgmeta",
            "options": SESSION_OPTIONS,
        },
    )
    try:
        try:
            connection = engine.connect()
        except sa_exc.OperationalError as exc:
            raise classify_connect_error(exc.orig or exc, source) from None
        except sa_exc.DBAPIError as exc:
            raise classify_connect_error(exc.orig or exc, source) from None
        with connection:
            yield connection
    finally:
        engine.dispose()


def stream_rows(connection: Connection, sql: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of one catalog query as dicts, fetched through a server-side cursor in bounded batches."""
    result = connection.execution_options(stream_results=True, yield_per=2000).execute(text(sql), params or {})
    for row in result.mappings():
        yield dict(row)


def fetch_one(connection: Connection, sql: str) -> dict[str, Any]:
    row = connection.execute(text(sql)).mappings().one()
    return dict(row)


__all__ = ["connect", "stream_rows", "fetch_one", "classify_connect_error", "psycopg"]
