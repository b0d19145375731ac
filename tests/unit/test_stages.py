"""Stage logic with an in-memory platform: claim-check hand-over, idempotency, failure reporting."""

import json

import pytest

from pgmeta_extractor.extraction import resolve_password
from pgmeta_publisher.publishing import publish
from pgmeta_shared.errors import CredentialsNotFoundError, SourceUnreachableError, TransientInfrastructureError
from pgmeta_shared.events import (
    CredentialRef,
    ExtractCompleted,
    ExtractRequested,
    PublishRequested,
    Stage,
    StageFailed,
    TopicName,
    TransformRequested,
)
from pgmeta_shared.stages import stage_handler
from pgmeta_transformer.transformation import transform

from ..fakes import InMemoryPlatform
from .records import CONNECTION_QN, sample_catalog


def transformed_platform(run_id: str = "r1") -> InMemoryPlatform:
    platform = InMemoryPlatform()
    catalog = sample_catalog()
    platform.save_chunk(run_id, "extract", 0, catalog[:5])
    platform.save_chunk(run_id, "extract", 1, catalog[5:])
    transform(TransformRequested(run_id=run_id, connection_qualified_name=CONNECTION_QN, chunk_count=2), platform)
    return platform


def test_transform_maps_every_chunk_and_counts_types() -> None:
    platform = InMemoryPlatform()
    platform.save_chunk("r1", "extract", 0, sample_catalog())
    completed = transform(
        TransformRequested(run_id="r1", connection_qualified_name=CONNECTION_QN, chunk_count=1), platform
    )
    assert completed.counts == {
        "Connection": 1, "Database": 1, "Schema": 1, "Table": 2, "TablePartition": 1, "View": 1,
        "MaterialisedView": 1, "Column": 5,
    }  # fmt: skip
    assert len(platform.load_chunk("r1", "transform", 0)) == sum(completed.counts.values())


def test_transform_redelivery_finds_the_recorded_result() -> None:
    platform = transformed_platform()
    platform.chunks.clear()  # a second run of the work would now fail: it must not happen
    again = transform(TransformRequested(run_id="r1", connection_qualified_name=CONNECTION_QN, chunk_count=2), platform)
    assert again.chunk_count == 2


def test_publish_writes_jsonl_per_type_and_manifest_last() -> None:
    platform = transformed_platform()
    request = PublishRequested(run_id="r1", connection_qualified_name=CONNECTION_QN, chunk_count=2, counts={})
    completed = publish(request, platform)
    paths = [path for _, path in platform.objects]
    assert paths[-1] == f"{CONNECTION_QN}/r1/manifest.json"
    manifest = json.loads(platform.objects[("objectstore", paths[-1])])
    assert manifest["counts"] == completed.counts
    assert sum(f["entities"] for f in manifest["files"]) == sum(completed.counts.values())
    for entry in manifest["files"]:
        lines = platform.objects[("objectstore", f"{CONNECTION_QN}/r1/{entry['name']}")].splitlines()
        assert len(lines) == entry["entities"]
        assert {json.loads(line)["typeName"] for line in lines} == {entry["type"]}


def test_publish_redelivery_writes_nothing_twice() -> None:
    platform = transformed_platform()
    request = PublishRequested(run_id="r1", connection_qualified_name=CONNECTION_QN, chunk_count=2, counts={})
    first = publish(request, platform)
    writes = platform.object_writes
    assert publish(request, platform) == first
    assert platform.object_writes == writes


def test_missing_chunk_fails_the_stage_with_a_stage_failed_event() -> None:
    platform = InMemoryPlatform()
    handler = stage_handler(platform, Stage.TRANSFORM, transform, TopicName.TRANSFORM_COMPLETED)
    handler(TransformRequested(run_id="r9", connection_qualified_name=CONNECTION_QN, chunk_count=1))
    [(topic, event)] = platform.published
    assert topic == TopicName.STAGE_FAILED
    assert isinstance(event, StageFailed)
    assert event.error_code == "artifact_missing" and "r9/extract/000000" in event.error


def test_permanent_errors_are_reported_and_transient_ones_propagate() -> None:
    platform = InMemoryPlatform()

    def unreachable(command: ExtractRequested, _: object) -> ExtractCompleted:
        raise SourceUnreachableError("cannot connect to PostgreSQL at db:5432: refused")

    def flaky(command: ExtractRequested, _: object) -> ExtractCompleted:
        raise TransientInfrastructureError("sidecar restarting")

    command = ExtractRequested(
        run_id="r2",
        source={"host": "db", "username": "u"},  # type: ignore[arg-type]
        credentials=CredentialRef(kind="secret", store="secretstore", key="k"),
        connection_qualified_name=CONNECTION_QN,
    )
    stage_handler(platform, Stage.EXTRACT, unreachable, TopicName.EXTRACT_COMPLETED)(command)
    assert platform.topics() == [TopicName.STAGE_FAILED]
    with pytest.raises(TransientInfrastructureError):
        stage_handler(platform, Stage.EXTRACT, flaky, TopicName.EXTRACT_COMPLETED)(command)


def test_password_comes_from_the_referenced_secret_or_state_entry() -> None:
    platform = InMemoryPlatform(secrets={"secretstore": {"demo": {"password": "s3cret"}}})
    assert resolve_password(platform, CredentialRef(kind="secret", store="secretstore", key="demo")) == "s3cret"
    platform.save_state_json("credentials", "cred/r1", {"password": "other"})
    assert resolve_password(platform, CredentialRef(kind="state", store="credentials", key="cred/r1")) == "other"
    with pytest.raises(CredentialsNotFoundError, match="cred/r2"):
        resolve_password(platform, CredentialRef(kind="state", store="credentials", key="cred/r2"))
    with pytest.raises(CredentialsNotFoundError, match="nope"):
        resolve_password(platform, CredentialRef(kind="secret", store="secretstore", key="nope"))


def test_unexpected_errors_fail_the_run_instead_of_looping() -> None:
    platform = InMemoryPlatform()
    platform.save_chunk("r3", "extract", 0, [{"kind": "mystery"}])
    handler = stage_handler(platform, Stage.TRANSFORM, transform, TopicName.TRANSFORM_COMPLETED)
    handler(TransformRequested(run_id="r3", connection_qualified_name=CONNECTION_QN, chunk_count=1))
    [(topic, event)] = platform.published
    assert topic == TopicName.STAGE_FAILED
    assert isinstance(event, StageFailed)
    assert event.error_code == "internal_error" and "unknown catalog record kind 'mystery'" in event.error
