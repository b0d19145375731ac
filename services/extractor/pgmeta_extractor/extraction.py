"""The extract stage: catalog rows of one database, written as claim-check chunks."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from sqlalchemy import Connection

from pgmeta_extractor.catalog_sql import CATALOG_QUERIES, COUNT_QUERY, SERVER_QUERY
from pgmeta_extractor.source import connect, fetch_one, stream_rows
from pgmeta_shared.claimcheck import Record, batch_records
from pgmeta_shared.errors import CredentialsNotFoundError
from pgmeta_shared.events import (
    CredentialRef,
    ExtractCompleted,
    ExtractionProgress,
    ExtractRequested,
    Stage,
    TopicName,
)
from pgmeta_shared.platform import Platform

log = logging.getLogger(__name__)

STAGE = Stage.EXTRACT.value


def result_key(run_id: str) -> str:
    return f"{run_id}/{STAGE}/result"


def resolve_password(platform: Platform, ref: CredentialRef) -> str:
    """The source password named by ``ref``; it is never logged or put in an event."""
    if ref.kind == "secret":
        secret = platform.get_secret(ref.store, ref.key)
        password = secret.get("password")
    else:
        entry = platform.get_state_json(ref.store, ref.key)
        password = entry.get("password") if isinstance(entry, dict) else None
    if password is None:
        raise CredentialsNotFoundError(
            f"no password under {ref.kind} {ref.key!r} in store {ref.store!r}",
            hint="a secret must hold a 'password' entry; a state entry may have expired",
        )
    return str(password)


def iter_catalog(connection: Connection) -> Iterator[Record]:
    """Every catalog record of the connected database, tagged with its kind, streamed."""
    server = fetch_one(connection, SERVER_QUERY)
    yield {"kind": "server", **server}
    for kind, sql in CATALOG_QUERIES.items():
        for row in stream_rows(connection, sql):
            row["kind"] = kind
            row["database_name"] = server["database_name"]
            yield row


def extract(event: ExtractRequested, platform: Platform) -> ExtractCompleted:
    """Extracts the catalog into chunks; idempotent per run (a redelivery finds the recorded result)."""
    recorded = platform.get_json(result_key(event.run_id))
    if recorded is not None:
        log.info("run %s: extract already done, re-announcing", event.run_id)
        return ExtractCompleted.model_validate(recorded)

    password = resolve_password(platform, event.credentials)
    provider = lambda: password  # noqa: E731
    counts: dict[str, int] = {}
    chunk_count = 0
    with connect(event.source, provider) as connection:
        totals = fetch_one(connection, COUNT_QUERY)
        total = int(totals["schemas"]) + int(totals["relations"]) + int(totals["columns"])
        done = 0
        for chunk_count, batch in enumerate(batch_records(iter_catalog(connection)), start=1):
            platform.save_chunk(event.run_id, STAGE, chunk_count - 1, batch)
            for record in batch:
                counts[record["kind"]] = counts.get(record["kind"], 0) + 1
            done = sum(v for k, v in counts.items() if k in {"schema", "relation", "column"})
            platform.publish(
                TopicName.EXTRACTION_PROGRESS,
                ExtractionProgress(run_id=event.run_id, stage=Stage.EXTRACT, done=done, total=total),
            )
    completed = ExtractCompleted(run_id=event.run_id, chunk_count=chunk_count, counts=counts)
    platform.save_json(result_key(event.run_id), completed.model_dump(mode="json"))
    return completed
