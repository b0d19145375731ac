"""The transformer's Atlas entities: names, parents, and acceptance by pyatlan's own asset model."""

from typing import Any

import orjson
import pytest
from pyatlan.model.assets import Asset

from pgmeta_transformer.atlas import render_chunk, to_entities

from .records import CONNECTION_QN, column, relation, sample_catalog

PREFIX = f"{CONNECTION_QN}/shop/sales"
PARENT_ATTRIBUTES = (
    "database",
    "atlanSchema",
    "parentTable",
    "parentTablePartition",
    "table",
    "view",
    "materialisedView",
    "tablePartition",
)


def entities_of(records: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [e for e in to_entities(CONNECTION_QN, records or sample_catalog()) if "typeName" in e]


def by_qn(entities: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["attributes"]["qualifiedName"]: e for e in entities}


def test_types_and_qualified_names() -> None:
    entities = by_qn(entities_of())
    expected = {
        CONNECTION_QN: "Connection",
        f"{CONNECTION_QN}/shop": "Database",
        PREFIX: "Schema",
        f"{PREFIX}/orders": "Table",
        f"{PREFIX}/orders_2025": "TablePartition",
        f"{PREFIX}/remote_rates": "Table",
        f"{PREFIX}/customers": "Table",
        f"{PREFIX}/v_orders": "View",
        f"{PREFIX}/mv_orders": "MaterialisedView",
        f"{PREFIX}/orders/order_id": "Column",
        f"{PREFIX}/customers/id": "Column",
        f"{PREFIX}/customers/name": "Column",
        f"{PREFIX}/orders_2025/order_id": "Column",
        f"{PREFIX}/remote_rates/rate": "Column",
        f"{PREFIX}/v_orders/one": "Column",
        f"{PREFIX}/mv_orders/two": "Column",
        f"{PREFIX}/_procedures_/total(integer)": "Procedure",
        f"{PREFIX}/_procedures_/total(text)": "Procedure",
        f"{PREFIX}/_procedures_/archive()": "Procedure",
        f"{PREFIX}/v_orders/_lineage_": "Process",
    }
    assert {qn: e["typeName"] for qn, e in entities.items()} == expected


def test_every_reference_resolves_within_the_run() -> None:
    entities = entities_of()
    known = {(e["typeName"], e["attributes"]["qualifiedName"]) for e in entities}
    refs = []
    for entity in entities:
        attributes = entity["attributes"]
        refs += [attributes[a] for a in PARENT_ATTRIBUTES if a in attributes]
        for many in ("inputs", "outputs", "foreignKeyTo"):
            refs += attributes.get(many, [])
    parented = [e for e in entities if e["typeName"] not in {"Connection", "Database", "Process"}]
    assert sum(any(a in e["attributes"] for a in PARENT_ATTRIBUTES) for e in parented) == len(parented)
    assert {(r["typeName"], r["uniqueAttributes"]["qualifiedName"]) for r in refs} <= known


def test_each_column_has_exactly_one_parent_of_the_right_kind() -> None:
    columns = [e for e in entities_of() if e["typeName"] == "Column"]
    parent_attributes = {"table", "view", "materialisedView", "tablePartition"}
    parents = {
        e["attributes"]["qualifiedName"].removeprefix(f"{PREFIX}/"): sorted(parent_attributes & e["attributes"].keys())
        for e in columns
    }
    assert parents == {
        "orders/order_id": ["table"],
        "customers/id": ["table"],
        "customers/name": ["table"],
        "orders_2025/order_id": ["tablePartition"],
        "remote_rates/rate": ["table"],
        "v_orders/one": ["view"],
        "mv_orders/two": ["materialisedView"],
    }


def test_attributes_carry_the_source_facts() -> None:
    entities = by_qn(entities_of())
    orders = entities[f"{PREFIX}/orders"]["attributes"]
    assert orders["isPartitioned"] is True and orders["partitionStrategy"] == "RANGE"
    assert orders["partitionCount"] == 1 and orders["description"] == "Orders"
    assert orders["sizeBytes"] == 8192 + 16384 and orders["rowCount"] == 10
    partition = entities[f"{PREFIX}/orders_2025"]["attributes"]
    assert partition["parentTable"]["uniqueAttributes"]["qualifiedName"] == f"{PREFIX}/orders"
    assert partition["constraint"].startswith("FOR VALUES FROM")
    key = entities[f"{PREFIX}/orders/order_id"]["attributes"]
    assert (key["isPrimary"], key["isForeign"], key["dataType"]) == (True, True, "bigint")
    assert key["description"] == "Key", "markup is stripped from comments"
    assert key["foreignKeyTo"] == [
        {"typeName": "Column", "uniqueAttributes": {"qualifiedName": f"{PREFIX}/customers/id"}}
    ]
    assert (key["isPartition"], key["partitionOrder"]) == (True, 1)
    name = entities[f"{PREFIX}/customers/name"]["attributes"]
    assert (name["maxLength"], name["subDataType"], name["isNullable"]) == (80, "character varying", True)
    assert entities[f"{PREFIX}/customers/id"]["attributes"]["isIndexed"] is True
    assert entities[f"{PREFIX}/v_orders"]["attributes"]["definition"] == " SELECT 1;"
    assert entities[f"{PREFIX}/mv_orders/two"]["attributes"]["defaultValue"] == "2"
    assert entities[f"{PREFIX}/remote_rates"]["attributes"]["externalLocation"] == "rates_srv"
    procedure = entities[f"{PREFIX}/_procedures_/archive()"]["attributes"]
    assert (procedure["subType"], procedure["description"]) == ("procedure", "Moves old orders")
    lineage = entities[f"{PREFIX}/v_orders/_lineage_"]["attributes"]
    assert {i["uniqueAttributes"]["qualifiedName"] for i in lineage["inputs"]} == {
        f"{PREFIX}/orders",
        f"{PREFIX}/customers",
    }
    assert lineage["outputs"] == [{"typeName": "View", "uniqueAttributes": {"qualifiedName": f"{PREFIX}/v_orders"}}]


def test_constraints_and_indexes_are_kept_as_catalog_extras() -> None:
    extras = [e for e in to_entities(CONNECTION_QN, sample_catalog()) if "extra" in e]
    assert sorted((e["extra"], e.get("constraint_name") or e.get("index_name")) for e in extras) == [
        ("constraint", "orders_pkey"),
        ("index", "customers_pkey"),
    ]


def test_same_names_in_two_schemas_stay_apart() -> None:
    records = [relation("a", "t", "r"), relation("b", "t", "r"), column("a", "t", "id"), column("b", "t", "id")]
    assert len({e["attributes"]["qualifiedName"] for e in entities_of(records)}) == 4


def test_unmappable_records_are_reported_not_fatal() -> None:
    problems: list[dict[str, str]] = []
    broken = relation("sales", "weird", "r")
    del broken["column_count"]
    entities = to_entities(CONNECTION_QN, [broken, relation("sales", "fine", "r"), {"kind": "mystery"}], problems)
    assert [e["attributes"]["name"] for e in entities] == ["fine"]
    assert [p["object"] for p in problems] == ["relation shop.sales.weird", "mystery "]
    with pytest.raises(ValueError, match="unknown catalog record kind"):
        to_entities(CONNECTION_QN, [{"kind": "mystery"}])


def test_pyatlan_accepts_every_entity_without_losing_attributes() -> None:
    for entity in entities_of():
        asset = Asset._convert_to_real_type_(entity)  # type: ignore[no-untyped-call]
        assert type(asset).__name__ == entity["typeName"]
        assert asset.qualified_name == entity["attributes"]["qualifiedName"]
        round_trip = asset.dict(by_alias=True, exclude_unset=True)["attributes"]
        lost = set(entity["attributes"]) - set(round_trip)
        assert not lost, f"{entity['typeName']} lost {lost} in pyatlan"


def tricky_columns() -> list[dict[str, Any]]:
    """Columns whose values test the rendered template: quotes, backslashes, non-ASCII, the placeholder's own
    characters, every optional attribute, every kind of parent."""
    return [
        column("sales", 'we"ird\\rel', 'c"ol\\umn', comment='say "hi"\\n', ordinal=7),
        column("sälës", "tåble", "名前", data_type="text", base_type="text", numeric_precision=None),
        column("sales", "t", "\x00pgmeta column value\x00", is_indexed=True, is_nullable=True),
        column("sales", "t", "gen", default_value=None, generation_expression="a + 1", identity=None),
        column("sales", "t", "ident", identity="a"),
        column("sales", "t", "ident2", identity="d", is_primary=True, is_foreign=True),
        column("sales", "p", "key", "p", partition_key_position=2, references=[["s2", "r2", "r", False, "id"]]),
        column("sales", "p_1", "key", "r", is_partition=True),
        column("sales", "v", "x", "v", data_type="integer[]", base_type="integer"),
        column("sales", "m", "y", "m", max_length=12, numeric_precision=None, numeric_scale=None),
        {k: v for k, v in column("sales", "t", "no_is_indexed").items() if k != "is_indexed"},
    ]


def test_rendered_lines_are_the_mapped_entities_serialized() -> None:
    """render_chunk writes columns from a per-relation template without building their entities: its lines must
    be exactly the entities pyatlan accepts (to_entities), serialized."""
    records = sample_catalog() + tricky_columns()
    parts, fingerprints = render_chunk(CONNECTION_QN, records, [])
    rendered = sorted(line for blob in parts.values() for line in blob.splitlines())
    assert rendered == sorted(orjson.dumps(entity) for entity in to_entities(CONNECTION_QN, records))
    entities = entities_of(records)
    assert [row[:2] for row in fingerprints] == [[e["attributes"]["qualifiedName"], e["typeName"]] for e in entities]


def test_unmappable_columns_are_reported_when_rendered() -> None:
    problems: list[dict[str, str]] = []
    broken = column("sales", "t", "broken")
    del broken["ordinal"]
    parts, fingerprints = render_chunk(CONNECTION_QN, [broken, column("sales", "t", "fine"), {"kind": "x"}], problems)
    assert [row[0] for row in fingerprints] == [f"{PREFIX}/t/fine"]
    assert [p["object"] for p in problems] == ["column shop.sales.t.broken", "x "]
    assert problems[0]["error"] == "KeyError: 'ordinal'"
