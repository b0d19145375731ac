"""Change fingerprints started ahead: a run's preflight starts the fingerprint query of the database it discovered,
and the extract stage that follows in this process takes the rows instead of sending the query itself.

On an incremental re-run the fingerprint query is the extract stage's critical path (~0.5 s of a 220,000-entity
catalog) and the workflow's turn between preflight and extract (~0.1-0.2 s: completion event, next command,
delivery, state reads, a new connection) is dead time for the source: started ahead, the query runs through it.

Safe by the rule the extract stage already keeps: fingerprints are taken before the catalog is read. Rows taken
earlier are older still; a change committed in between makes the next run read the schema again, never the other
way round. What is not taken (the extract went to another replica, the run failed) is dropped after
``AHEAD_TTL_SECONDS``; the query's connection closes as soon as its rows are read.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from pgmeta_extractor.change_sql import schema_fingerprints_query
from pgmeta_extractor.source import PasswordProvider, connect, fetch_all, server_version_num
from pgmeta_shared.events import SourceSpec

log = logging.getLogger(__name__)

AHEAD_TTL_SECONDS = 120.0

AheadKey = tuple[str, str, str, str]


def _key(run_id: str, database: str, params: dict[str, Any]) -> AheadKey:
    # The schema filters are part of the key: rows are taken only by the query they answer.
    return run_id, database, repr(params.get("schema_include")), repr(params.get("schema_exclude"))


@dataclass
class _Started:
    future: Future[list[dict[str, Any]]]
    at: float = field(default_factory=time.monotonic)


class FingerprintsAhead:
    """Fingerprint queries started by a preflight, kept until their run's extract takes them (or they expire)."""

    def __init__(self, ttl_seconds: float = AHEAD_TTL_SECONDS) -> None:
        self._ttl = ttl_seconds
        self._lock = threading.Lock()
        self._started: dict[AheadKey, _Started] = {}

    def start(
        self, run_id: str, source: SourceSpec, password: PasswordProvider, database: str, params: dict[str, Any]
    ) -> None:
        """Starts the query on a connection of its own (in the caller's trace context); once per key."""
        key = _key(run_id, database, params)
        with self._lock:
            self._forget_expired()
            if key in self._started:
                return
            started = _Started(Future())
            work = contextvars.copy_context()
            threading.Thread(
                target=work.run,
                args=(_read, started.future, source, password, database, params),
                name="pgmeta-fingerprints-ahead",
                daemon=True,  # bounded by statement_timeout; never holds up the extractor's exit
            ).start()
            # Kept only once it runs: a thread that could not start must not leave a future nobody completes.
            self._started[key] = started

    def take(self, run_id: str, database: str, params: dict[str, Any]) -> Future[list[dict[str, Any]]] | None:
        """The query started for this run, database and filters, once; None when none was started here."""
        with self._lock:
            started = self._started.pop(_key(run_id, database, params), None)
        return None if started is None else started.future

    def _forget_expired(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._started.items() if now - s.at > self._ttl]:
            del self._started[key]


def _read(
    future: Future[list[dict[str, Any]]],
    source: SourceSpec,
    password: PasswordProvider,
    database: str,
    params: dict[str, Any],
) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        with connect(source, password, database) as connection:
            query = schema_fingerprints_query(server_version_num(connection))
            rows = fetch_all(connection, query, params)
            connection.rollback()
    except BaseException as exc:  # handed to whoever takes the rows; the extract stage then asks again itself
        future.set_exception(exc)
    else:
        future.set_result(rows)
