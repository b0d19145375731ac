"""Faults of the object store, classified: a refused write is retried with backoff, then named as what it is.

An output binding answers a failed write with a gRPC error whose text is the storage's own (``permission
denied``, ``no space left on device``, ``AccessDenied``, ``SlowDown``, a connection refused). None of these
is a pgmeta bug: each is retried with backoff (a flapping store, a full disk being cleaned, a policy being
fixed), and if it persists the stage fails with ``object_store_unavailable``, the path, and a hint. The run
can then be retried (``pgmeta retry``) once the store is fixed; finished chunks are reused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import grpc

from pgmeta_shared.delivery import is_transient_grpc
from pgmeta_shared.errors import ObjectStoreError, TransientInfrastructureError

log = logging.getLogger(__name__)

T = TypeVar("T")

# Backoff between attempts: about 30 s in all, long enough for a blip, short of the stage timeout.
STORAGE_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)

_HINTS = (
    (
        ("permission denied", "accessdenied", "access denied", "forbidden", "read-only"),
        "the publisher's identity may not write there: check the directory's permissions or the bucket policy",
    ),
    (
        ("no space", "quota", "disk full", "entitytoolarge"),
        "the store is full or over quota: free space or raise the quota",
    ),
    (
        ("not a directory", "is a directory", "nosuchbucket", "no such file"),
        "the output location does not exist or is not a directory/bucket: check rootPath or the bucket name",
    ),
)


def storage_hint(message: str) -> str:
    lowered = message.lower()
    for words, hint in _HINTS:
        if any(word in lowered for word in words):
            return hint
    return "the object store is unreachable or refused the write: check that it is up and reachable"


def retry_storage(
    binding: str, path: str, write: Callable[[], T], backoff: tuple[float, ...] = STORAGE_BACKOFF_SECONDS
) -> T:
    """``write()``, retried with backoff on any binding error; ObjectStoreError (with path and hint) at the end."""
    for attempt, delay in enumerate((*backoff, None), start=1):
        try:
            return write()
        except grpc.RpcError as exc:
            detail = exc.details() if hasattr(exc, "details") else str(exc)
            if delay is None and is_transient_grpc(exc):  # the sidecar itself is down: redeliver later
                raise TransientInfrastructureError(f"Dapr sidecar unavailable writing {path!r}: {detail}") from None
            if delay is None:
                raise ObjectStoreError(
                    f"object store {binding!r} refused writing {path!r} {attempt} times: {detail}",
                    hint=storage_hint(str(detail)),
                ) from None
            log.warning(
                "object store %r refused %r (attempt %d, retrying in %.1f s): %s", binding, path, attempt, delay, detail
            )
            time.sleep(delay)
    raise AssertionError("unreachable")
