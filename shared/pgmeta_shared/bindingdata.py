"""The bytes of an object-store write as the Dapr output binding gets them: raw when it stores them exactly.

What the bindings do with ``data`` before storing it (components-contrib 1.18):

- ``bindings.localstorage`` Go-unquotes it when it is a quoted string literal, then base64-decodes it whenever
  it is valid base64 (no switch);
- ``bindings.aws.s3`` JSON-decodes it and keeps the result when it is a JSON string, number, boolean or null,
  then base64-decodes it when ``decodeBase64`` is true (the request's metadata overrides the component's).

So bytes are stored exactly, sent raw with ``decodeBase64: false``, when their first byte can start neither a
quoted string, nor base64 text, nor a JSON scalar (leading white space included): a JSON object or array, or a
zstd frame (magic ``28 b5 2f fd``), which is everything the publisher writes in bulk. Anything else (say, text
that happens to be valid base64) is sent as base64 inside a JSON string with ``decodeBase64: true``, which
both bindings turn back into the exact bytes. Raw bytes save the base64 encoding in the publisher and the
decoding in its sidecar, and a third of the bytes on the wire.
"""

from __future__ import annotations

import base64
import string

_AMBIGUOUS_FIRST_BYTES = frozenset((string.ascii_letters + string.digits + "+/=" + "\"'`" + "-" + " \t\r\n").encode())


def stored_exactly_when_raw(content: bytes) -> bool:
    return bool(content) and content[0] not in _AMBIGUOUS_FIRST_BYTES


def binding_payload(content: bytes, path: str) -> tuple[bytes, dict[str, str]]:
    """``data`` and ``metadata`` of a ``create`` on the object-store binding that stores exactly ``content``."""
    metadata = {"fileName": path, "key": path}
    if stored_exactly_when_raw(content):
        return content, metadata | {"decodeBase64": "false"}
    # A JSON string: S3 JSON-decodes first, and base64 text that reads as JSON (`null`, `1e10`) would be mangled.
    return b'"' + base64.b64encode(content) + b'"', metadata | {"decodeBase64": "true"}
