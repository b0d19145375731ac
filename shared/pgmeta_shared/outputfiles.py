"""How published files are stored: the one home of their encoding, for the publisher and every reader.

Bulk files (entities, extras, change lists) are Zstandard-compressed JSON Lines named ``*.jsonl.zst``: zstd
compresses JSON several times faster than gzip at a better ratio, and the ``zstd`` command line (and Python 3.14's
``compression.zstd``) reads the files. The manifest and the report stay plain JSON, so a reader needs nothing to
find out what a run holds.
"""

from __future__ import annotations

from typing import Final

import zstandard

ZSTD: Final = "zstd"
ZSTD_SUFFIX: Final = ".zst"
# zstd's own default: on Atlas JSON Lines about as fast as level 1 (well over 1 GB/s) and a better ratio.
ZSTD_LEVEL: Final = 3


def compress(blob: bytes) -> bytes:
    """One complete zstd frame, its content size in the header (so any reader can size its buffer)."""
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True).compress(blob)


def decompress(stored: bytes) -> bytes:
    """The content of one frame ``compress`` made."""
    return zstandard.ZstdDecompressor().decompress(stored)


def decode(name: str, stored: bytes) -> bytes:
    """A published file's content (JSON Lines or JSON) from its stored bytes, by the encoding its name says."""
    if name.endswith(ZSTD_SUFFIX):
        return decompress(stored)
    return stored
