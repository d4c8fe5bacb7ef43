"""JSON values that fit a JSON Schema: tool-call arguments and structured output.

Both are filled from the caller's own schema, so clients that validate what
comes back (the openai SDK's `parse`, pydantic models, agent frameworks)
succeed. The values are chosen from the seeded generator, so the same request
gets the same JSON.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from typing import Any

from meshgate.structs import integral
from services.engines.reference.generator.text import vocabulary

# How deep the schema filler follows nested objects, arrays and $refs; recursive
# schemas would otherwise never end.
MAX_SCHEMA_DEPTH = 8

_JSON_SEPARATORS = (",", ":")


def _property_order(schema: Mapping[str, Any], properties: Mapping[str, Any]) -> list[str]:
    """Required properties in their listed order, then the rest sorted.

    A Struct is a map and loses the author's key order, but `required` is a
    list and keeps it; sorting the rest keeps the output stable across processes.
    """
    order: list[str] = []
    required = schema.get("required")
    if isinstance(required, list):
        order = [r for r in required if isinstance(r, str) and r in properties]
    listed = set(order)
    order.extend(sorted(k for k in properties if k not in listed))
    return order


_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com",
    "url": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


class SchemaFiller:
    """Makes a JSON value that fits a JSON Schema, choosing words and numbers from rng.

    Covers what tool definitions and structured outputs use in practice: types
    (also as lists), enum/const, properties, items, anyOf/oneOf/allOf, local
    $refs and numeric bounds. Every property is filled, required or not.
    """

    def __init__(self, root: Mapping[str, Any], rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.words = vocabulary().words

    def fill(self, schema: Any, depth: int = 0) -> Any:
        if not isinstance(schema, Mapping):
            return self.word()
        if depth > MAX_SCHEMA_DEPTH:
            return self._empty(schema)
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self.fill(self._resolve(ref), depth + 1)
        if "const" in schema:
            return integral(schema["const"])
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return integral(enum[0])
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                preferred = [o for o in options if not _is_null(o)] or options
                return self.fill(preferred[0], depth + 1)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            return self.fill(_merge(schema, all_of), depth + 1)
        kind = _type_of(schema)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def word(self) -> str:
        return self.rng.choice(self.words)

    def _resolve(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}
        node: Any = self.root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                return {}
            node = node[part]
        return node

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        return {
            name: self.fill(properties[name], depth + 1)
            for name in _property_order(schema, properties)
        }

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        items = schema.get("items")
        count = max(1, _int_or(schema.get("minItems"), 1))
        max_items = schema.get("maxItems")
        if isinstance(max_items, (int, float)):
            count = min(count, int(max_items))
        count = min(count, 8)
        if isinstance(items, list):  # tuple form
            return [self.fill(s, depth + 1) for s in items]
        item_schema = items if items is not None else {"type": "string"}
        return [self.fill(item_schema, depth + 1) for _ in range(count)]

    def _integer(self, schema: Mapping[str, Any]) -> int:
        low = _bound(schema, "minimum", "exclusiveMinimum", 1, up=True)
        high = _bound(schema, "maximum", "exclusiveMaximum", low + 99, up=False)
        if high < low:
            high = low
        return self.rng.randint(low, high)

    def _number(self, schema: Mapping[str, Any]) -> float:
        low = _float_or(schema.get("minimum"), 0.0)
        high = _float_or(schema.get("maximum"), low + 100.0)
        if high < low:
            high = low
        # Rounded for readable JSON, then clamped so rounding never leaves the bounds.
        value = round(self.rng.uniform(low, high), 2)
        return float(min(max(value, low), high))

    def _string(self, schema: Mapping[str, Any]) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _STRING_FORMATS:
            return _STRING_FORMATS[fmt]
        text = self.word()
        min_length = _int_or(schema.get("minLength"), 0)
        while len(text) < min_length:
            text += " " + self.word()
        max_length = schema.get("maxLength")
        if isinstance(max_length, (int, float)) and max_length >= 0:
            text = text[: int(max_length)]
        return text

    def _empty(self, schema: Mapping[str, Any]) -> Any:
        kind = _type_of(schema)
        return [] if kind == "array" else {} if kind == "object" else None


def _is_null(schema: Any) -> bool:
    return isinstance(schema, Mapping) and schema.get("type") == "null"


def _merge(schema: Mapping[str, Any], parts: list[Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
    properties: dict[str, Any] = dict(merged.get("properties") or {})
    required: list[Any] = list(merged.get("required") or [])
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, Mapping):
                properties.update(value)
            elif key == "required" and isinstance(value, list):
                required.extend(value)
            else:
                merged.setdefault(key, value)
    if properties:
        merged["properties"] = properties
        merged.setdefault("type", "object")
    if required:
        merged["required"] = required
    return merged


def _type_of(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str) and k != "null"]
        kind = kinds[0] if kinds else ("null" if "null" in kind else None)
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _float_or(value: Any, default: float) -> float:
    return (
        float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
    )


def _int_or(value: Any, default: int) -> int:
    return (
        int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
    )


def _bound(
    schema: Mapping[str, Any], inclusive: str, exclusive: str, default: int, *, up: bool
) -> int:
    """An integer bound from minimum/maximum or their exclusive forms."""
    value = schema.get(inclusive)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.ceil(value) if up else math.floor(value)
    value = schema.get(exclusive)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.floor(value) + 1 if up else math.ceil(value) - 1
    return default


def dumps(value: Any) -> str:
    """Compact ASCII JSON, as tool arguments and structured output are sent."""
    return json.dumps(value, separators=_JSON_SEPARATORS)
