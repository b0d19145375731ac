import zlib

import orjson

from pgmeta_shared.claimcheck import (
    MAX_CHUNK_RAW_BYTES,
    MAX_CHUNK_RECORDS,
    batch_records,
    decode_chunk,
    decode_parts,
    encode_chunk,
    encode_parts,
)


def test_chunks_round_trip() -> None:
    records = [{"kind": "column", "name": f"c{i}", "comment": "é ✓"} for i in range(100)]
    assert decode_chunk(encode_chunk(records)) == records


def test_batches_are_bounded_by_count() -> None:
    records = ({"i": i} for i in range(MAX_CHUNK_RECORDS * 2 + 3))
    sizes = [len(batch) for batch in batch_records(records)]
    assert sizes == [MAX_CHUNK_RECORDS, MAX_CHUNK_RECORDS, 3]


def test_batches_are_bounded_by_size_and_keep_every_record() -> None:
    big = "x" * (MAX_CHUNK_RAW_BYTES // 3)
    records = [{"i": i, "definition": big} for i in range(10)]
    batches = list(batch_records(records))
    assert all(len(orjson.dumps(batch)) <= MAX_CHUNK_RAW_BYTES + 100 for batch in batches)
    assert [r["i"] for batch in batches for r in batch] == list(range(10))


def test_chunks_are_zstd_and_zlib_chunks_of_an_older_version_still_read() -> None:
    records = [{"kind": "column", "column_name": f"c{i}"} for i in range(100)]
    assert encode_chunk(records).startswith(b"\x28\xb5\x2f\xfd")
    assert decode_chunk(encode_chunk(records)) == records
    assert decode_chunk(zlib.compress(orjson.dumps(records), 3)) == records
    parts = {"entity:Table": b'{"a": 1}\n', "fingerprints": b"[]"}
    assert decode_parts(encode_parts(parts)) == parts
    header = orjson.dumps([[name, len(blob)] for name, blob in parts.items()])
    assert decode_parts(zlib.compress(header + b"\n" + b"".join(parts.values()), 1)) == parts
