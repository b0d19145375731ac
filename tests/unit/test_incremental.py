"""Incremental runs: created / updated / unchanged / deleted against the last successful run of a connection."""

from __future__ import annotations

import json
from typing import Any

from pgmeta_publisher.incremental import BUCKETS, Scope, bucket_of
from pgmeta_publisher.publishing import publish
from pgmeta_shared.events import FilterSpec, PublishRequested, TransformRequested, UnitChunks
from pgmeta_shared.fingerprints import Fingerprint
from pgmeta_shared.keys import ArtifactStage
from pgmeta_shared.outputfiles import decode
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

    changes = {
        line["qualifiedName"].removeprefix(f"{CONNECTION_QN}/shop/"): line["change"] for line in lines("changes")
    }
    deleted = sorted(line["qualifiedName"].removeprefix(f"{CONNECTION_QN}/shop/") for line in lines("deleted"))
    return {"manifest": manifest, "changes": changes, "deleted": deleted}


def test_first_run_creates_everything() -> None:
    result = run(InMemoryPlatform(), "r1", sample_catalog())
    assert set(result["changes"].values()) == {"created"}
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
        "unchanged": len(result["changes"]) - 3,
    }


def test_unchanged_catalog_changes_nothing_and_old_fingerprints_are_dropped() -> None:
    platform = InMemoryPlatform()
    run(platform, "r1", sample_catalog())
    result = run(platform, "r2", sample_catalog())
    assert set(result["changes"].values()) == {"unchanged"} and result["deleted"] == []
    assert not any(key.startswith("r1/fpb/") for _, key in platform.state), "the superseded baseline is removed"


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
    assert set(result["changes"].values()) == {"unchanged"}


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


def test_buckets_are_stable_and_spread() -> None:
    names = [f"{CONNECTION_QN}/shop/s/t{i}/c" for i in range(5000)]
    buckets = [bucket_of(name) for name in names]
    assert buckets == [bucket_of(name) for name in names]
    assert len(set(buckets)) == BUCKETS
    assert max(buckets.count(b) for b in range(BUCKETS)) < 3 * len(names) / BUCKETS


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
