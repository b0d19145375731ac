"""The one delivery-failure policy: what a handler's exception means for the message and for the run.

- a retryable fault (sidecar or store briefly unavailable) → RETRY: Dapr redelivers, bounded by resiliency;
- anything else — bad input, a permanent fault of the source, or a pgmeta bug — is not retried: a stage
  command fails its run at once (``stage.failed``, the delivery acknowledged); any other message is DROPped
  to the dead-letter topic with the reason logged. Retrying a bug would only fail the same way, in a loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import grpc

from pgmeta_shared.errors import PgmetaError

TRANSIENT_GRPC_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


class Delivery(StrEnum):
    """A Dapr subscriber's answer for one delivery."""

    SUCCESS = "SUCCESS"
    RETRY = "RETRY"
    DROP = "DROP"


@dataclass(frozen=True)
class Failure:
    """A handler's exception, classified."""

    retryable: bool
    code: str
    message: str
    bug: bool = False  # unexpected: the log keeps the traceback

    @property
    def delivery(self) -> Delivery:
        return Delivery.RETRY if self.retryable else Delivery.DROP


# A sidecar passes its store's outage on as UNKNOWN/INTERNAL with the store's own words. Seen while Redis
# restarts: "EOF", "connection refused", and for a moment after it (the workflow actor's metadata read on a
# reconnected client) "WRONGTYPE" — all gone on retry (docs/reliability.md). A workflow state read that races
# the runtime's own save says "missing from state store (transient store read failure or partial save?)".
STORE_OUTAGE_MARKERS = (
    "eof",
    "connection refused",
    "connection reset",
    "broken pipe",
    "i/o timeout",
    "loading",
    "wrongtype",
    "no such host",
    "context deadline exceeded",
    "missing from state store",
)


def is_transient_grpc(exc: BaseException) -> bool:
    code = exc.code() if isinstance(exc, grpc.RpcError) and hasattr(exc, "code") else None
    if code in TRANSIENT_GRPC_CODES:
        return True
    if code in {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}:
        details = (exc.details() if hasattr(exc, "details") else str(exc)) or ""
        return any(marker in details.lower() for marker in STORE_OUTAGE_MARKERS)
    return False


def classify(exc: BaseException, service: str) -> Failure:
    if isinstance(exc, PgmetaError):
        return Failure(exc.retryable, exc.code, str(exc))
    if is_transient_grpc(exc):
        return Failure(True, "infrastructure_unavailable", f"Dapr sidecar unavailable: {exc}")
    return Failure(False, "internal_error", f"{type(exc).__name__}: {exc} (a pgmeta bug; see the {service} log)", True)
