"""An in-memory Platform for unit tests (services use DaprPlatform)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from pgmeta_shared.claimcheck import decode_chunk, decode_parts, encode_chunk, encode_parts
from pgmeta_shared.errors import ArtifactMissingError, CredentialsNotFoundError
from pgmeta_shared.events import TopicName
from pgmeta_shared.keys import StageName, chunk_key


class InMemoryPlatform:
    def __init__(self, secrets: dict[str, dict[str, dict[str, str]]] | None = None) -> None:
        self.published: list[tuple[TopicName, BaseModel]] = []
        self.state: dict[tuple[str, str], Any] = {}
        self.chunks: dict[str, bytes] = {}
        self.objects: dict[tuple[str, str], bytes] = {}
        self.secrets = secrets or {}
        self.object_writes = 0
        self.bulk_reads = 0

    def close(self) -> None:
        pass

    def publish(self, topic: TopicName, event: BaseModel) -> None:
        self.published.append((topic, event))

    def topics(self) -> list[TopicName]:
        return [topic for topic, _ in self.published]

    def save_chunk(self, run_id: str, stage: StageName, unit: str, index: int, records: list[Any]) -> None:
        self.chunks[chunk_key(run_id, stage, unit, index)] = encode_chunk(records)

    def load_chunk(self, run_id: str, stage: StageName, unit: str, index: int) -> list[Any]:
        key = chunk_key(run_id, stage, unit, index)
        if key not in self.chunks:
            raise ArtifactMissingError(f"claim-check chunk {key!r} is missing")
        return decode_chunk(self.chunks[key])

    def save_parts(self, run_id: str, stage: StageName, unit: str, index: int, parts: dict[str, bytes]) -> None:
        self.chunks[chunk_key(run_id, stage, unit, index)] = encode_parts(parts)

    def load_parts(self, run_id: str, stage: StageName, unit: str, index: int) -> dict[str, bytes]:
        key = chunk_key(run_id, stage, unit, index)
        if key not in self.chunks:
            raise ArtifactMissingError(f"claim-check chunk {key!r} is missing")
        return decode_parts(self.chunks[key])

    def get_json(self, key: str) -> Any | None:
        return self.get_state_json("artifacts", key)

    def get_json_many(self, keys: Sequence[str]) -> dict[str, Any | None]:
        self.bulk_reads += 1
        return {key: self.get_json(key) for key in keys}

    def stored_json(self, key: str) -> Any:
        """What a test expects to be stored under ``key``: fails the test, naming the key, when nothing is."""
        value = self.get_json(key)
        assert value is not None, f"nothing stored under {key}"
        return value

    def save_json(self, key: str, value: Any, *, ttl_seconds: int | None = None) -> None:
        self.save_state_json("artifacts", key, value, ttl_seconds=ttl_seconds)

    def delete_json(self, key: str) -> None:
        self.delete_state("artifacts", key)

    def update_json(self, key: str, mutate: Callable[[Any | None], Any], *, run_scoped: bool = False) -> Any:
        updated = mutate(self.get_json(key))
        self.save_json(key, updated)
        return updated

    def get_secret(self, store: str, key: str) -> dict[str, str]:
        try:
            return dict(self.secrets[store][key])
        except KeyError:
            raise CredentialsNotFoundError(f"secret {key!r} could not be read from secret store {store!r}") from None

    def get_state_json(self, store: str, key: str) -> Any | None:
        return copy.deepcopy(self.state.get((store, key)))

    def save_state_json(self, store: str, key: str, value: Any, *, ttl_seconds: int | None = None) -> None:
        self.state[(store, key)] = copy.deepcopy(value)

    def delete_state(self, store: str, key: str) -> None:
        self.state.pop((store, key), None)

    def write_object(self, binding: str, path: str, content: bytes) -> None:
        self.object_writes += 1
        self.objects[(binding, path)] = content

    def read_object(self, binding: str, path: str) -> bytes:
        return self.objects[(binding, path)]


class RpcFailure(grpc.RpcError):  # type: ignore[misc]  # grpc ships no type for RpcError
    """A gRPC error as a Dapr sidecar raises it: a status code and the sidecar's own words."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def route_cli_to(monkeypatch: pytest.MonkeyPatch, app: TestClient) -> None:
    """The CLI's HTTP requests go to ``app`` (a FastAPI app in process) instead of over the network.

    Only the wire is replaced (``HttpClient.exchange``): URLs, query strings, JSON bodies and headers are the
    ones the CLI builds; the app's own default headers (a test's token) are added to them.
    """
    from pgmeta_cli.http_client import HttpClient, Response

    def exchange(
        _client: HttpClient, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> Response:
        answer = app.request(method, url, content=body, headers=headers)
        return Response(answer.status_code, answer.content, url)

    monkeypatch.setattr(HttpClient, "exchange", exchange)
    # The CLI sends the test's token, not a local stack's (`make run` leaves .pgmeta/stack/api-token behind).
    bearer = app.headers.get("Authorization", "")
    if bearer.startswith("Bearer "):
        monkeypatch.setenv("PGMETA_API_TOKEN", bearer.removeprefix("Bearer "))
    else:
        monkeypatch.setenv("PGMETA_STATE_DIR", "/nonexistent/pgmeta-test-state")
        monkeypatch.delenv("PGMETA_API_TOKEN", raising=False)
