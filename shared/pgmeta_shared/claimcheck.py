"""Claim-check chunks: bulk records stored compressed in the artifacts state store, referenced by key."""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from more_itertools import constrained_batches

Record = dict[str, Any]

# Well under Dapr's 4 MiB body limit even for records that compress badly.
MAX_CHUNK_RAW_BYTES = 2 * 1024 * 1024
MAX_CHUNK_RECORDS = 5_000


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
    """Groups records into chunks bounded by count and by serialized size (a larger record stands alone)."""
    for batch in constrained_batches(
        records, MAX_CHUNK_RAW_BYTES, MAX_CHUNK_RECORDS, get_len=lambda record: len(orjson.dumps(record)), strict=False
    ):
        yield list(batch)
