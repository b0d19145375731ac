"""Connections to the source PostgreSQL: read-only, bounded in time, errors classified by SQLSTATE."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import logging
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from sqlalchemy import URL, Connection, Engine, bindparam, create_engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import NullPool

from pgmeta_extractor.query_telemetry import observed_rows
from pgmeta_shared.errors import (
    AuthenticationFailedError,
    DatabaseNotFoundError,
    InsufficientPrivilegeError,
    PgmetaError,
    SourceUnreachableError,
)
from pgmeta_shared.events import SourceSpec

log = logging.getLogger(__name__)

# A metadata read must never block, or be blocked by, the application's DDL.
# cursor_tuple_fraction=1: every row is fetched, so plan for all of them; the default (0.1) picks
# fast-start nested loops for server-side cursors, 15x slower on the column query of a 200k-column catalog.
SESSION_OPTIONS = (
    "-c default_transaction_read_only=on -c statement_timeout=300000 -c lock_timeout=5000 -c cursor_tuple_fraction=1"
)


# libpq reports connection-time FATALs without a SQLSTATE (psycopg's ``sqlstate`` is None there), so
# these are told apart by the server's message; errors after connecting are classified by class.
CONNECT_FAILURE_PATTERNS: tuple[tuple[str, str], ...] = (
    # TLS set-up failures come first: "root certificate file ... does not exist" is not a missing database.
    ("certificate", "tls"),
    ("ssl", "tls"),
    ("password authentication failed", "authentication"),
    ("no password supplied", "authentication"),
    ("authentication failed", "authentication"),
    ("does not exist", "database"),
    ("permission denied for database", "privilege"),
)


def classify_connect_error(exc: BaseException, source: SourceSpec, database: str | None = None) -> PgmetaError:
    """Maps a psycopg connection failure to an error that says which problem it is."""
    where = f"{source.host}:{source.port}"
    database = database or source.discovery_database
    auth = AuthenticationFailedError(
        f"authentication failed for user {source.username!r} at {where}",
        hint="check the password in the referenced secret or PGPASSWORD",
    )
    missing_db = DatabaseNotFoundError(f"database {database!r} does not exist on {where}")
    privilege = InsufficientPrivilegeError(
        f"user {source.username!r} may not connect to database {database!r} on {where}",
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
            if kind == "tls":
                return SourceUnreachableError(
                    f"TLS connection to {where} failed: {_first_line(text)}",
                    hint="check sslmode and the CA bundle (sslrootcert)",
                )
            return {"authentication": auth, "database": missing_db, "privilege": privilege}[kind]
    if "require_auth" in lowered or "server requested" in lowered:
        return AuthenticationFailedError(
            f"PostgreSQL at {where} asked for a password exchange other than SCRAM; no password was sent",
            hint="use scram-sha-256 on the server, or allow other exchanges for this connection (password_exchange)",
        )
    # libpq's own text ("connection refused", "received invalid response", …) would tell a caller which
    # ports are open and what answers there: the log keeps it, the caller learns only what it needs.
    log.info("connection to %s failed: %s", where, _first_line(text) or type(exc).__name__)
    return SourceUnreachableError(
        f"cannot connect to PostgreSQL at {where}",
        hint="check host, port and that a PostgreSQL server answers there (the extractor's log has details)",
    )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


PasswordProvider = Callable[[], str]


def make_url(source: SourceSpec, database: str) -> URL:
    return URL.create(
        "postgresql+psycopg", username=source.username, host=source.host, port=source.port, database=database
    )


def connect_args(source: SourceSpec) -> dict[str, Any]:
    args: dict[str, Any] = {
        "connect_timeout": source.connect_timeout_seconds,
        "sslmode": source.sslmode,
        "application_name": "pgmeta",
        "options": SESSION_OPTIONS,
    }
    if source.sslrootcert:
        args["sslrootcert"] = source.sslrootcert
    if source.auth.method == "basic" and source.password_exchange == "scram-sha-256":
        # libpq then refuses a server that asks for the password in clear or as MD5 before sending anything.
        args["require_auth"] = "scram-sha-256"
    return args


def create_source_engine(source: SourceSpec, database: str, password: PasswordProvider) -> Engine:
    """An engine whose every new connection asks ``password`` anew (IAM tokens live 15 minutes)."""
    engine = create_engine(make_url(source, database), poolclass=NullPool, connect_args=connect_args(source))

    @event.listens_for(engine, "do_connect")
    def _fresh_password(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams["password"] = password()

    return engine


@contextmanager
def connect(source: SourceSpec, password: PasswordProvider, database: str | None = None) -> Iterator[Connection]:
    """One read-only connection to ``database`` (default: the source's); failures become classified errors."""
    engine = create_source_engine(source, database or source.discovery_database, password)
    try:
        try:
            connection = engine.connect()
        except sa_exc.DBAPIError as exc:
            raise classify_connect_error(exc.orig or exc, source, database) from None
        with connection:
            yield connection
    finally:
        engine.dispose()


def stream_rows(connection: Connection, sql: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of one catalog query as dicts, fetched through a server-side cursor in bounded batches.

    Straight through psycopg (inside the SQLAlchemy connection's transaction): SQLAlchemy's row objects
    cost more than the query itself on a 200k-column catalog.
    """
    statement, bound = _compiled(connection, sql, params or {})
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    yield from observed_rows(sql, _cursor_rows(driver, statement, bound))


def server_version_num(connection: Connection) -> int:
    """The server's version as ``server_version_num`` gives it (180001 for 18.1), known since connecting."""
    driver = connection.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver.info.server_version


FETCH_ROWS = 5000  # rows per round trip of a server-side cursor


def _cursor_rows(driver: psycopg.Connection[Any], statement: str, bound: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with driver.cursor(name=f"pgmeta_{next(_cursor_ids)}", row_factory=dict_row) as cursor:
        cursor.itersize = FETCH_ROWS
        cursor.execute(statement, bound)
        yield from cursor


# Catalog queries computed ahead of the one being read, each on a connection of its own. PostgreSQL sorts and
# hashes a catalog query before its first row (the column query of a 200k-column catalog: ~2.3 s to its first
# row, ~1.3 s for all the rest), so read one after another the server and the extractor take turns; with one
# query ahead the next one is computed while this one's rows are turned into records. Two connections read
# the catalog queries, one query at a time each (besides the extraction's own connection and, while views are
# read, the view-definition one): a metadata read must stay light on the server it reads.
QUERIES_AHEAD = 1


@dataclass
class _Started:
    """A query whose first batch has arrived (or whose execution failed)."""

    cursor: psycopg.ServerCursor[dict[str, Any]] | None
    first: list[dict[str, Any]]
    error: BaseException | None = None


class _Slot:
    """One source connection of the pipeline, in a transaction of its own per query."""

    def __init__(self, engine: Engine) -> None:
        self._raw = engine.raw_connection()
        driver = self._raw.driver_connection
        assert isinstance(driver, psycopg.Connection)
        self.driver: psycopg.Connection[Any] = driver

    def start(self, statement: str, bound: dict[str, Any]) -> _Started:
        """Runs in a worker thread: executes the query and fetches its first batch."""
        cursor: psycopg.ServerCursor[dict[str, Any]] | None = None
        try:
            cursor = self.driver.cursor(name=f"pgmeta_{next(_cursor_ids)}", row_factory=dict_row)
            cursor.execute(statement, bound)
            return _Started(cursor, cursor.fetchmany(FETCH_ROWS))
        except psycopg.Error as exc:
            if cursor is not None:
                _close(cursor)
            return _Started(None, [], exc)

    def finish(self, ok: bool, statement: str, bound: dict[str, Any]) -> None:
        """Ends the query's transaction: its locks go, and a failed query leaves the connection usable."""
        if self.driver.closed or self.driver.broken:
            return
        try:
            if ok:
                self.driver.commit()
            else:
                self.driver.rollback()
        except psycopg.Error as exc:
            raise self.wrapped(exc, statement, bound) from exc

    def wrapped(self, exc: psycopg.Error, statement: str, bound: dict[str, Any]) -> sa_exc.StatementError:
        """As SQLAlchemy would raise it; ``connection_invalidated`` tells a lost connection (read the database
        again) from a failed query (a lock or statement timeout is an OperationalError too: reported)."""
        return sa_exc.DBAPIError.instance(
            statement, bound, exc, psycopg.Error, connection_invalidated=self.driver.broken or self.driver.closed
        )

    def close(self) -> None:
        self._raw.close()


def stream_queries(
    connection: Connection, queries: Sequence[tuple[str, str]], params: dict[str, Any], ahead: int = QUERIES_AHEAD
) -> Generator[tuple[str, Iterator[dict[str, Any]]], None, None]:
    """``(name, rows)`` for each ``(name, sql)`` in order, while the next ``ahead`` queries already run.

    Each query runs on one of ``ahead + 1`` connections opened from ``connection``'s engine (its session
    options, a fresh password each: IAM tokens), in a transaction that ends when its rows are read. The
    source's default READ COMMITTED already gave each catalog query a snapshot of its own, so another
    connection sees what this one would have seen. A query's failure is raised, as SQLAlchemy's DBAPIError
    subclass, when its rows are read: the caller may report it and go on to the next query. The caller
    must read each ``rows`` before asking for the next pair.
    """
    compiled = [(name, sql, *_compiled(connection, sql, params)) for name, sql in queries]
    slots: list[_Slot] = []
    pending: dict[int, Future[_Started]] = {}
    pool = ThreadPoolExecutor(max_workers=ahead + 1, thread_name_prefix="pgmeta-query")

    def submit(index: int) -> None:
        if index < len(compiled):
            _name, _sql, statement, bound = compiled[index]
            pending[index] = pool.submit(slots[index % len(slots)].start, statement, bound)

    try:
        for _ in range(min(ahead + 1, len(compiled))):
            slots.append(_Slot(connection.engine))
        for index in range(len(slots)):
            submit(index)
        for index, (name, sql, statement, bound) in enumerate(compiled):
            slot = slots[index % len(slots)]
            rows = observed_rows(sql, _rows_of(pending.pop(index).result(), slot, statement, bound))
            ok = False
            try:
                yield name, rows
                ok = True
            finally:
                rows.close()  # a later read of these rows must not FETCH on a connection running another query
                slot.finish(ok, statement, bound)
            submit(index + len(slots))
    finally:
        _stop(pool, slots, pending)


def _stop(pool: ThreadPoolExecutor, slots: list[_Slot], pending: dict[int, Future[_Started]]) -> None:
    """Stops what still runs ahead (a cancel can land before the query starts: sent until it ends, bounded),
    then closes every connection; one step failing does not skip the others."""
    for index, future in pending.items():
        _cancel_until_done(slots[index % len(slots)], future)
    pool.shutdown(wait=True)
    for future in pending.values():
        started = future.result()
        if started.cursor is not None:
            _close(started.cursor)
    for slot in slots:
        try:
            slot.close()
        except Exception:
            log.warning("could not close a catalog connection", exc_info=True)


CANCEL_TRIES = 10


def _cancel_until_done(slot: _Slot, future: Future[Any]) -> None:
    """Cancels the query ``future`` runs on ``slot`` until it ends (a cancel can land before the query starts:
    sent again, bounded)."""
    for _ in range(CANCEL_TRIES):
        if future.done():
            return
        try:
            slot.driver.cancel_safe(timeout=2)
        except psycopg.Error:
            log.warning("could not cancel a catalog query", exc_info=True)
        with contextlib.suppress(TimeoutError):
            future.exception(timeout=1)


@contextlib.contextmanager
def rows_in_background(
    connection: Connection, queries: Sequence[tuple[str, dict[str, Any]]]
) -> Generator[list[Future[list[dict[str, Any]]]], None, None]:
    """Runs ``queries`` one after another on a connection of their own while the caller goes on; yields one
    future of all rows per query, in order. The first query's cursor is declared before this returns, so its
    snapshot precedes anything the caller reads afterwards (READ COMMITTED: a statement's snapshot is taken
    when it starts). Each query runs in a transaction of its own. A failure is raised, as SQLAlchemy's
    DBAPIError subclass, when its future's result is taken; leaving the block cancels what still runs."""
    compiled = [(sql, *_compiled(connection, sql, params)) for sql, params in queries]
    slot = _Slot(connection.engine)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgmeta-side")
    futures: list[Future[list[dict[str, Any]]]] = []

    def submit(cursor: psycopg.ServerCursor[dict[str, Any]] | None, sql: str, statement: str, bound: Any) -> None:
        # In the caller's trace context: the query's span is a child of the extraction's.
        futures.append(pool.submit(contextvars.copy_context().run, _read_all, slot, cursor, sql, statement, bound))

    try:
        sql, statement, bound = compiled[0]
        submit(_declared(slot, statement, bound), sql, statement, bound)
        for sql, statement, bound in compiled[1:]:
            submit(None, sql, statement, bound)
        yield futures
    finally:
        try:
            for future in futures:
                future.cancel()  # not started yet: never runs
                _cancel_until_done(slot, future)
            pool.shutdown(wait=True)
        finally:
            slot.close()


def _declared(slot: _Slot, statement: str, bound: dict[str, Any]) -> psycopg.ServerCursor[dict[str, Any]]:
    cursor = slot.driver.cursor(name=f"pgmeta_{next(_cursor_ids)}", row_factory=dict_row)
    try:
        cursor.execute(statement, bound)
    except psycopg.Error as exc:
        _close(cursor)
        slot.finish(False, statement, bound)
        raise slot.wrapped(exc, statement, bound) from exc
    return cursor


def _read_all(
    slot: _Slot,
    cursor: psycopg.ServerCursor[dict[str, Any]] | None,
    sql: str,
    statement: str,
    bound: dict[str, Any],
) -> list[dict[str, Any]]:
    ok = False
    try:
        if cursor is None:
            cursor = _declared(slot, statement, bound)
        rows = list(observed_rows(sql, _fetched(cursor)))
        ok = True
        return rows
    except psycopg.Error as exc:
        raise slot.wrapped(exc, statement, bound) from exc
    finally:
        if cursor is not None:
            _close(cursor)
        slot.finish(ok, statement, bound)


def _rows_of(started: _Started, slot: _Slot, statement: str, bound: dict[str, Any]) -> Iterator[dict[str, Any]]:
    cursor = started.cursor
    try:
        if started.error is not None:
            raise started.error
        yield from started.first
        assert cursor is not None
        if len(started.first) == FETCH_ROWS:
            while batch := cursor.fetchmany(FETCH_ROWS):
                yield from batch
    except psycopg.Error as exc:
        raise slot.wrapped(exc, statement, bound) from exc
    finally:
        if cursor is not None:
            _close(cursor)


def _fetched(cursor: psycopg.ServerCursor[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    while batch := cursor.fetchmany(FETCH_ROWS):
        yield from batch


def _close(cursor: psycopg.ServerCursor[dict[str, Any]]) -> None:
    with contextlib.suppress(psycopg.Error):  # on a lost connection the server has closed it already
        cursor.close()


_cursor_ids = itertools.count()


@functools.lru_cache(maxsize=64)
def _compile_text(sql: str, names: tuple[str, ...], dialect_name: str) -> str:
    from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

    clause = text(sql).bindparams(*(bindparam(name) for name in names))
    return str(clause.compile(dialect=pg_dialect.dialect()))  # type: ignore[no-untyped-call]


def _compiled(connection: Connection, sql: str, params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``:name`` placeholders as psycopg's ``%(name)s`` (and ``%`` escaped), compiled once per query."""
    return _compile_text(sql, tuple(sorted(params)), connection.dialect.name), params


def fetch_one(connection: Connection, sql: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    def one_row() -> Iterator[dict[str, Any]]:
        yield dict(connection.execute(text(sql), params or {}).mappings().one())

    return list(observed_rows(sql, one_row()))[0]


def fetch_all(connection: Connection, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every row of a query with a small answer, read at once. Not through a cursor: PostgreSQL never runs a
    cursor's query in parallel, and a query that aggregates all of pg_attribute into a few rows can use its
    parallel workers (the change fingerprints: ~0.42 s through a cursor, ~0.27 s at once on the bench catalog)."""

    def rows() -> Iterator[dict[str, Any]]:
        for row in connection.execute(text(sql), params or {}).mappings():
            yield dict(row)

    return list(observed_rows(sql, rows()))
