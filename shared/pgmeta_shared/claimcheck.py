"""Claim-check chunks: bulk records stored compressed in the artifacts state store, referenced by key."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

Record = dict[str, Any]

# Well under Dapr's 4 MiB body limit even for records that compress badly.
MAX_CHUNK_RAW_BYTES = 2 * 1024 * 1024
MAX_CHUNK_RECORDS = 5_000


def chunk_key(run_id: str, stage: str, unit: str, index: int) -> str:
    return f"{run_id}/{stage}/{unit}/{index:06d}"


def encode_chunk(records: list[Any]) -> bytes:
    return zlib.compress(orjson.dumps(records), 3)


def decode_chunk(blob: bytes) -> list[Any]:
    records: list[Any] = orjson.loads(zlib.decompress(blob))
    return records


def encode_parts(parts: dict[str, bytes]) -> bytes:
    """Several named byte strings in one compressed blob (pre-rendered JSON Lines, fingerprints, ...)."""
    header = orjson.dumps([[name, len(blob)] for name, blob in parts.items()])
    return zlib.compress(header + b"\n" + b"".join(parts.values()), 1)


def decode_parts(blob: bytes) -> dict[str, bytes]:
    data = zlib.decompress(blob)
    end = data.index(b"\n")
    parts: dict[str, bytes] = {}
    offset = end + 1
    for name, length in orjson.loads(data[:end]):
        parts[name] = data[offset : offset + length]
        offset += length
    return parts


def batch_records(records: Iterable[Record]) -> Iterator[list[Record]]:
    """Groups records into chunks bounded by count and by serialized size."""
    batch: list[Record] = []
    size = 0
    for record in records:
        record_size = len(orjson.dumps(record))
        if batch and (len(batch) >= MAX_CHUNK_RECORDS or size + record_size > MAX_CHUNK_RAW_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += record_size
    if batch:
        yield batch
