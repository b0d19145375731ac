"""Raw catalog records to Atlas entity dicts, with pyatlan's type and attribute names.

Entities are built as plain dicts (a pyatlan object per entity costs ~0.8 ms); tests validate the
output against pyatlan's own asset model instead. Constraints and indexes have no Atlas type in Atlan's
SQL model: their facts reach columns (isPrimary, isForeign, isIndexed, foreignKeyTo) and the records
themselves are kept as catalog extras beside the entities.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from pgmeta_shared.claimcheck import Record
from pgmeta_shared.keys import entity_part, extra_part
from pgmeta_shared.naming import column_qn, database_qn, relation_qn, schema_qn

Entity = dict[str, Any]

CONNECTOR = "postgres"
EXTRA_KINDS = {"constraint", "index"}

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
ROUTINE_KINDS = {"f": "function", "p": "procedure", "a": "aggregate", "w": "window"}
MARKUP = re.compile(r"<[^>]+>")
# Relations whose column templates are kept: the extractor sends a relation's columns together, so a few suffice;
# 4,096 (of ~1 KB each, twice: as a dict and serialized) held ~5 MB of the transformer's peak RSS for nothing.
COLUMN_TEMPLATES = 64


def ref(type_name: str, qualified_name: str) -> dict[str, Any]:
    return {"typeName": type_name, "uniqueAttributes": {"qualifiedName": qualified_name}}


def relation_type(relkind: str, is_partition: bool) -> str:
    return "TablePartition" if is_partition else RELATION_TYPES[relkind]


def plain_text(comment: str | None) -> str | None:
    """Comments as descriptions, with HTML-like markup stripped."""
    if not comment:
        return None
    return MARKUP.sub("", comment).strip() or None


def _common(connection_qn: str, qualified_name: str, name: str) -> dict[str, Any]:
    return {
        "qualifiedName": qualified_name,
        "name": name,
        "connectionQualifiedName": connection_qn,
        "connectorName": CONNECTOR,
    }


def _in_schema(attributes: dict[str, Any], connection_qn: str, db: str, schema: str) -> None:
    attributes.update(
        databaseName=db,
        databaseQualifiedName=database_qn(connection_qn, db),
        schemaName=schema,
        schemaQualifiedName=schema_qn(connection_qn, db, schema),
    )


def _describe(attributes: dict[str, Any], comment: str | None, owner: str | None) -> None:
    description = plain_text(comment)
    if description:
        attributes["description"] = description
    if owner:
        attributes["sourceCreatedBy"] = owner


def connection_entity(connection_qn: str, server: Record) -> Entity:
    return {
        "typeName": "Connection",
        "attributes": {
            "qualifiedName": connection_qn,
            "name": f"postgres {server.get('host', '')}:{server.get('port', '')}".strip(" :"),
            "connectorName": CONNECTOR,
            "category": "database",
            "host": server.get("host"),
            "port": server.get("port"),
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
    _in_schema(attributes, connection_qn, db, schema)
    attributes["columnCount"] = row["column_count"]
    if type_name == "TablePartition":
        parent_qn = relation_qn(connection_qn, db, row["parent_schema"], row["parent_name"])
        parent_attribute = "parentTablePartition" if row.get("parent_is_partition") else "parentTable"
        attributes[parent_attribute] = ref("TablePartition" if row.get("parent_is_partition") else "Table", parent_qn)
        attributes.update(tableName=row["parent_name"], tableQualifiedName=parent_qn)
        if row.get("partition_bound"):
            attributes["constraint"] = row["partition_bound"]
    else:
        attributes["atlanSchema"] = ref("Schema", schema_qn(connection_qn, db, schema))
    if type_name in {"View", "MaterialisedView"} and row.get("view_definition"):
        attributes["definition"] = row["view_definition"]
    if row["relkind"] in {"r", "p", "m"}:
        rows = row.get("row_estimate")
        if rows is None:
            rows = row.get("live_tuples")
        if rows is not None:
            attributes["rowCount"] = rows
        sizes = [row.get(k) for k in ("table_bytes", "index_bytes", "toast_bytes")]
        if any(size is not None for size in sizes):
            attributes["sizeBytes"] = sum(size or 0 for size in sizes)
    if row["relkind"] == "p":
        attributes["isPartitioned"] = True
        attributes["partitionCount"] = row["partition_count"]
        if row.get("partition_strategy"):
            attributes["partitionStrategy"] = PARTITION_STRATEGIES.get(row["partition_strategy"])
    if row["relkind"] == "f" and row.get("foreign_server"):
        attributes["externalLocation"] = row["foreign_server"]
        if row.get("foreign_options"):
            attributes["externalLocationFormat"] = row["foreign_options"]
    if row.get("persistence") == "t":
        attributes["isTemporary"] = True
    _describe(attributes, row.get("comment"), row.get("owner"))
    return {"typeName": type_name, "attributes": attributes}


def _relation_ref(connection_qn: str, db: str, schema: str, name: str, relkind: str, is_partition: bool) -> Any:
    return ref(relation_type(relkind, is_partition), relation_qn(connection_qn, db, schema, name))


@functools.lru_cache(maxsize=COLUMN_TEMPLATES)
def _column_template(connection_qn: str, db: str, schema: str, relation: str, parent_type: str) -> dict[str, Any]:
    """The attributes every column of one relation starts from, in the order they are written: what the columns
    share, and placeholders for what each column sets (a copy of this and 9 stores is cheaper than building the
    dict key by key; assigning an existing key keeps its place)."""
    parent_qn = relation_qn(connection_qn, db, schema, relation)
    template: dict[str, Any] = {
        "qualifiedName": None,
        "name": None,
        "connectionQualifiedName": connection_qn,
        "connectorName": CONNECTOR,
    }
    _in_schema(template, connection_qn, db, schema)
    template[COLUMN_PARENT_ATTRIBUTE[parent_type]] = ref(parent_type, parent_qn)
    if parent_type in {"View", "MaterialisedView"}:
        template.update(viewName=relation, viewQualifiedName=parent_qn)
    else:
        template.update(tableName=relation, tableQualifiedName=parent_qn)
    template.update(
        order=None, dataType=None, rawDataTypeDefinition=None, isNullable=None, isPrimary=None, isForeign=None
    )
    template["isIndexed"] = None
    return template


def column_entity(connection_qn: str, row: Record) -> Entity:
    db, schema, relation, name = row["database_name"], row["schema_name"], row["relation_name"], row["column_name"]
    parent_type = relation_type(row["relkind"], row["is_partition"])
    attributes = _column_template(connection_qn, db, schema, relation, parent_type).copy()
    attributes["qualifiedName"] = column_qn(connection_qn, db, schema, relation, name)
    attributes["name"] = name
    attributes["order"] = row["ordinal"]
    attributes["dataType"] = attributes["rawDataTypeDefinition"] = row["data_type"]
    attributes["isNullable"] = row["is_nullable"]
    attributes["isPrimary"] = row["is_primary"]
    attributes["isForeign"] = row["is_foreign"]
    attributes["isIndexed"] = row.get("is_indexed", False)
    attributes.update(_column_optional_attributes(connection_qn, row))
    return {"typeName": "Column", "attributes": attributes}


def _column_optional_attributes(connection_qn: str, row: Record) -> dict[str, Any]:
    """What only some columns have, in the order it is written (after every column's attributes)."""
    attributes: dict[str, Any] = {}
    base_type = row.get("base_type")
    if base_type and base_type != row["data_type"]:
        attributes["subDataType"] = base_type
    if row.get("max_length") is not None:
        attributes["maxLength"] = row["max_length"]
    if row.get("numeric_precision") is not None:
        attributes["precision"] = row["numeric_precision"]
    if row.get("numeric_scale") is not None:
        attributes["numericScale"] = row["numeric_scale"]
    if row.get("default_value") is not None:
        attributes["defaultValue"] = row["default_value"]
    elif row.get("generation_expression") is not None:
        attributes["defaultValue"] = f"GENERATED ALWAYS AS ({row['generation_expression']})"
    elif row.get("identity"):
        attributes["defaultValue"] = "GENERATED {} AS IDENTITY".format(
            "ALWAYS" if row["identity"] == "a" else "BY DEFAULT"
        )
    if row.get("partition_key_position"):
        attributes.update(isPartition=True, partitionOrder=row["partition_key_position"])
    if row.get("references"):
        db = row["database_name"]
        attributes["foreignKeyTo"] = [
            ref("Column", column_qn(connection_qn, db, r_schema, r_relation, r_column))
            for r_schema, r_relation, _kind, _part, r_column in row["references"]
        ]
    if row.get("comment"):
        description = plain_text(row["comment"])
        if description:
            attributes["description"] = description
    return attributes


# Stands for a column's own values in its relation's template; as a JSON string it cannot occur inside another
# JSON string (a quote inside one is escaped), so the serialized template splits exactly at the placeholders.
_PLACEHOLDER = "\x00pgmeta column value\x00"
_COLUMN_VALUES = ("qualifiedName", "name", "order", "dataType", "rawDataTypeDefinition") + (
    "isNullable",
    "isPrimary",
    "isForeign",
    "isIndexed",
)


@functools.lru_cache(maxsize=COLUMN_TEMPLATES)
def _column_line_pieces(connection_qn: str, db: str, schema: str, relation: str, parent_type: str) -> tuple[bytes, ...]:
    """A column's JSON line around its own values, for one relation: serialized once per relation."""
    template = _column_template(connection_qn, db, schema, relation, parent_type).copy()
    for key in _COLUMN_VALUES:
        template[key] = _PLACEHOLDER
    pieces = tuple(orjson.dumps({"typeName": "Column", "attributes": template}).split(orjson.dumps(_PLACEHOLDER)))
    if len(pieces) != len(_COLUMN_VALUES) + 1 or pieces[-1] != b"}}":
        raise RuntimeError(f"the column template of {relation!r} did not split at its {len(_COLUMN_VALUES)} values")
    return pieces


def column_line(connection_qn: str, row: Record) -> tuple[bytes, str]:
    """``orjson.dumps(column_entity(connection_qn, row))`` and the column's qualifiedName, without building the
    entity: only the column's own values are serialized, into its relation's pre-serialized template (a column
    entity repeats ~500 bytes of its relation's names). Columns are ~95 % of a catalog's entities."""
    db, schema, relation, name = row["database_name"], row["schema_name"], row["relation_name"], row["column_name"]
    parent_type = relation_type(row["relkind"], row["is_partition"])
    pieces = _column_line_pieces(connection_qn, db, schema, relation, parent_type)
    qualified_name = column_qn(connection_qn, db, schema, relation, name)
    dumps = orjson.dumps
    data_type = dumps(row["data_type"])
    optional = _column_optional_attributes(connection_qn, row)
    line = b"".join(
        (
            pieces[0],
            dumps(qualified_name),
            pieces[1],
            dumps(name),
            pieces[2],
            dumps(row["ordinal"]),
            pieces[3],
            data_type,
            pieces[4],
            data_type,
            pieces[5],
            dumps(row["is_nullable"]),
            pieces[6],
            dumps(row["is_primary"]),
            pieces[7],
            dumps(row["is_foreign"]),
            pieces[8],
            dumps(row.get("is_indexed", False)),
            b"," + dumps(optional)[1:-1] + b"}}" if optional else b"}}",
        )
    )
    return line, qualified_name


def routine_qualified_name(connection_qn: str, row: Record) -> str:
    """``<schema>/_procedures_/<name>(<identity arguments>)``: overloads stay distinct."""
    schema = schema_qn(connection_qn, row["database_name"], row["schema_name"])
    return f"{schema}/_procedures_/{row['routine_name']}({row['identity_arguments']})"


def routine_entity(connection_qn: str, row: Record) -> Entity:
    db, schema = row["database_name"], row["schema_name"]
    name = f"{row['routine_name']}({row['identity_arguments']})"
    attributes = _common(connection_qn, routine_qualified_name(connection_qn, row), name)
    _in_schema(attributes, connection_qn, db, schema)
    attributes.update(
        subType=ROUTINE_KINDS.get(row["routine_kind"], row["routine_kind"]),
        definition=row.get("definition") or f"{row['routine_name']}({row['arguments']}) {row['return_type'] or ''}",
        atlanSchema=ref("Schema", schema_qn(connection_qn, db, schema)),
    )
    _describe(attributes, row.get("comment"), row.get("owner"))
    return {"typeName": "Procedure", "attributes": attributes}


def lineage_entity(connection_qn: str, row: Record) -> Entity:
    """A Process per view or materialized view: inputs are what its rewrite rule reads."""
    db, schema, name = row["database_name"], row["schema_name"], row["relation_name"]
    view_qn = relation_qn(connection_qn, db, schema, name)
    inputs = [
        _relation_ref(connection_qn, db, s_schema, s_name, s_kind, s_part)
        for s_schema, s_name, s_kind, s_part in sorted(row["sources"])
    ]
    attributes = {
        "qualifiedName": f"{view_qn}/_lineage_",
        "name": f"{schema}.{name}",
        "connectionQualifiedName": connection_qn,
        "connectorName": CONNECTOR,
        "inputs": inputs,
        "outputs": [_relation_ref(connection_qn, db, schema, name, row["relkind"], False)],
    }
    return {"typeName": "Process", "attributes": attributes}


def extra_record(_connection_qn: str, row: Record) -> Entity:
    """Constraints and indexes, kept as the catalog recorded them (not Atlas entities)."""
    return {"extra": row["kind"], **{k: v for k, v in row.items() if k != "kind"}}


MAPPERS: dict[str, Callable[[str, Record], Entity]] = {
    "server": connection_entity,
    "database": database_entity,
    "schema": schema_entity,
    "relation": relation_entity,
    "column": column_entity,
    "routine": routine_entity,
    "lineage": lineage_entity,
    "constraint": extra_record,
    "index": extra_record,
}


def to_entities(
    connection_qn: str, records: list[Record], problems: list[dict[str, str]] | None = None
) -> list[Entity]:
    """The Atlas entities (and catalog extras) of one chunk of raw records.

    A record that cannot be mapped is recorded in ``problems`` (object, error, hint) when given, instead
    of failing the whole chunk; without ``problems`` it raises.
    """
    return [entity for _, entity in map_records(connection_qn, records, problems)]


def map_records(
    connection_qn: str, records: list[Record], problems: list[dict[str, str]] | None
) -> Iterator[tuple[Record, Entity]]:
    for record in records:
        mapper = MAPPERS.get(record.get("kind", ""))
        try:
            if mapper is None:
                raise ValueError(f"unknown catalog record kind {record.get('kind')!r}")
            entity = mapper(connection_qn, record)
        except MAPPING_ERRORS as exc:
            if problems is None:
                raise
            problems.append(mapping_problem(record, exc))
            continue
        yield record, entity


MAPPING_ERRORS = (KeyError, ValueError, TypeError)


def mapping_problem(record: Record, exc: Exception) -> dict[str, str]:
    return {
        "object": describe_record(record),
        "error": f"{type(exc).__name__}: {exc}",
        "hint": "a pgmeta mapping gap; the record is in the extract chunk",
    }


def fingerprint_row(record: Record, type_name: str, qualified_name: str, line: bytes) -> list[Any]:
    """What an incremental run compares, as a ``Fingerprint`` row (its field order): qualifiedName, type, a hash of
    the entity's JSON line, and its scope (read off the catalog record). Built as the row it is stored as: a
    ``Fingerprint`` per entity, converted to a row, cost ~10 % of a chunk's CPU."""
    relation: str | None = record.get("relation_name")
    relation_type: str | None = None
    if relation is not None:
        relation_type = relation_type_of(record)
    database = record.get("database_name") if type_name != "Connection" else None
    digest = hashlib.blake2b(line, digest_size=8).hexdigest()
    return [
        qualified_name,
        type_name,
        digest,
        database,
        record.get("schema_name"),
        relation,
        relation_type,
    ]


def relation_type_of(record: Record) -> str:
    return relation_type(record["relkind"], bool(record.get("is_partition")))


def render_chunk(
    connection_qn: str, records: list[Record], problems: list[dict[str, str]]
) -> tuple[dict[str, bytes], list[list[Any]]]:
    """One chunk's output, serialized once: JSON Lines per entity type and per extra kind, per schema; and the
    fingerprint rows, returned as rows (they go to a claim-check chunk of their own: serializing them here would
    be undone)."""
    # Each part grows as one buffer, line by line: orjson returns every line in a buffer of at least 8 KiB that it
    # does not shrink, so a list of a chunk's lines held ~10x the chunk's JSON (32 MB for a 2 MiB chunk).
    lines: dict[str, bytearray] = {}
    fingerprints: list[list[Any]] = []
    # (entity?, type or extra kind, schema) → its part's buffer, named once per chunk. Parts are per schema: the
    # publisher writes a file per part, and an incremental run carries an unchanged schema's files over.
    buffers: dict[tuple[bool, str, str | None], bytearray] = {}
    dumps = orjson.dumps
    for record in records:
        kind = record.get("kind", "")
        try:
            if kind == "column":
                line, qualified_name = column_line(connection_qn, record)
                type_name: str | None = "Column"
            else:
                mapper = MAPPERS.get(kind)
                if mapper is None:
                    raise ValueError(f"unknown catalog record kind {record.get('kind')!r}")
                item = mapper(connection_qn, record)
                line = dumps(item)
                type_name = item.get("typeName")
                if type_name is not None:
                    qualified_name = item["attributes"]["qualifiedName"]
        except MAPPING_ERRORS as exc:
            problems.append(mapping_problem(record, exc))
            continue
        schema = record.get("schema_name")
        if type_name is not None:
            key = (True, type_name, schema)
            fingerprints.append(fingerprint_row(record, type_name, qualified_name, line))
        else:
            key = (False, item["extra"], schema)
        group = buffers.get(key)
        if group is None:
            name = entity_part(type_name, schema) if type_name is not None else extra_part(key[1], schema)
            group = buffers[key] = lines.setdefault(name, bytearray())
        group += line
        group += b"\n"
    buffers.clear()
    parts = {name: bytes(lines.pop(name)) for name in sorted(lines)}
    return parts, fingerprints


def describe_record(record: Record) -> str:
    parts = [record.get(k) for k in ("database_name", "schema_name", "relation_name", "column_name", "routine_name")]
    return f"{record.get('kind')} " + ".".join(str(p) for p in parts if p)
