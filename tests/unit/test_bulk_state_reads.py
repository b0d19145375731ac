"""Bulk state reads: an answer too big for one gRPC message is asked for again in halves."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import orjson
import pytest

from pgmeta_shared.errors import TransientInfrastructureError
from pgmeta_shared.platform import DaprPlatform


class TooBig(grpc.RpcError):  # type: ignore[misc]  # grpc has no type stubs
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.RESOURCE_EXHAUSTED


class Sidecar:
    """GetBulkState over a dict, refusing answers of more than ``limit`` bytes as the gRPC message limit does."""

    def __init__(self, entries: dict[str, Any], limit: int) -> None:
        self.entries, self.limit = entries, limit
        self.calls: list[list[str]] = []

    def get_bulk_state(self, store: str, keys: list[str], parallelism: int) -> Any:
        self.calls.append(list(keys))
        items = [
            SimpleNamespace(key=k, error="", data=orjson.dumps(self.entries[k]) if k in self.entries else b"")
            for k in keys
        ]
        if sum(len(i.data) for i in items) > self.limit:
            raise TooBig()
        return SimpleNamespace(items=items)


def platform_over(sidecar: Sidecar) -> DaprPlatform:
    platform = DaprPlatform.__new__(DaprPlatform)  # no sidecar process: only the read path is exercised
    platform._client = sidecar  # type: ignore[assignment]
    platform._settings = SimpleNamespace(artifacts_store="artifacts")  # type: ignore[assignment]
    return platform


def test_an_answer_too_big_for_one_message_is_read_in_halves() -> None:
    entries = {f"k{i}": "x" * 100 for i in range(8)}
    sidecar = Sidecar(entries, limit=450)  # four entries fit, eight do not
    values = platform_over(sidecar).get_json_many([*entries, "missing"])
    assert values == {**entries, "missing": None}
    assert max(len(call) for call in sidecar.calls[1:]) <= 5 and len(sidecar.calls) > 1


def test_one_entry_too_big_is_an_error_of_the_sidecar() -> None:
    sidecar = Sidecar({"huge": "x" * 1000}, limit=100)
    with pytest.raises((TransientInfrastructureError, grpc.RpcError)):
        platform_over(sidecar).get_json_many(["huge"])
