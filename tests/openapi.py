"""Hyperswitch's v1 OpenAPI spec as JSON Schema validators, to hold our requests and our fake to it."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent / "hyperswitch" / "openapi_spec_v1.json"
# Request bodies the real server parses with serde's deny_unknown_fields.
STRICT = {"PaymentsCreateRequest", "PaymentsCancelRequest", "RefundRequest", "PayoutsCreateRequest"}


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 → JSON Schema: `nullable: true` becomes an explicit null alternative."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {
        key: _json_schema(value) for key, value in node.items() if key not in ("nullable", "example")
    }
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@functools.cache
def _registry() -> tuple[dict[str, Any], Registry]:
    spec = _json_schema(json.loads(SPEC_PATH.read_text()))
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return spec, Registry().with_resource("urn:hyperswitch", resource)


@functools.cache
def validator(schema_name: str) -> jsonschema.Draft202012Validator:
    spec, registry = _registry()
    schema: dict[str, Any] = {"$ref": f"urn:hyperswitch#/components/schemas/{schema_name}"}
    if schema_name in STRICT:
        known = sorted(spec["components"]["schemas"][schema_name]["properties"])
        schema = {"allOf": [schema], "propertyNames": {"enum": known}}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def errors(schema_name: str, document: Any) -> list[str]:
    """Every way `document` breaks the schema, as readable lines; empty when it is valid."""
    found = validator(schema_name).iter_errors(document)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in found)


def properties(schema_name: str) -> set[str]:
    """Every property a schema names, through its allOf parts (PayoutListFilterConstraints)."""
    spec, _ = _registry()
    schemas = spec["components"]["schemas"]
    found: set[str] = set()
    todo = [schemas[schema_name]]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            found |= set(node.get("properties", {}))
            ref = node.get("$ref")
            if isinstance(ref, str):
                todo.append(schemas[ref.rsplit("/", 1)[1]])
            todo.extend(node.get("allOf", []) + node.get("anyOf", []))
    return found
