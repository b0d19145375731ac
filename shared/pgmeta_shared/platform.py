"""The infrastructure a service needs, behind small Protocols, and their one Dapr implementation.

Domain code asks for the narrowest Protocol it uses (``PubSub``, ``ArtifactStore``, ``StateStore``,
``Secrets``, ``ObjectStore``); ``Platform`` is all of them. Tests pass an in-memory one, services ``DaprPlatform``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
import orjson
from pydantic import BaseModel

from pgmeta_shared.bindingdata import binding_payload
from pgmeta_shared.claimcheck import decode_chunk, decode_parts, encode_chunk, encode_parts
from pgmeta_shared.delivery import is_transient_grpc
from pgmeta_shared.errors import ArtifactMissingError, CredentialsNotFoundError, TransientInfrastructureError
from pgmeta_shared.events import TopicName, to_payload
from pgmeta_shared.keys import StageName, chunk_key
from pgmeta_shared.settings import DaprSettings
from pgmeta_shared.storage import retry_storage
from pgmeta_shared.telemetry import DaprCallTracing, chunk_span, record_chunk_read, record_chunk_written

log = logging.getLogger(__name__)

T = TypeVar("T")

BULK_GET_PARALLELISM = 8  # keys the sidecar reads at once in a bulk get
BULK_GET_KEYS = 100  # keys per bulk get: each answer stays well under the gRPC message limit
NO_TTL = 0  # ``save_json(..., ttl_seconds=NO_TTL)``: an entry that must outlive runs (a baseline)


class PubSub(Protocol):
    def publish(self, topic: TopicName, event: BaseModel) -> None: ...


class ArtifactStore(Protocol):
    """The artifacts state store: claim-check chunks (compressed) and small JSON entries."""

    def save_chunk(self, run_id: str, stage: StageName, unit: str, index: int, records: list[Any]) -> None: ...

    def load_chunk(self, run_id: str, stage: StageName, unit: str, index: int) -> list[Any]: ...

    def save_parts(self, run_id: str, stage: StageName, unit: str, index: int, parts: dict[str, bytes]) -> None: ...

    def load_parts(self, run_id: str, stage: StageName, unit: str, index: int) -> dict[str, bytes]: ...

    def get_json(self, key: str) -> Any | None: ...

    def get_json_many(self, keys: Sequence[str]) -> dict[str, Any | None]:
        """Several entries in one round trip to the sidecar: each key's value (None where nothing is stored)."""
        ...

    def save_json(self, key: str, value: Any, *, ttl_seconds: int | None = None) -> None: ...

    def update_json(self, key: str, mutate: Callable[[Any | None], Any], *, run_scoped: bool = False) -> Any: ...

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

    def read_object(self, binding: str, path: str) -> bytes: ...


class Platform(PubSub, ArtifactStore, StateStore, Secrets, ObjectStore, Protocol):
    """Everything a service's sidecar offers; opened in the app's lifespan and closed with it."""

    def close(self) -> None: ...


def _transient(exc: grpc.RpcError) -> bool:
    return is_transient_grpc(exc)  # the one policy (delivery.py)


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
        self._client = DaprClient(
            address=settings.dapr_grpc_address,
            interceptors=[DaprCallTracing()],
            max_grpc_message_length=16 * 1024 * 1024,
        )

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

    def _save_blob(
        self, run_id: str, stage: StageName, unit: str, index: int, blob: bytes, records: int | None
    ) -> None:
        with chunk_span("save", run_id, stage, unit, index) as span:
            record_chunk_written(span, stage, len(blob), records)
            self._call(
                "save chunk",
                self._client.save_state,
                self._settings.artifacts_store,
                chunk_key(run_id, stage, unit, index),
                blob,
                state_metadata=self._ttl(self._settings.artifact_ttl_seconds),
            )

    def _load_blob(self, run_id: str, stage: StageName, unit: str, index: int, decode: Callable[[bytes], T]) -> T:
        key = chunk_key(run_id, stage, unit, index)
        with chunk_span("load", run_id, stage, unit, index) as span:
            response = self._call("load chunk", self._client.get_state, self._settings.artifacts_store, key)
            if not response.data:
                raise ArtifactMissingError(f"claim-check chunk {key!r} is missing (expired or never written)")
            decoded = decode(response.data)
            record_chunk_read(span, stage, len(response.data), len(decoded) if isinstance(decoded, list) else None)
            return decoded

    def save_chunk(self, run_id: str, stage: StageName, unit: str, index: int, records: list[Any]) -> None:
        self._save_blob(run_id, stage, unit, index, encode_chunk(records), len(records))

    def load_chunk(self, run_id: str, stage: StageName, unit: str, index: int) -> list[Any]:
        return self._load_blob(run_id, stage, unit, index, decode_chunk)

    def save_parts(self, run_id: str, stage: StageName, unit: str, index: int, parts: dict[str, bytes]) -> None:
        self._save_blob(run_id, stage, unit, index, encode_parts(parts), None)

    def load_parts(self, run_id: str, stage: StageName, unit: str, index: int) -> dict[str, bytes]:
        return self._load_blob(run_id, stage, unit, index, decode_parts)

    def get_json(self, key: str) -> Any | None:
        return self.get_state_json(self._settings.artifacts_store, key)

    def get_json_many(self, keys: Sequence[str]) -> dict[str, Any | None]:
        # One GetBulkState: the sidecar reads the keys side by side, instead of one round trip per key.
        unique = list(dict.fromkeys(keys))
        values: dict[str, Any | None] = {}
        for start in range(0, len(unique), BULK_GET_KEYS):
            values |= self._get_bulk(unique[start : start + BULK_GET_KEYS])
        return {key: values.get(key) for key in keys}

    def _get_bulk(self, keys: list[str]) -> dict[str, Any | None]:
        """One GetBulkState; an answer too big for one gRPC message (large entries) is asked for again in halves."""
        try:
            response = self._call(
                "get bulk state",
                self._client.get_bulk_state,
                self._settings.artifacts_store,
                keys,
                parallelism=BULK_GET_PARALLELISM,
            )
        except TransientInfrastructureError as exc:
            cause = exc.__cause__
            if (
                len(keys) > 1
                and isinstance(cause, grpc.RpcError)
                and cause.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            ):
                half = len(keys) // 2
                return self._get_bulk(keys[:half]) | self._get_bulk(keys[half:])
            raise
        values: dict[str, Any | None] = {}
        for item in response.items:
            if item.error:  # that key's read failed in the store: retried as a whole, as a failed get is
                raise TransientInfrastructureError(f"state store read of {item.key!r} failed: {item.error}")
            values[item.key] = orjson.loads(item.data) if item.data else None
        return values

    def save_json(self, key: str, value: Any, *, ttl_seconds: int | None = None) -> None:
        # Run-scoped entries expire with the claim-check chunks unless the caller asks for NO_TTL.
        ttl = self._settings.artifact_ttl_seconds if ttl_seconds is None else ttl_seconds
        self.save_state_json(self._settings.artifacts_store, key, value, ttl_seconds=ttl)

    def delete_json(self, key: str) -> None:
        self.delete_state(self._settings.artifacts_store, key)

    def update_json(self, key: str, mutate: Callable[[Any | None], Any], *, run_scoped: bool = False) -> Any:
        """Read-modify-write of one artifacts entry under optimistic concurrency (ETag, first-write-wins).

        ``run_scoped``: the entry expires with the run's claim-check chunks; otherwise it stays (an index)."""
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
                    state_metadata=self._ttl(self._settings.artifact_ttl_seconds) if run_scoped else {},
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
        data, metadata = binding_payload(content, path)  # raw bytes wherever the binding stores them exactly
        retry_storage(
            binding,
            path,
            lambda: self._client.invoke_binding(binding, "create", data, binding_metadata=metadata),
        )

    def read_object(self, binding: str, path: str) -> bytes:
        # localstorage names the object `fileName`, aws.s3 `key`: give both, as writes do.
        metadata = {"fileName": path, "key": path}
        response = retry_storage(
            binding, path, lambda: self._client.invoke_binding(binding, "get", b"", binding_metadata=metadata)
        )
        data: bytes = response.data
        return data
