"""The infrastructure a service needs, behind small Protocols, and their one Dapr implementation.

Domain code asks for the narrowest Protocol it uses (``PubSub``, ``ArtifactStore``, ``StateStore``,
``Secrets``, ``ObjectStore``); ``Platform`` is all of them. Tests pass an in-memory one, services ``DaprPlatform``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any, Protocol

import grpc
import orjson
from pydantic import BaseModel

from pgmeta_shared.claimcheck import decode_chunk, decode_parts, encode_chunk, encode_parts
from pgmeta_shared.errors import ArtifactMissingError, CredentialsNotFoundError, TransientInfrastructureError
from pgmeta_shared.events import TopicName, to_payload
from pgmeta_shared.keys import StageName, chunk_key
from pgmeta_shared.settings import DaprSettings

log = logging.getLogger(__name__)


class PubSub(Protocol):
    def publish(self, topic: TopicName, event: BaseModel) -> None: ...


class ArtifactStore(Protocol):
    """The artifacts state store: claim-check chunks (compressed) and small JSON entries."""

    def save_chunk(self, run_id: str, stage: StageName, unit: str, index: int, records: list[Any]) -> None: ...

    def load_chunk(self, run_id: str, stage: StageName, unit: str, index: int) -> list[Any]: ...

    def save_parts(self, run_id: str, stage: StageName, unit: str, index: int, parts: dict[str, bytes]) -> None: ...

    def load_parts(self, run_id: str, stage: StageName, unit: str, index: int) -> dict[str, bytes]: ...

    def get_json(self, key: str) -> Any | None: ...

    def save_json(self, key: str, value: Any, *, ttl_seconds: int | None = None) -> None: ...

    def update_json(self, key: str, mutate: Callable[[Any | None], Any]) -> Any: ...

    def delete_json(self, key: str) -> None: ...


class StateStore(Protocol):
    """Any named state store (the credentials store, with Dapr's state encryption on)."""

    def get_state_json(self, store: str, key: str) -> Any | None: ...

    def save_state_json(self, store: str, key: str, value: Any, *, ttl_seconds: int | None = None) -> None: ...

    def delete_state(self, store: str, key: str) -> None: ...


class Secrets(Protocol):
    def get_secret(self, store: str, key: str) -> dict[str, str]: ...


class ObjectStore(Protocol):
    def write_object(self, binding: str, path: str, content: bytes) -> None: ...


class Platform(PubSub, ArtifactStore, StateStore, Secrets, ObjectStore, Protocol):
    """Everything a service's sidecar offers; opened in the app's lifespan and closed with it."""

    def close(self) -> None: ...


def _transient(exc: grpc.RpcError) -> bool:
    code = exc.code() if hasattr(exc, "code") else None
    return code in {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }


class DaprPlatform:
    """``Platform`` over one Dapr sidecar (gRPC). Thread-safe: gRPC channels are."""

    def __init__(self, settings: DaprSettings) -> None:
        from dapr.clients import DaprClient
        from dapr.conf import settings as sdk_settings

        # The SDK waits for the sidecar's HTTP health endpoint, found through its process-wide settings
        # (DAPR_HTTP_PORT by default): point them at this sidecar, whatever the environment says.
        sdk_settings.DAPR_RUNTIME_HOST = settings.dapr_host  # type: ignore[attr-defined]
        sdk_settings.DAPR_HTTP_PORT = settings.dapr_http_port  # type: ignore[attr-defined]
        if settings.dapr_api_token is not None:
            sdk_settings.DAPR_API_TOKEN = settings.dapr_api_token.get_secret_value()  # type: ignore[attr-defined]
        self._settings = settings
        self._client = DaprClient(address=settings.dapr_grpc_address, max_grpc_message_length=16 * 1024 * 1024)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as exc:
            if _transient(exc):
                raise TransientInfrastructureError(f"Dapr sidecar unavailable during {what}: {exc}") from exc
            raise

    def publish(self, topic: TopicName, event: BaseModel) -> None:
        self._call(
            f"publish to {topic}",
            self._client.publish_event,
            pubsub_name=self._settings.pubsub_name,
            topic_name=topic.value,
            data=orjson.dumps(to_payload(event)),
            data_content_type="application/json",
        )

    def _ttl(self, ttl_seconds: int | None) -> dict[str, str]:
        return {"ttlInSeconds": str(ttl_seconds)} if ttl_seconds else {}

    def save_chunk(self, run_id: str, stage: StageName, unit: str, index: int, records: list[Any]) -> None:
        self._call(
            "save chunk",
            self._client.save_state,
            self._settings.artifacts_store,
            chunk_key(run_id, stage, unit, index),
            encode_chunk(records),
            state_metadata=self._ttl(self._settings.artifact_ttl_seconds),
        )

    def load_chunk(self, run_id: str, stage: StageName, unit: str, index: int) -> list[Any]:
        key = chunk_key(run_id, stage, unit, index)
        response = self._call("load chunk", self._client.get_state, self._settings.artifacts_store, key)
        if not response.data:
            raise ArtifactMissingError(f"claim-check chunk {key!r} is missing (expired or never written)")
        return decode_chunk(response.data)

    def save_parts(self, run_id: str, stage: StageName, unit: str, index: int, parts: dict[str, bytes]) -> None:
        self._call(
            "save chunk",
            self._client.save_state,
            self._settings.artifacts_store,
            chunk_key(run_id, stage, unit, index),
            encode_parts(parts),
            state_metadata=self._ttl(self._settings.artifact_ttl_seconds),
        )

    def load_parts(self, run_id: str, stage: StageName, unit: str, index: int) -> dict[str, bytes]:
        key = chunk_key(run_id, stage, unit, index)
        response = self._call("load chunk", self._client.get_state, self._settings.artifacts_store, key)
        if not response.data:
            raise ArtifactMissingError(f"claim-check chunk {key!r} is missing (expired or never written)")
        return decode_parts(response.data)

    def get_json(self, key: str) -> Any | None:
        return self.get_state_json(self._settings.artifacts_store, key)

    def save_json(self, key: str, value: Any, *, ttl_seconds: int | None = None) -> None:
        self.save_state_json(self._settings.artifacts_store, key, value, ttl_seconds=ttl_seconds)

    def delete_json(self, key: str) -> None:
        self.delete_state(self._settings.artifacts_store, key)

    def update_json(self, key: str, mutate: Callable[[Any | None], Any]) -> Any:
        """Read-modify-write of one artifacts entry under optimistic concurrency (ETag, first-write-wins)."""
        from dapr.clients.grpc._state import Concurrency, StateOptions

        store = self._settings.artifacts_store
        for _ in range(20):
            response = self._call("get state", self._client.get_state, store, key)
            current = orjson.loads(response.data) if response.data else None
            updated = mutate(current)
            try:
                self._client.save_state(
                    store,
                    key,
                    orjson.dumps(updated),
                    etag=response.etag or None,
                    options=StateOptions(concurrency=Concurrency.first_write),
                )
                return updated
            except grpc.RpcError as exc:
                if _transient(exc):
                    raise TransientInfrastructureError(f"Dapr sidecar unavailable during update: {exc}") from exc
                log.debug("concurrent update of %s, retrying: %s", key, exc)
        raise TransientInfrastructureError(f"{key!r} kept changing under concurrent updates")

    def get_secret(self, store: str, key: str) -> dict[str, str]:
        try:
            response = self._client.get_secret(store, key)
        except grpc.RpcError as exc:
            if _transient(exc):
                raise TransientInfrastructureError(f"secret store {store!r} unavailable: {exc}") from exc
            raise CredentialsNotFoundError(
                f"secret {key!r} could not be read from secret store {store!r}: {exc.details()}"
            ) from exc
        secret: dict[str, str] = dict(response.secret)
        return secret

    def get_state_json(self, store: str, key: str) -> Any | None:
        response = self._call("get state", self._client.get_state, store, key)
        return orjson.loads(response.data) if response.data else None

    def save_state_json(self, store: str, key: str, value: Any, *, ttl_seconds: int | None = None) -> None:
        self._call(
            "save state",
            self._client.save_state,
            store,
            key,
            orjson.dumps(value),
            state_metadata=self._ttl(ttl_seconds),
        )

    def delete_state(self, store: str, key: str) -> None:
        self._call("delete state", self._client.delete_state, store, key)

    def write_object(self, binding: str, path: str, content: bytes) -> None:
        # Both bindings decode base64 (localstorage whenever the payload is valid base64, S3 with
        # decodeBase64), so always send base64; S3 first JSON-unquotes the payload, so send it as a JSON
        # string, or base64 text that happens to read as JSON (`null`, `1e10`) would be mangled.
        self._call(
            "write object",
            self._client.invoke_binding,
            binding,
            "create",
            b'"' + base64.b64encode(content) + b'"',
            binding_metadata={"fileName": path, "key": path},
        )
