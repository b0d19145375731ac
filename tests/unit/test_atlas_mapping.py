"""The transformer's Atlas entities: names, parents, and acceptance by pyatlan's own asset model."""

from typing import Any

import pytest
from pyatlan.model.assets import Asset

from pgmeta_transformer.atlas import to_entities

from .records import CONNECTION_QN, column, relation, sample_catalog


def by_qn(entities: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["attributes"]["qualifiedName"]: e for e in entities}


def test_types_and_qualified_names() -> None:
    entities = by_qn(to_entities(CONNECTION_QN, sample_catalog()))
    prefix = f"{CONNECTION_QN}/shop/sales"
    expected = {
        CONNECTION_QN: "Connection",
        f"{CONNECTION_QN}/shop": "Database",
        prefix: "Schema",
        f"{prefix}/orders": "Table",
        f"{prefix}/orders_2025": "TablePartition",
        f"{prefix}/remote_rates": "Table",
        f"{prefix}/v_orders": "View",
        f"{prefix}/mv_orders": "MaterialisedView",
        f"{prefix}/orders/order_id": "Column",
        f"{prefix}/orders_2025/order_id": "Column",
        f"{prefix}/remote_rates/rate": "Column",
        f"{prefix}/v_orders/one": "Column",
        f"{prefix}/mv_orders/two": "Column",
    }
    assert {qn: e["typeName"] for qn, e in entities.items()} == expected


def test_every_parent_reference_resolves_within_the_run() -> None:
    entities = to_entities(CONNECTION_QN, sample_catalog())
    known = {(e["typeName"], e["attributes"]["qualifiedName"]) for e in entities}
    parent_attributes = (
        "atlanSchema",
        "database",
        "parentTable",
        "table",
        "view",
        "materialisedView",
        "tablePartition",
    )
    refs = [
        (e["attributes"][a]["typeName"], e["attributes"][a]["uniqueAttributes"]["qualifiedName"])
        for e in entities
        for a in parent_attributes
        if a in e["attributes"]
    ]
    assert len(refs) == len(entities) - 2  # all but Connection and Database have a parent reference
    assert set(refs) <= known


def test_each_column_has_exactly_one_parent_of_the_right_kind() -> None:
    columns = [e for e in to_entities(CONNECTION_QN, sample_catalog()) if e["typeName"] == "Column"]
    parent_attributes = {"table", "view", "materialisedView", "tablePartition"}
    parents = {
        e["attributes"]["qualifiedName"].removeprefix(f"{CONNECTION_QN}/shop/sales/"): sorted(
            parent_attributes & e["attributes"].keys()
        )
        for e in columns
    }
    assert parents == {
        "orders/order_id": ["table"],
        "orders_2025/order_id": ["tablePartition"],
        "remote_rates/rate": ["table"],
        "v_orders/one": ["view"],
        "mv_orders/two": ["materialisedView"],
    }


def test_attributes_carry_the_source_facts() -> None:
    entities = by_qn(to_entities(CONNECTION_QN, sample_catalog()))
    prefix = f"{CONNECTION_QN}/shop/sales"
    orders = entities[f"{prefix}/orders"]["attributes"]
    assert orders["isPartitioned"] is True and orders["partitionStrategy"] == "RANGE"
    assert orders["partitionCount"] == 1 and orders["description"] == "Orders"
    partition = entities[f"{prefix}/orders_2025"]["attributes"]
    assert partition["parentTable"]["uniqueAttributes"]["qualifiedName"] == f"{prefix}/orders"
    assert partition["constraint"].startswith("FOR VALUES FROM")
    key = entities[f"{prefix}/orders/order_id"]["attributes"]
    assert (key["isPrimary"], key["isForeign"], key["dataType"], key["description"]) == (True, True, "bigint", "Key")
    assert entities[f"{prefix}/v_orders"]["attributes"]["definition"] == " SELECT 1;"
    assert entities[f"{prefix}/mv_orders/two"]["attributes"]["defaultValue"] == "2"


def test_same_names_in_two_schemas_stay_apart() -> None:
    records = [relation("a", "t", "r"), relation("b", "t", "r"), column("a", "t", "id"), column("b", "t", "id")]
    entities = to_entities(CONNECTION_QN, records)
    assert len({e["attributes"]["qualifiedName"] for e in entities}) == 4


def test_unknown_record_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown catalog record kind"):
        to_entities(CONNECTION_QN, [{"kind": "mystery"}])


def test_pyatlan_accepts_every_entity_without_losing_attributes() -> None:
    for entity in to_entities(CONNECTION_QN, sample_catalog()):
        asset = Asset._convert_to_real_type_(entity)
        assert type(asset).__name__ == entity["typeName"]
        assert asset.qualified_name == entity["attributes"]["qualifiedName"]
        round_trip = asset.dict(by_alias=True, exclude_unset=True)["attributes"]
        lost = set(entity["attributes"]) - set(round_trip)
        assert not lost, f"{entity['typeName']} lost {lost} in pyatlan"
