"""Stage logic with an in-memory platform: claim-check hand-over, idempotency, failure reporting."""

import json

import pytest

from pgmeta_extractor.extraction import resolve_secret
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
    UnitChunks,
    nothing_to_transform,
)
from pgmeta_shared.keys import ArtifactStage, scope_id
from pgmeta_shared.outputfiles import decode
from pgmeta_shared.stages import stage_handler
from pgmeta_transformer.transformation import transform

from ..fakes import InMemoryPlatform
from .records import CONNECTION_QN, sample_catalog

UNITS = [UnitChunks(unit="db000", chunk_count=2)]


def transform_command(run_id: str = "r1", chunk_count: int = 2) -> TransformRequested:
    return TransformRequested(
        run_id=run_id, connection_qualified_name=CONNECTION_QN, unit="db000", chunk_count=chunk_count
    )


def publish_command(run_id: str = "r1") -> PublishRequested:
    return PublishRequested(run_id=run_id, connection_qualified_name=CONNECTION_QN, units=UNITS, counts={})


def transformed_platform(run_id: str = "r1") -> InMemoryPlatform:
    platform = InMemoryPlatform()
    catalog = sample_catalog()
    platform.save_chunk(run_id, ArtifactStage.EXTRACT, "db000", 0, catalog[:5])
    platform.save_chunk(run_id, ArtifactStage.EXTRACT, "db000", 1, catalog[5:])
    transform(transform_command(run_id), platform)
    return platform


def test_transform_maps_every_chunk_and_counts_types() -> None:
    platform = InMemoryPlatform()
    platform.save_chunk("r1", ArtifactStage.EXTRACT, "db000", 0, sample_catalog())
    completed = transform(transform_command(chunk_count=1), platform)
    assert completed.counts == {
        "Connection": 1,
        "Database": 1,
        "Schema": 1,
        "Table": 3,
        "TablePartition": 1,
        "View": 1,
        "MaterialisedView": 1,
        "Column": 7,
        "Procedure": 3,
        "Process": 1,
        "extra:constraint": 1,
        "extra:index": 1,
    }
    assert completed.unit == "db000" and completed.problems == 0
    parts = platform.load_parts("r1", ArtifactStage.TRANSFORM, "db000", 0)
    lines = sum(blob.count(b"\n") for name, blob in parts.items() if name != "fingerprints")
    assert lines == sum(completed.counts.values())
    fingerprints = platform.load_chunk("r1", ArtifactStage.FINGERPRINT, "db000", 0)
    assert len(fingerprints) == sum(v for k, v in completed.counts.items() if ":" not in k)


def test_transform_redelivery_finds_the_recorded_result() -> None:
    platform = transformed_platform()
    platform.chunks.clear()  # a second run of the work would now fail: it must not happen
    assert transform(transform_command(), platform).chunk_count == 2


def test_transform_records_unmappable_records_in_the_report() -> None:
    platform = InMemoryPlatform()
    platform.save_chunk(
        "r1", ArtifactStage.EXTRACT, "db000", 0, [*sample_catalog(), {"kind": "mystery", "database_name": "shop"}]
    )
    completed = transform(transform_command(chunk_count=1), platform)
    assert completed.problems == 1
    assert platform.stored_json("r1/report/transform/db000")[0]["object"] == "mystery shop"


def test_nothing_to_transform_is_what_the_transformer_answers_for_a_unit_without_chunks() -> None:
    """Workflow v3 sends no command for such a unit and takes this result instead: it must be the same."""
    answered = transform(transform_command(chunk_count=0), InMemoryPlatform())
    assert nothing_to_transform("r1", "db000") == answered


def test_publish_copes_with_a_unit_that_was_never_sent_to_the_transformer() -> None:
    """A unit with 0 chunks has no transform result, report, marker or parts (workflow v3 skips it)."""
    platform = transformed_platform()
    never_transformed = UnitChunks(unit="db001", chunk_count=0)
    command = PublishRequested(
        run_id="r1", connection_qualified_name=CONNECTION_QN, units=[*UNITS, never_transformed], counts={}
    )
    stored = [key for _, key in platform.state] + list(platform.chunks)
    assert not [key for key in stored if "db001" in key]
    completed = publish(command, platform)
    alone = publish(publish_command("r2"), transformed_platform("r2"))
    assert completed.counts == alone.counts and completed.problems == alone.problems == 0
    report = json.loads(platform.objects[("objectstore", f"{CONNECTION_QN}/r1/report.json")])
    assert report["problems"] == []


def test_publish_writes_jsonl_per_type_extras_report_and_manifest_last() -> None:
    platform = transformed_platform()
    completed = publish(publish_command(), platform)
    paths = [path for _, path in platform.objects]
    assert paths[-1] == f"{CONNECTION_QN}/r1/manifest.json"
    manifest = json.loads(platform.objects[("objectstore", paths[-1])])
    assert manifest["counts"] == completed.counts
    entity_files = [f for f in manifest["files"] if "type" in f]
    assert sum(f["entities"] for f in entity_files) == sum(completed.counts.values())
    for entry in entity_files:
        stored = platform.objects[("objectstore", f"{CONNECTION_QN}/r1/{entry['name']}")]
        assert entry["encoding"] == "zstd" and entry["name"].endswith(".jsonl.zst")
        lines = decode(entry["name"], stored).splitlines()
        assert len(lines) == entry["entities"]
        assert {json.loads(line)["typeName"] for line in lines} == {entry["type"]}
    extras = {(f["name"], f["schema"]) for f in manifest["files"] if "extra" in f}
    sales = scope_id("sales")  # files are per schema, named by a token of the schema's name
    assert extras == {
        (f"extras/constraint-db000-00001-{sales}.jsonl.zst", "sales"),
        (f"extras/index-db000-00001-{sales}.jsonl.zst", "sales"),
    }
    assert f"{CONNECTION_QN}/r1/report.json" in paths


def test_publish_redelivery_writes_nothing_twice() -> None:
    platform = transformed_platform()
    first = publish(publish_command(), platform)
    writes = platform.object_writes
    assert publish(publish_command(), platform) == first
    assert platform.object_writes == writes


def test_missing_chunk_fails_the_stage_with_a_stage_failed_event() -> None:
    platform = InMemoryPlatform()
    handler = stage_handler(platform, Stage.TRANSFORM, transform, TopicName.TRANSFORM_COMPLETED)
    handler(transform_command("r9", 1))
    [(topic, event)] = platform.published
    assert topic == TopicName.STAGE_FAILED
    assert isinstance(event, StageFailed)
    assert event.error_code == "artifact_missing" and "r9/extract/db000/000000" in event.error
    assert event.unit == "db000"
    assert platform.stored_json("r9/transform/db000/failed")["error_code"] == "artifact_missing"


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
        selection={"database": "shop", "unit": "db000"},  # type: ignore[arg-type]
    )
    stage_handler(platform, Stage.EXTRACT, unreachable, TopicName.EXTRACT_COMPLETED)(command)
    assert platform.topics() == [TopicName.STAGE_FAILED]
    with pytest.raises(TransientInfrastructureError):
        stage_handler(platform, Stage.EXTRACT, flaky, TopicName.EXTRACT_COMPLETED)(command)


def test_credentials_come_from_the_referenced_secret_or_state_entry() -> None:
    platform = InMemoryPlatform(secrets={"secretstore": {"demo": {"password": "s3cret"}}})
    assert resolve_secret(platform, CredentialRef(kind="secret", store="secretstore", key="demo"), run_id="r1") == {
        "password": "s3cret"
    }
    platform.save_state_json("credentials", "cred/r1", {"password": "other"})
    assert resolve_secret(platform, CredentialRef(kind="state", store="credentials", key="cred/r1"), run_id="r1") == {
        "password": "other"
    }
    with pytest.raises(CredentialsNotFoundError, match="cred/r2"):
        resolve_secret(platform, CredentialRef(kind="state", store="credentials", key="cred/r2"), run_id="r2")
    with pytest.raises(CredentialsNotFoundError, match="nope"):
        resolve_secret(platform, CredentialRef(kind="secret", store="secretstore", key="nope"), run_id="r1")


def test_unexpected_errors_fail_the_run_instead_of_looping() -> None:
    platform = InMemoryPlatform()
    handler = stage_handler(platform, Stage.TRANSFORM, exploding, TopicName.TRANSFORM_COMPLETED)
    handler(transform_command("r3", 1))
    [(topic, event)] = platform.published
    assert topic == TopicName.STAGE_FAILED
    assert isinstance(event, StageFailed)
    assert event.error_code == "internal_error" and "ZeroDivisionError" in event.error


def exploding(command: TransformRequested, platform: object) -> ExtractCompleted:
    raise ZeroDivisionError("a bug")


def test_chunks_done_early_are_not_done_again_and_a_retried_extraction_is_kept_apart() -> None:
    from pgmeta_publisher.publishing import publish_early
    from pgmeta_shared.events import ChunkReady
    from pgmeta_transformer.transformation import transform_early

    platform = InMemoryPlatform()
    catalog = sample_catalog()
    platform.save_chunk("r1", ArtifactStage.EXTRACT, "db000", 0, catalog[:5])
    platform.save_chunk("r1", ArtifactStage.EXTRACT, "db000-g2", 0, catalog)  # the second attempt's chunk 0 differs
    ready = ChunkReady(run_id="r1", unit="db000", index=0, connection_qualified_name=CONNECTION_QN)
    transform_early(ready, platform)
    publish_early(ready, platform)
    writes = platform.object_writes
    retried = TransformRequested(
        run_id="r1", connection_qualified_name=CONNECTION_QN, unit="db000", chunk_count=1, generation=2
    )
    completed = transform(retried, platform)
    assert completed.counts["Column"] == 7, "the second attempt's chunk, not the early-transformed first one"
    command = PublishRequested(
        run_id="r1",
        connection_qualified_name=CONNECTION_QN,
        units=[UnitChunks(unit="db000", chunk_count=1, generation=2)],
        counts={},
    )
    published = publish(command, platform)
    assert published.counts["Column"] == 7
    assert platform.object_writes > writes
    again = InMemoryPlatform()
    again.save_chunk("r2", ArtifactStage.EXTRACT, "db000", 0, catalog)
    transform_early(ChunkReady(run_id="r2", unit="db000", index=0, connection_qualified_name=CONNECTION_QN), again)
    again.chunks = {k: v for k, v in again.chunks.items() if not k.startswith("r2/extract/")}
    assert transform(transform_command("r2", 1), again).counts["Column"] == 7, "done early: no second read"
