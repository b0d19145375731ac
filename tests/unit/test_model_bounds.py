"""Every string and collection an event or an API body carries has a bound (max length / items / keys)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from pgmeta_orchestrator.auth import TokenCreate
from pgmeta_orchestrator.connections import ConnectionSpec
from pgmeta_orchestrator.runs import RunRequest, SourceRequest
from pgmeta_shared.events import TOPICS

MODELS: list[type[BaseModel]] = [t.model for t in TOPICS if t.model is not None]
MODELS += [RunRequest, SourceRequest, ConnectionSpec, TokenCreate]


def unbounded(schema: dict[str, Any], defs: dict[str, Any], where: str, seen: set[str]) -> list[str]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        return unbounded(defs[name], defs, where, seen | {name})
    found: list[str] = []
    for key in ("anyOf", "allOf", "oneOf"):
        for option in schema.get(key, []):
            found += unbounded(option, defs, where, seen)
    kind = schema.get("type")
    if kind == "string" and "enum" not in schema and "const" not in schema and "maxLength" not in schema:
        found.append(where)
    if kind == "array":
        if "maxItems" not in schema:
            found.append(where)
        found += unbounded(schema.get("items", {}), defs, f"{where}[]", seen)
    if kind == "object":
        for name, prop in schema.get("properties", {}).items():
            found += unbounded(prop, defs, f"{where}.{name}", seen)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            if "maxProperties" not in schema:
                found.append(f"{where}{{}}")
            found += unbounded(extra, defs, f"{where}{{}}", seen)
            found += unbounded(schema.get("propertyNames", {}), defs, f"{where}{{key}}", seen)
    return found


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_string_and_collection_is_bounded(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    assert unbounded(schema, schema.get("$defs", {}), model.__name__, set()) == []
