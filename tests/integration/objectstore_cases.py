"""Payloads every object-store binding must store byte for byte, whichever way ``DaprPlatform`` sends them.

Some go raw (a JSON object or array, a zstd frame, binary starting with a byte no binding reinterprets), the
others as base64 in a JSON string (base64-looking text, JSON scalars, quoted strings, white space first).
"""

from __future__ import annotations

import random

import pytest

from pgmeta_shared.outputfiles import compress


def _random(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def _jsonl(lines: int) -> bytes:
    return b"".join(
        b'{"typeName": "Column", "attributes": {"qualifiedName": "default/postgres/1/shop/public/t/c%d"}}\n' % i
        for i in range(lines)
    )


OBJECT_CASES = [
    pytest.param(b"aGVsbG8=", id="looks-like-base64"),
    pytest.param(
        b'{"typeName": "Table", "attributes": {"qualifiedName": "default/postgres/1/shop/public/orders"}}\n'
        b'{"typeName": "Table", "attributes": {"name": "\xc3\xbcber"}}\n',
        id="jsonl",
    ),
    pytest.param(b'{"files": [], "counts": {"Table": 1}}', id="json-object"),
    pytest.param(b'["a", "b"]', id="json-array"),
    pytest.param(b"null", id="json-null"),
    pytest.param(b"1e10", id="json-number"),
    pytest.param(b"-1", id="json-negative-number"),
    pytest.param(b"true", id="json-true"),
    pytest.param(b'"quoted"', id="json-string"),
    pytest.param(b"`backquoted`", id="go-raw-string"),
    pytest.param(b' {"leading": "space"}', id="leading-space"),
    pytest.param(b"", id="empty"),
    pytest.param(bytes(range(256)) * 64, id="binary"),
    pytest.param(b"{" + _random(4096, 3) + b"}", id="binary-in-braces"),
    pytest.param(compress(_jsonl(20_000)), id="zstd-jsonl"),
    # Base64 would make it 4 MiB on the wire: past gRPC's and daprd's 4 MiB defaults, within our 16 MiB.
    pytest.param(_random(3 * 1024 * 1024, 7), id="3MiB-random"),
    pytest.param(b"A" + _random(3 * 1024 * 1024, 8), id="3MiB-base64-path"),
    pytest.param(compress(_random(3 * 1024 * 1024, 9)), id="3MiB-zstd-incompressible"),
]
