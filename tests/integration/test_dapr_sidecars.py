"""DaprPlatform through real daprd sidecars: claim-check, pub/sub, encrypted credentials, object store."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import cast

import grpc
import pytest
import redis
from pydantic import SecretStr

from pgmeta_devstack.stack import LocalStack
from pgmeta_shared import platform as platform_module
from pgmeta_shared.events import ExtractionProgress, PublishCompleted, Stage, TopicName
from pgmeta_shared.keys import ArtifactStage
from pgmeta_shared.platform import DaprPlatform
from pgmeta_shared.settings import DaprSettings

from .objectstore_cases import OBJECT_CASES

pytestmark = pytest.mark.integration


def platform_of(stack: LocalStack, service: str) -> DaprPlatform:
    layout = stack.layout
    return DaprPlatform(
        DaprSettings(
            dapr_grpc_port=layout.dapr_grpc_port(service),
            dapr_http_port=layout.dapr_http_port(service),
            dapr_api_token=SecretStr(stack.dapr_api_token()),
        )
    )


@pytest.fixture(scope="module")
def orchestrator(sidecars: LocalStack) -> Iterator[DaprPlatform]:
    platform = platform_of(sidecars, "orchestrator")
    yield platform
    platform.close()


@pytest.fixture(scope="module")
def publisher(sidecars: LocalStack) -> Iterator[DaprPlatform]:
    platform = platform_of(sidecars, "publisher")
    yield platform
    platform.close()


@pytest.fixture(scope="module")
def raw_redis(sidecars: LocalStack) -> redis.Redis:
    return redis.Redis(port=sidecars.layout.redis_port)


def test_claim_check_chunks_cross_apps(orchestrator: DaprPlatform, publisher: DaprPlatform) -> None:
    records = [{"kind": "column", "name": f"c{i}", "comment": "ü" * 50} for i in range(3000)]
    orchestrator.save_chunk("it-run", ArtifactStage.EXTRACT, "db000", 0, records)
    # The artifacts store has no per-app key prefix: another app reads what one wrote.
    assert publisher.load_chunk("it-run", ArtifactStage.EXTRACT, "db000", 0) == records


def test_json_state_round_trip(orchestrator: DaprPlatform) -> None:
    orchestrator.save_json("it-run/result", {"chunks": 2, "counts": {"Column": 5}}, ttl_seconds=60)
    assert orchestrator.get_json("it-run/result") == {"chunks": 2, "counts": {"Column": 5}}
    assert orchestrator.get_json("it-run/absent") is None


def test_json_state_read_in_bulk(orchestrator: DaprPlatform, monkeypatch: pytest.MonkeyPatch) -> None:
    """One GetBulkState per ``BULK_GET_KEYS`` keys: each key's value, None where nothing is stored, in the
    order first asked."""
    monkeypatch.setattr(platform_module, "BULK_GET_KEYS", 2)  # several batches from a few keys
    for n in range(3):
        orchestrator.save_json(f"it-bulk/{n}", {"n": n}, ttl_seconds=60)
    keys = ["it-bulk/2", "it-bulk/absent", "it-bulk/0", "it-bulk/1", "it-bulk/2"]
    assert orchestrator.get_json_many(keys) == {
        "it-bulk/2": {"n": 2},
        "it-bulk/absent": None,
        "it-bulk/0": {"n": 0},
        "it-bulk/1": {"n": 1},
    }
    assert list(orchestrator.get_json_many(keys)) == list(dict.fromkeys(keys))
    assert orchestrator.get_json_many([]) == {}


def test_published_events_reach_the_redis_stream(publisher: DaprPlatform, raw_redis: redis.Redis) -> None:
    event = ExtractionProgress(run_id="it-run", stage=Stage.EXTRACT, done=3, total=9)
    publisher.publish(TopicName.EXTRACTION_PROGRESS, event)
    # redis-py types every reply for decoded and raw clients alike; this client is raw (no decode_responses).
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], raw_redis.xrange(TopicName.EXTRACTION_PROGRESS.value))
    cloud_events = [json.loads(fields[b"data"]) for _, fields in entries]
    assert any(ce["data"] == event.model_dump(mode="json") for ce in cloud_events)


def test_credentials_are_encrypted_at_rest(orchestrator: DaprPlatform, raw_redis: redis.Redis) -> None:
    password = "correct horse battery staple"
    orchestrator.save_state_json("credentials", "cred/it-run", {"password": password}, ttl_seconds=60)
    # redis-py types every reply for decoded and raw clients alike; this client is raw (no decode_responses).
    raw = cast(dict[bytes, bytes], raw_redis.hgetall("credentials||cred/it-run"))
    assert raw, "the entry should be in Redis under the store's own key prefix"
    assert not raw_redis.exists("cred/it-run")
    assert password.encode() not in b"".join(raw.values())
    assert orchestrator.get_state_json("credentials", "cred/it-run") == {"password": password}
    orchestrator.delete_state("credentials", "cred/it-run")
    assert orchestrator.get_state_json("credentials", "cred/it-run") is None


@pytest.mark.parametrize("content", OBJECT_CASES)
def test_object_store_writes_exact_bytes(sidecars: LocalStack, publisher: DaprPlatform, content: bytes) -> None:
    path = f"default/postgres/1/it-run/{hashlib.sha256(content).hexdigest()[:16]}.bin"
    publisher.write_object("objectstore", path, content)
    assert (sidecars.layout.objects / path).read_bytes() == content


def test_an_app_may_publish_only_its_own_topics(orchestrator: DaprPlatform, raw_redis: redis.Redis) -> None:
    """Pub/sub publishingScopes: only the publisher announces publish.completed (a forged one is refused)."""
    forged = PublishCompleted(run_id="victim", location="forged/", file_count=0, counts={})
    with pytest.raises(grpc.RpcError) as refused:
        orchestrator.publish(TopicName.PUBLISH_COMPLETED, forged)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # redis-py types every reply for decoded and raw clients alike; this client is raw (no decode_responses).
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], raw_redis.xrange(TopicName.PUBLISH_COMPLETED.value))
    assert not any(b"forged/" in fields[b"data"] for _, fields in entries)
