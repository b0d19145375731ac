"""Incremental runs: created / updated / unchanged / deleted against the last successful run of a connection."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pgmeta_publisher.incremental import Scope, ScopePartWriter, bucket_of
from pgmeta_publisher.publishing import _advance_snapshot, publish, publish_early
from pgmeta_shared.events import ChunkReady, FilterSpec, PublishRequested, Stage, TransformRequested, UnitChunks
from pgmeta_shared.fingerprints import Fingerprint, FingerprintIndex, buckets_for, folded_part_keys
from pgmeta_shared.keys import (
    ArtifactStage,
    extract_scopes_key,
    fingerprint_part_key,
    fingerprint_parts_key,
    run_fence_key,
    snapshot_key,
    stage_result_key,
)
from pgmeta_shared.outputfiles import decode
from pgmeta_shared.scopes import ScopePlan
from pgmeta_transformer.transformation import transform

from ..fakes import InMemoryPlatform
from .records import CONNECTION_QN, column, relation, sample_catalog


def run(
    platform: InMemoryPlatform,
    run_id: str,
    records: list[dict[str, Any]],
    filters: FilterSpec | None = None,
    sink: Any = None,
) -> dict[str, Any]:
    """Transforms and publishes ``records`` as one run; returns its manifest and change lines."""
    platform.save_chunk(run_id, ArtifactStage.EXTRACT, "db000", 0, records)
    transform(
        TransformRequested(run_id=run_id, connection_qualified_name=CONNECTION_QN, unit="db000", chunk_count=1),
        platform,
    )
    command = PublishRequested(
        run_id=run_id,
        connection_qualified_name=CONNECTION_QN,
        units=[UnitChunks(unit="db000", chunk_count=1)],
        counts={},
        filters=filters or FilterSpec(),
    )
    publish(command, platform, sink)
    prefix = f"{CONNECTION_QN}/{run_id}"
    manifest = json.loads(platform.objects[("objectstore", f"{prefix}/manifest.json")])

    def lines(stem: str) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for (_, path), blob in sorted(platform.objects.items())
            if path.startswith(f"{prefix}/{stem}-")
            for line in decode(path, blob).splitlines()
        ]

    change_lines = lines("changes")
    changes = {
        line["qualifiedName"].removeprefix(f"{CONNECTION_QN}/shop/"): line["change"]
        for line in change_lines
        if "qualifiedName" in line
    }
    # Unchanged entities are counted per (database, schema, type), not listed.
    summary = [line for line in change_lines if "qualifiedName" not in line]
    assert all(line["change"] == "unchanged" for line in summary)
    assert len({(line["database"], line["schema"], line["typeName"]) for line in summary}) == len(summary)
    deleted = sorted(line["qualifiedName"].removeprefix(f"{CONNECTION_QN}/shop/") for line in lines("deleted"))
    unchanged = sum(line["count"] for line in summary)
    return {"manifest": manifest, "changes": changes, "unchanged": unchanged, "deleted": deleted}


def test_first_run_creates_everything() -> None:
    result = run(InMemoryPlatform(), "r1", sample_catalog())
    assert set(result["changes"].values()) == {"created"} and result["unchanged"] == 0
    assert result["deleted"] == []
    assert result["manifest"]["previous_run_id"] is None
    assert result["manifest"]["changes"]["created"] == sum(result["manifest"]["counts"].values())


def test_added_altered_dropped_table() -> None:
    platform = InMemoryPlatform()
    run(platform, "r1", sample_catalog())
    second = [r for r in sample_catalog() if r.get("relation_name") != "remote_rates"]  # dropped
    second.append(relation("sales", "refunds", "r"))  # added
    second.append(column("sales", "refunds", "refund_id"))
    for record in second:  # altered: a column changes type
        if record["kind"] == "column" and record["column_name"] == "name":
            record["data_type"] = "text"
    result = run(platform, "r2", second)
    created = sorted(qn for qn, kind in result["changes"].items() if kind == "created")
    updated = sorted(qn for qn, kind in result["changes"].items() if kind == "updated")
    assert created == ["sales/refunds", "sales/refunds/refund_id"]
    assert updated == ["sales/customers/name"]
    assert result["deleted"] == ["sales/remote_rates", "sales/remote_rates/rate"]
    assert result["manifest"]["previous_run_id"] == "r1"
    assert result["manifest"]["changes"] == {
        "created": 2,
        "updated": 1,
        "deleted": 2,
        "unchanged": result["unchanged"],
    }
    assert result["unchanged"] == sum(result["manifest"]["counts"].values()) - 3


def test_unchanged_catalog_changes_nothing_and_old_fingerprints_are_dropped() -> None:
    platform = InMemoryPlatform()
    run(platform, "r1", sample_catalog())
    result = run(platform, "r2", sample_catalog())
    assert result["changes"] == {} and result["deleted"] == []
    assert (
        result["unchanged"] == sum(result["manifest"]["counts"].values()) == result["manifest"]["changes"]["unchanged"]
    )
    assert not any(key.startswith("r1/fp") for _, key in platform.state), "the superseded baseline is removed"


def test_a_failed_run_is_not_a_baseline() -> None:
    platform = InMemoryPlatform()
    run(platform, "r1", sample_catalog())
    # r2 extracted and transformed but never published (failed): no snapshot moves.
    platform.save_chunk("r2", ArtifactStage.EXTRACT, "db000", 0, sample_catalog()[:3])
    transform(
        TransformRequested(run_id="r2", connection_qualified_name=CONNECTION_QN, unit="db000", chunk_count=1), platform
    )
    result = run(platform, "r3", sample_catalog())
    assert result["manifest"]["previous_run_id"] == "r1"
    assert result["changes"] == {} and result["unchanged"] == sum(result["manifest"]["counts"].values())


def test_filtered_out_is_not_deleted() -> None:
    platform = InMemoryPlatform()
    run(platform, "r1", sample_catalog())
    only_orders = [r for r in sample_catalog() if r.get("relation_name") in {None, "orders", "orders_2025"}]
    only_orders = [r for r in only_orders if r["kind"] not in {"routine", "lineage"}]
    filters = FilterSpec(
        include={"shop": ["sales"]}, temp_table_regex="(remote|customers|v|mv)_?.*", exclude_views=True
    )
    result = run(platform, "r2", only_orders, filters)
    assert result["deleted"] == [
        f"sales/_procedures_/{name}" for name in ("archive()", "total(integer)", "total(text)")
    ]


def test_scope_follows_the_filters() -> None:
    def fp(
        database: str | None, schema: str | None, relation: str | None = None, kind: str | None = None
    ) -> Fingerprint:
        return Fingerprint("qn", "Column", "h", database, schema, relation, kind)

    everything = Scope(FilterSpec(), None)
    assert everything.selects(fp(None, None)) and everything.selects(fp("shop", "sales", "t", "Table"))
    one_db = Scope(FilterSpec(), "shop")
    assert one_db.selects(fp("shop", "x")) and not one_db.selects(fp("crm", "x"))
    filtered = Scope(FilterSpec(include={"shop|crm": ["sales", "app_.*"]}, exclude={"crm": "*"}), None)
    assert filtered.selects(fp("shop", "app_users")) and not filtered.selects(fp("shop", "audit"))
    assert not filtered.selects(fp("crm", "sales")) and not filtered.selects(fp("shopping", "sales"))
    views_out = Scope(FilterSpec(exclude_views=True, temp_table_regex=".*_tmp"), None)
    assert not views_out.selects(fp("shop", "s", "v", "View")) and not views_out.selects(
        fp("shop", "s", "x_tmp", "Table")
    )
    assert not Scope(FilterSpec(exclude_empty_tables=True), None).selects(fp("shop", "s", "t", "TablePartition"))


def test_buckets_are_stable_and_spread_and_nest() -> None:
    names = [f"{CONNECTION_QN}/shop/s/t{i}/c" for i in range(5000)]
    buckets = [bucket_of(name, 8) for name in names]
    assert buckets == [bucket_of(name, 8) for name in names]
    assert len(set(buckets)) == 8
    assert max(buckets.count(b) for b in range(8)) < 2 * len(names) / 8
    # A bucket of 16 lies within one bucket of 8: scopes stored with different bucket counts compare.
    assert all(bucket_of(name, 16) % 8 == bucket_of(name, 8) for name in names)
    assert [buckets_for(n) for n in (0, 20_000, 20_001, 100_000, 10**9)] == [1, 1, 2, 8, 256]


def test_a_large_scope_is_bucketed_and_compares_with_a_smaller_bucket_count(monkeypatch: Any) -> None:
    """A scope that grows past the bucket size is stored in more buckets than its baseline: still compared."""
    from pgmeta_shared import fingerprints

    platform = InMemoryPlatform()
    run(platform, "r1", sample_catalog())
    monkeypatch.setattr(fingerprints, "BUCKET_ENTITIES", 4)  # the sample's schema: ~20 entities, so 8 buckets
    changed = sample_catalog()
    for record in changed:
        if record["kind"] == "column" and record["column_name"] == "name":
            record["data_type"] = "text"
    result = run_planned(platform, "r2", changed, ["sales"], [])
    owners = FingerprintIndex.from_json(platform.stored_json(fingerprint_parts_key("r2"))).by_scope()
    assert len(owners[("shop", "sales")].parts) == 8
    assert result["changes"] == {"sales/customers/name": "updated"} and result["deleted"] == []
    assert result["unchanged"] == sum(result["manifest"]["counts"].values()) - 1


class RecordingSink:
    def __init__(self) -> None:
        self.upserts: list[list[str]] = []
        self.archived: list[tuple[str, str]] = []

    def upsert(self, entities: Any) -> list[Any]:
        self.upserts.append([e["typeName"] for e in entities])
        return []

    def archive(self, references: Any) -> list[Any]:
        self.archived += list(references)
        return []


def test_the_sink_gets_only_changes_connection_first_and_archives_deletions() -> None:
    platform = InMemoryPlatform()
    sink = RecordingSink()

    run(platform, "r1", sample_catalog(), sink=sink)
    assert sink.upserts[0] == ["Connection"]
    assert sum(len(batch) for batch in sink.upserts) == len(
        [r for r in sample_catalog() if r["kind"] not in {"constraint", "index"}]
    )
    sink.upserts.clear()
    second = [r for r in sample_catalog() if r.get("relation_name") != "remote_rates"]
    run(platform, "r2", second, sink=sink)
    assert sink.upserts == [], "nothing created or updated: nothing sent"
    assert sorted(sink.archived) == [
        ("Column", f"{CONNECTION_QN}/shop/sales/remote_rates/rate"),
        ("Table", f"{CONNECTION_QN}/shop/sales/remote_rates"),
    ]


def test_a_catastrophic_regex_is_answered_in_linear_time() -> None:
    """ReDoS: ``(a+)+$`` against 'aaa…b' backtracks for minutes in Python's re; the publisher must not."""
    import time

    scope = Scope(FilterSpec(temp_table_regex="(a+)+c", include={"(x+x+)+y": "*", "shop": ["(a|aa)+c"]}), None)
    evil = "a" * 40 + "b"
    started = time.perf_counter()
    assert scope.selects(Fingerprint("qn", "Column", "h", "shop", evil, evil, "Table")) is False
    assert scope.selects(Fingerprint("qn", "Column", "h", "x" * 40, "s", "t", "Table")) is False
    assert time.perf_counter() - started < 1.0


# -- schemas carried over unread: their files and fingerprints are referred to, not copied -----------------------


def two_schemas() -> list[dict[str, Any]]:
    """The sample catalog with a second schema, ``crm``, shaped like ``sales``."""
    records = sample_catalog()
    return records + [{**r, "schema_name": "crm"} for r in records if r.get("schema_name") == "sales"]


def run_planned(
    platform: InMemoryPlatform, run_id: str, records: list[dict[str, Any]], read: list[str], carried: list[str]
) -> dict[str, Any]:
    """A run whose extractor read the schemas ``read`` (their records are given) and carried ``carried`` over."""
    plan = ScopePlan(
        database="shop",
        unit="db000",
        fingerprints=dict.fromkeys(read + carried, "unchanged-fingerprint"),
        extracted=read,
        carried=carried,
        baseline_run_id=(platform.get_json(snapshot_key(CONNECTION_QN)) or {}).get("run_id"),
        reason="test",
    )
    platform.save_json(extract_scopes_key(run_id, "db000"), plan.model_dump(mode="json"))
    selected = [r for r in records if r.get("schema_name") in (None, *read)]
    return run(platform, run_id, selected)


def fingerprint_scopes(platform: InMemoryPlatform, run_id: str) -> dict[Any, str]:
    index = FingerprintIndex.from_json(platform.stored_json(fingerprint_parts_key(run_id)))
    return {scope.scope: scope.owner for scope in index.scopes}


def test_carried_schemas_are_referred_to_and_counted_unchanged() -> None:
    platform = InMemoryPlatform()
    first = run_planned(platform, "r1", two_schemas(), ["sales", "crm"], [])
    second = run_planned(platform, "r2", two_schemas(), ["sales"], ["crm"])
    assert second["manifest"]["counts"] == first["manifest"]["counts"]
    assert second["changes"] == {} and second["deleted"] == []
    assert second["unchanged"] == sum(first["manifest"]["counts"].values())
    crm_files = [f for f in second["manifest"]["files"] if f.get("schema") == "crm"]
    assert crm_files and all(f["folder"] == f"{CONNECTION_QN}/r1" for f in crm_files)
    assert not any(path.startswith(f"{CONNECTION_QN}/r2/") and "crm" in path for _, path in platform.objects), (
        "nothing copied"
    )
    assert all(("objectstore", f"{f['folder']}/{f['name']}") in platform.objects for f in crm_files)
    # r2's fingerprints: crm's are r1's parts (kept when r1 was superseded), sales' its own (r1's are gone).
    owners = fingerprint_scopes(platform, "r2")
    assert owners[("shop", "crm")] == "r1" and owners[("shop", "sales")] == "r2"
    assert any(key.startswith("r1/fps/") for _, key in platform.state)
    assert platform.get_json(fingerprint_parts_key("r1")) is None

    # r3 reads crm again (one column changed) and carries sales from r2, whose file list names r2's folder.
    changed = two_schemas()
    for record in changed:
        if record.get("schema_name") == "crm" and record.get("column_name") == "name":
            record["data_type"] = "text"
    third = run_planned(platform, "r3", changed, ["crm"], ["sales"])
    assert third["changes"] == {"crm/customers/name": "updated"}, third["changes"]
    assert third["manifest"]["changes"]["unchanged"] == sum(third["manifest"]["counts"].values()) - 1
    assert {f["folder"] for f in third["manifest"]["files"] if f.get("schema") == "sales"} == {f"{CONNECTION_QN}/r2"}
    assert fingerprint_scopes(platform, "r3")[("shop", "sales")] == "r2"
    assert not any(key.startswith("r1/fps/") for _, key in platform.state), "nothing refers to r1's parts any more"

    # Carried twice: the files stay where they were written, the chain is not followed at read time.
    fourth = run_planned(platform, "r4", changed, [], ["sales", "crm"])
    folders = {f["schema"]: f["folder"] for f in fourth["manifest"]["files"] if "schema" in f}
    assert folders == {"sales": f"{CONNECTION_QN}/r2", "crm": f"{CONNECTION_QN}/r3"}
    assert fourth["changes"] == {} and fourth["unchanged"] == sum(fourth["manifest"]["counts"].values())


def test_a_baseline_in_the_old_bucket_layout_is_regrouped_and_compared() -> None:
    platform = InMemoryPlatform()
    run(platform, "r1", sample_catalog())
    # Rewrite r1's fingerprints as the layout before per-scope parts stored them: 64 buckets of rows.
    index = FingerprintIndex.from_json(platform.stored_json(fingerprint_parts_key("r1")))
    rows = [row for scope in index.scopes for key in scope.part_keys() for row in platform.stored_json(key)]
    for scope in index.scopes:
        for key in scope.part_keys():
            platform.delete_json(key)
    platform.save_json(fingerprint_part_key("r1", 5, 0), rows)
    platform.save_json(fingerprint_parts_key("r1"), [0] * 5 + [1] + [0] * 58)
    result = run(platform, "r2", sample_catalog())
    assert result["changes"] == {} and result["unchanged"] == len(rows)
    assert not any(key.startswith("r1/fp") for _, key in platform.state)


def _stored_parts(schemas: int) -> int:
    """Fingerprint parts written for ``schemas`` schemas of 22 relations and 416 columns each, arriving as the
    extractor reads them: kind by kind, each kind in schema order (the benchmark catalog's shape, with the
    writer's limits a tenth of the real ones)."""
    platform = InMemoryPlatform()
    writer = ScopePartWriter(platform, "r1", {("db", f"s{s}"): 438 for s in range(schemas)})
    for kind, per_schema in (("Table", 22), ("Column", 416)):
        for s in range(schemas):
            for i in range(per_schema):
                writer.add([f"qn/s{s}/{kind}/{i}", "digest", kind, "db", f"s{s}"])
    return sum(sum(entry.parts) for entry in writer.scopes())


def test_fingerprint_parts_grow_with_the_schemas_not_with_schemas_times_catalog(monkeypatch: Any) -> None:
    """The 10x benchmark catalog (500 schemas) wrote parts of a few hundred rows: with every schema's rows of
    the earlier kinds held, the limit was reached on every row and the schema being read written out each
    time (its publish stage took 26x the default size's time)."""
    monkeypatch.setattr("pgmeta_publisher.incremental.FLUSH_AT", 500)
    monkeypatch.setattr("pgmeta_publisher.incremental.MAX_BUFFERED", 3_200)
    few, many = _stored_parts(50), _stored_parts(500)
    assert many <= 11 * few, f"{few} parts for 50 schemas, {many} for 500"  # was 50 and 5,681


# -- fingerprints folded chunk by chunk: the publish stage regroups nothing and reads nothing on a first run ------


class CountingPlatform(InMemoryPlatform):
    """Counts the fingerprint reads: the transformer's chunks and the stored per-scope parts."""

    def __init__(self) -> None:
        super().__init__()
        self.fingerprint_chunk_loads = 0
        self.fingerprint_part_reads = 0

    def load_chunk(self, run_id: str, stage: Any, unit: str, index: int) -> list[Any]:
        if stage == ArtifactStage.FINGERPRINT:
            self.fingerprint_chunk_loads += 1
        return super().load_chunk(run_id, stage, unit, index)

    def get_json(self, key: str) -> Any | None:
        if "/fps/" in key:
            self.fingerprint_part_reads += 1
        return super().get_json(key)


def transformed_in_chunks(platform: InMemoryPlatform, run_id: str, records: list[dict[str, Any]]) -> PublishRequested:
    """``records`` extracted and transformed as three chunks, each published early as the transformer announces it."""
    chunks = [records[:5], records[5:25], records[25:]]
    for index, chunk in enumerate(chunks):
        platform.save_chunk(run_id, ArtifactStage.EXTRACT, "db000", index, chunk)
    transform(
        TransformRequested(run_id=run_id, connection_qualified_name=CONNECTION_QN, unit="db000", chunk_count=3),
        platform,
    )
    for index in range(3):
        publish_early(
            ChunkReady(run_id=run_id, unit="db000", index=index, connection_qualified_name=CONNECTION_QN), platform
        )
    return PublishRequested(
        run_id=run_id,
        connection_qualified_name=CONNECTION_QN,
        units=[UnitChunks(unit="db000", chunk_count=3)],
        counts={},
        filters=FilterSpec(),
    )


def published(platform: InMemoryPlatform, run_id: str) -> dict[str, Any]:
    """A published run's manifest (files aside), change lines (sorted) and stored fingerprints (sorted rows)."""
    prefix = f"{CONNECTION_QN}/{run_id}"
    manifest = json.loads(platform.objects[("objectstore", f"{prefix}/manifest.json")])
    changes = sorted(
        json.dumps(line, sort_keys=True)
        for (_, path), blob in platform.objects.items()
        if path.startswith(f"{prefix}/changes-")
        for line in map(json.loads, decode(path, blob).splitlines())
    )
    index = FingerprintIndex.from_json(platform.stored_json(fingerprint_parts_key(run_id)))
    rows = sorted(
        json.dumps(row) for scope in index.scopes for key in scope.part_keys() for row in platform.stored_json(key)
    )
    facts = {k: v for k, v in manifest.items() if k not in {"files", "started_at", "finished_at"}}
    return {"manifest": facts, "changes": changes, "fingerprints": rows}


def test_a_first_run_reads_no_fingerprint_back_and_equals_a_compared_run(monkeypatch: Any) -> None:
    """Chunks published early fold their fingerprints by scope; with no baseline, the publish stage counts from
    the chunks' markers and lists the lines they stored, reading no fingerprint: the same output as comparing."""
    folded = CountingPlatform()
    command = transformed_in_chunks(folded, "r1", sample_catalog())
    loads_before = folded.fingerprint_chunk_loads
    assert loads_before == 3, "each chunk's fingerprints are read once, as the chunk is published"
    publish(command, folded)
    assert folded.fingerprint_chunk_loads == loads_before, "the publish stage loads no fingerprint chunk"
    assert folded.fingerprint_part_reads == 0, "nor any stored fingerprint part"

    # The same run, with the chunks folded as if a baseline existed: the publish stage compares (with none).
    monkeypatch.setattr("pgmeta_publisher.publishing.has_baseline", lambda platform, connection_qn: True)
    compared = CountingPlatform()
    publish(transformed_in_chunks(compared, "r1", sample_catalog()), compared)
    assert compared.fingerprint_part_reads > 0
    first, second = published(folded, "r1"), published(compared, "r1")
    assert first == second
    assert first["manifest"]["changes"]["created"] == len(first["fingerprints"]) == len(first["changes"])


def test_a_chunk_published_twice_or_after_a_crash_folds_to_the_same_parts() -> None:
    """At least once: a chunk folded again (its marker lost to a crash) replaces its parts, adds none."""
    platform = InMemoryPlatform()
    command = transformed_in_chunks(platform, "r1", sample_catalog())
    parts = sorted(key for _, key in platform.state if "/fps/" in key)
    for _, key in [k for k in platform.state if k[1].startswith("r1/publish/") and k[1].endswith("/done")]:
        platform.delete_json(key)  # killed after writing the parts, before the markers
    publish(command, platform)
    assert sorted(key for _, key in platform.state if "/fps/" in key) == parts
    assert sorted(folded_part_keys(platform, "r1")) == parts
    result = published(platform, "r1")
    assert len(result["fingerprints"]) == len(result["changes"]) == result["manifest"]["changes"]["created"]


def test_the_next_run_compares_with_folded_parts_and_forgets_them() -> None:
    platform = InMemoryPlatform()
    publish(transformed_in_chunks(platform, "r1", sample_catalog()), platform)
    changed = sample_catalog()
    for record in changed:
        if record["kind"] == "column" and record["column_name"] == "name":
            record["data_type"] = "text"
    publish(transformed_in_chunks(platform, "r2", changed), platform)
    result = published(platform, "r2")
    updated = [json.loads(line) for line in result["changes"] if '"updated"' in line]
    assert [line["qualifiedName"] for line in updated] == [f"{CONNECTION_QN}/shop/sales/customers/name"]
    assert result["manifest"]["changes"]["created"] == 0
    assert not any(key.startswith("r1/") and ("/fps/" in key or "/fpb/" in key) for _, key in platform.state), (
        "the superseded baseline's folded parts and ledger are gone"
    )


def published_r1_and_planned_to_carry_crm(platform: InMemoryPlatform, next_run: str) -> None:
    """r1 reads and publishes shop's sales and crm; ``next_run`` is planned to read sales and carry crm from r1."""
    plan_r1 = ScopePlan(
        database="shop",
        unit="db000",
        fingerprints=dict.fromkeys(["sales", "crm"], "f"),
        extracted=["sales", "crm"],
        reason="test",
    )
    platform.save_json(extract_scopes_key("r1", "db000"), plan_r1.model_dump(mode="json"))
    publish(transformed_in_chunks(platform, "r1", two_schemas()), platform)
    plan = plan_r1.model_copy(update={"extracted": ["sales"], "carried": ["crm"], "baseline_run_id": "r1"})
    platform.save_json(extract_scopes_key(next_run, "db000"), plan.model_dump(mode="json"))


def test_a_baseline_forgotten_already_is_not_forgotten_again_from_an_older_read() -> None:
    """Overlapping runs of one connection: r3 superseded r1 and forgot it, keeping the parts of the schema it carried
    from r1. A run that had read r1's index before and supersedes r1 late must not delete those parts (a run
    planned on r3 reads them): the index is read when forgetting, and found gone, nothing is deleted."""
    platform = InMemoryPlatform()
    published_r1_and_planned_to_carry_crm(platform, "r3")
    r1_as_read_by_r2 = platform.get_json(snapshot_key(CONNECTION_QN))  # r2 started publishing on r1
    publish(
        transformed_in_chunks(platform, "r3", [r for r in two_schemas() if r.get("schema_name") != "crm"]), platform
    )
    stored = platform.get_json(fingerprint_parts_key("r3"))
    assert isinstance(stored, dict)
    r3_index = FingerprintIndex.from_json(stored)
    carried = [key for scope in r3_index.scopes if scope.owner == "r1" for key in scope.part_keys()]
    assert carried, "r3 refers to the parts of the schema it carried from r1"

    # r2 ends late and supersedes r1, as it read it; its own index refers to nothing of r1's.
    r2 = transformed_in_chunks(platform, "r2", two_schemas())
    _advance_snapshot(platform, r2, [], r1_as_read_by_r2, FingerprintIndex([]))

    assert all(platform.get_json(key) is not None for key in carried)


class ReadRecordingPlatform(InMemoryPlatform):
    """Records each round trip a read would be to the sidecar: a single get by key, or a bulk get's keys."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, list[str]]] = []  # ("get" | "bulk", keys)

    def get_json(self, key: str) -> Any | None:
        self.reads.append(("get", [key]))
        return super().get_json(key)

    def get_json_many(self, keys: Sequence[str]) -> dict[str, Any | None]:
        self.reads.append(("bulk", list(keys)))
        return {key: InMemoryPlatform.get_json(self, key) for key in keys}


def test_a_rerun_publish_reads_in_a_few_round_trips_and_nothing_twice() -> None:
    """The publish stage's reads cost round trips one after another: what it reads in any case (chunk markers,
    plans, reports; then the carried schemas' index and the snapshot; then each compared bucket) is read in bulk, and
    nothing is read again later (the run's fence excepted: each commit claim reads it for its ETag)."""
    platform = ReadRecordingPlatform()
    published_r1_and_planned_to_carry_crm(platform, "r2")
    command = transformed_in_chunks(platform, "r2", [r for r in two_schemas() if r.get("schema_name") != "crm"])
    platform.reads.clear()
    publish(command, platform)

    fence = run_fence_key("r2")
    keys = [key for _, trip in platform.reads for key in trip if key != fence]
    # The superseded baseline's index is read again when forgetting it: an overlapping run may have done so already.
    twice = sorted(key for key in set(keys) if keys.count(key) > 1)
    assert twice == [fingerprint_parts_key("r1")], "read twice"
    single = [trip[0] for kind, trip in platform.reads if kind == "get" and trip[0] != fence]
    # The baseline's fingerprint index depends on the snapshot, read after the chunks (overlapping runs).
    assert single == [stage_result_key("r2", Stage.PUBLISH), fingerprint_parts_key("r1")], "the rest in bulk"
    # The recorded result; the stage's inputs; the carried schemas' index with the snapshot; the baseline's
    # fingerprint index; one per compared bucket (the Connection's, the Database's, sales'); the superseded
    # baseline's ledger; and the fence: at start, and in each of two claims.
    assert len(platform.reads) == 1 + 1 + 1 + 1 + 3 + 1 + 3, "\n".join(map(str, platform.reads))
    result = published(platform, "r2")
    assert result["manifest"]["changes"]["created"] == result["manifest"]["changes"]["updated"] == 0


def test_unchanged_entities_are_counted_from_their_rows(monkeypatch: Any) -> None:
    """A re-run's compare looks at each entity's digest in its stored row and counts the unchanged per type: it
    makes a Fingerprint only of an entity that vanished (to ask the filters whether it is deleted)."""
    platform = InMemoryPlatform()
    run(platform, "r1", sample_catalog())
    made: list[Any] = []
    original = Fingerprint.from_row.__func__  # type: ignore[attr-defined]

    def counted(cls: type[Fingerprint], row: Sequence[Any]) -> Fingerprint:
        made.append(row)
        return original(cls, row)  # type: ignore[no-any-return]

    monkeypatch.setattr(Fingerprint, "from_row", classmethod(counted))
    result = run(platform, "r2", [r for r in sample_catalog() if r.get("relation_name") != "remote_rates"])
    assert result["deleted"] == ["sales/remote_rates", "sales/remote_rates/rate"]
    assert result["unchanged"] == sum(result["manifest"]["counts"].values())
    assert sorted(row[0].removeprefix(f"{CONNECTION_QN}/shop/") for row in made) == result["deleted"]
