"""Raw catalog records to Atlas entity dicts, with pyatlan's type and attribute names.

Entities are built as plain dicts (a pyatlan object per entity costs ~0.8 ms); tests validate the
output against pyatlan's own asset model instead.
"""

from __future__ import annotations

from typing import Any

from pgmeta_shared.claimcheck import Record
from pgmeta_shared.naming import column_qn, database_qn, relation_qn, schema_qn

Entity = dict[str, Any]

CONNECTOR = "postgres"

# pg_class.relkind → Atlas type of the relation; partitions are TablePartition whatever their kind.
RELATION_TYPES = {"r": "Table", "p": "Table", "f": "Table", "v": "View", "m": "MaterialisedView"}
# Atlas type of a relation → the Column attribute that points at it.
COLUMN_PARENT_ATTRIBUTE = {
    "Table": "table",
    "View": "view",
    "MaterialisedView": "materialisedView",
    "TablePartition": "tablePartition",
}
PARTITION_STRATEGIES = {"r": "RANGE", "l": "LIST", "h": "HASH"}


def ref(type_name: str, qualified_name: str) -> dict[str, Any]:
    return {"typeName": type_name, "uniqueAttributes": {"qualifiedName": qualified_name}}


def relation_type(relkind: str, is_partition: bool) -> str:
    return "TablePartition" if is_partition else RELATION_TYPES[relkind]


def _common(connection_qn: str, qualified_name: str, name: str) -> dict[str, Any]:
    return {
        "qualifiedName": qualified_name,
        "name": name,
        "connectionQualifiedName": connection_qn,
        "connectorName": CONNECTOR,
    }


def _describe(attributes: dict[str, Any], comment: str | None, owner: str | None) -> None:
    if comment:
        attributes["description"] = comment
    if owner:
        attributes["sourceCreatedBy"] = owner


def connection_entity(connection_qn: str, server: Record) -> Entity:
    return {
        "typeName": "Connection",
        "attributes": {
            "qualifiedName": connection_qn,
            "name": f"postgres {server.get('server_version', '')}".strip(),
            "connectorName": CONNECTOR,
            "category": "database",
        },
    }


def database_entity(connection_qn: str, row: Record) -> Entity:
    db = row["database_name"]
    attributes = _common(connection_qn, database_qn(connection_qn, db), db)
    _describe(attributes, row.get("comment"), row.get("owner"))
    return {"typeName": "Database", "attributes": attributes}


def schema_entity(connection_qn: str, row: Record) -> Entity:
    db, schema = row["database_name"], row["schema_name"]
    attributes = _common(connection_qn, schema_qn(connection_qn, db, schema), schema)
    attributes.update(
        databaseName=db,
        databaseQualifiedName=database_qn(connection_qn, db),
        tableCount=row["table_count"],
        viewsCount=row["view_count"],
        database=ref("Database", database_qn(connection_qn, db)),
    )
    _describe(attributes, row.get("comment"), row.get("owner"))
    return {"typeName": "Schema", "attributes": attributes}


def relation_entity(connection_qn: str, row: Record) -> Entity:
    db, schema, name = row["database_name"], row["schema_name"], row["relation_name"]
    type_name = relation_type(row["relkind"], row["is_partition"])
    attributes = _common(connection_qn, relation_qn(connection_qn, db, schema, name), name)
    attributes.update(
        databaseName=db,
        databaseQualifiedName=database_qn(connection_qn, db),
        schemaName=schema,
        schemaQualifiedName=schema_qn(connection_qn, db, schema),
        columnCount=row["column_count"],
    )
    if type_name == "TablePartition":
        parent_qn = relation_qn(connection_qn, db, row["parent_schema"], row["parent_name"])
        attributes.update(
            parentTable=ref("Table", parent_qn),
            tableName=row["parent_name"],
            tableQualifiedName=parent_qn,
        )
        if row.get("partition_bound"):
            attributes["constraint"] = row["partition_bound"]
    else:
        attributes["atlanSchema"] = ref("Schema", schema_qn(connection_qn, db, schema))
    if type_name in {"View", "MaterialisedView"} and row.get("view_definition"):
        attributes["definition"] = row["view_definition"]
    if type_name != "View" and row.get("row_estimate") is not None:
        attributes["rowCount"] = row["row_estimate"]
    if row["relkind"] == "p":
        attributes["isPartitioned"] = True
        attributes["partitionCount"] = row["partition_count"]
        if row.get("partition_strategy"):
            attributes["partitionStrategy"] = PARTITION_STRATEGIES.get(row["partition_strategy"])
    _describe(attributes, row.get("comment"), row.get("owner"))
    return {"typeName": type_name, "attributes": attributes}


def column_entity(connection_qn: str, row: Record) -> Entity:
    db, schema, relation, name = (
        row["database_name"],
        row["schema_name"],
        row["relation_name"],
        row["column_name"],
    )
    parent_type = relation_type(row["relkind"], row["is_partition"])
    parent_qn = relation_qn(connection_qn, db, schema, relation)
    attributes = _common(connection_qn, column_qn(connection_qn, db, schema, relation, name), name)
    attributes.update(
        databaseName=db,
        databaseQualifiedName=database_qn(connection_qn, db),
        schemaName=schema,
        schemaQualifiedName=schema_qn(connection_qn, db, schema),
        order=row["ordinal"],
        dataType=row["data_type"],
        isNullable=row["is_nullable"],
        isPrimary=row["is_primary"],
        isForeign=row["is_foreign"],
    )
    attributes[COLUMN_PARENT_ATTRIBUTE[parent_type]] = ref(parent_type, parent_qn)
    if parent_type in {"View", "MaterialisedView"}:
        attributes.update(viewName=relation, viewQualifiedName=parent_qn)
    else:
        attributes.update(tableName=relation, tableQualifiedName=parent_qn)
    if row.get("default_value") is not None:
        attributes["defaultValue"] = row["default_value"]
    if row.get("comment"):
        attributes["description"] = row["comment"]
    return {"typeName": "Column", "attributes": attributes}


def to_entities(connection_qn: str, records: list[Record]) -> list[Entity]:
    """The Atlas entities of one chunk of raw records (each record maps to one entity)."""
    entities: list[Entity] = []
    for record in records:
        kind = record["kind"]
        if kind == "server":
            entities.append(connection_entity(connection_qn, record))
        elif kind == "database":
            entities.append(database_entity(connection_qn, record))
        elif kind == "schema":
            entities.append(schema_entity(connection_qn, record))
        elif kind == "relation":
            entities.append(relation_entity(connection_qn, record))
        elif kind == "column":
            entities.append(column_entity(connection_qn, record))
        else:
            raise ValueError(f"unknown catalog record kind {kind!r}")
    return entities
