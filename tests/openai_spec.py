"""Validate payloads against OpenAI's published OpenAPI description (specs/, MIT licence).

Two quirks of the file (specs/README.md): nullability is marked the OpenAPI 3.0 way
(``nullable: true``, which JSON Schema ignores), so it is rewritten into JSON Schema here; and a
stream chunk's ``finish_reason`` is typed as a string although the API sends null on every chunk
but the last, so null is allowed there.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SPEC = Path(__file__).resolve().parent.parent / "specs" / "openai-openapi.yaml.gz"


def _nullable_to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _nullable_to_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        node = {"anyOf": [node, {"type": "null"}]}
    return node


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    with gzip.open(SPEC, "rt", encoding="utf-8") as handle:
        spec = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    spec = _nullable_to_json_schema(spec)
    chunk = spec["components"]["schemas"]["CreateChatCompletionStreamResponse"]
    finish = chunk["properties"]["choices"]["items"]["properties"]["finish_reason"]
    chunk["properties"]["choices"]["items"]["properties"]["finish_reason"] = {
        "anyOf": [finish, {"type": "null"}]}
    return spec


def validate(payload: dict[str, Any], schema_name: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``payload`` fits schema ``schema_name``."""
    document = _document()
    if schema_name not in document["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in {SPEC.name}")
    schema = {**document, "$ref": f"#/components/schemas/{schema_name}"}
    jsonschema.Draft202012Validator(schema).validate(payload)
