"""Which object-store payloads go raw: only those no binding reinterprets (the real-daprd tests prove bytes)."""

from __future__ import annotations

import base64

import pytest

from pgmeta_shared.bindingdata import binding_payload, stored_exactly_when_raw
from pgmeta_shared.outputfiles import compress, decode


@pytest.mark.parametrize(
    "content", [b'{"a": 1}', b"[1]", compress(b'{"a": 1}\n'), b"\x00\x01", b"\x1f\x8b\x08"], ids=repr
)
def test_objects_arrays_frames_and_binary_go_raw(content: bytes) -> None:
    data, metadata = binding_payload(content, "p/x")
    assert stored_exactly_when_raw(content)
    assert data is content and metadata == {"fileName": "p/x", "key": "p/x", "decodeBase64": "false"}


@pytest.mark.parametrize(
    "content", [b"", b"aGVsbG8=", b"null", b"1e10", b"-1", b"true", b'"s"', b"'s'", b"`s`", b" {}", b"\n{}"], ids=repr
)
def test_anything_a_binding_could_reinterpret_goes_as_base64_in_a_json_string(content: bytes) -> None:
    data, metadata = binding_payload(content, "p/x")
    assert not stored_exactly_when_raw(content)
    assert metadata["decodeBase64"] == "true"
    assert data.startswith(b'"') and data.endswith(b'"') and base64.b64decode(data[1:-1]) == content


def test_zstd_files_decode_by_their_name() -> None:
    blob = b'{"typeName": "Table"}\n' * 1000
    assert decode("Table-db000-00000.jsonl.zst", compress(blob)) == blob
    assert decode("manifest.json", b"{}") == b"{}"
