"""The admin API as an OpenAPI 3.1 document, written from admin/api.py's OPERATIONS.

Paths, methods and statuses come from the operation table the app routes from;
bodies, query parameters and answers are pydantic's JSON Schema of the models
in admin/schema.py that check and write them. Nothing here is written twice.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response

from admin import schema
from admin.api import OPERATIONS, PREFIX, Operation

REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "A bad body, query parameter or argument; `param` names it.",
    "401": "No credential, or an unknown, revoked or expired key.",
    "403": "A valid key without the admin role.",
    "404": "No such key or tenant.",
    "503": "A service behind the admin API is unavailable; retry.",
}


def _models() -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [schema.ErrorEnvelope]
    for op in OPERATIONS:
        for model in (op.body, op.answer):
            if model is not None and model not in found:
                found.append(model)
    return found


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    properties = model.model_json_schema()["properties"]
    return [
        {"name": name, "in": "query", "required": False, "schema": properties[name]}
        for name in model.model_fields
    ]


def _operation(op: Operation, refs: dict[Any, str]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "operationId": op.handler.__name__,
        "summary": op.summary,
        "security": [{"adminKey": []}],
        "parameters": [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", op.path)
        ],
    }
    if op.query is not None:
        doc["parameters"] += _query_parameters(op.query)
    if op.body is not None:
        doc["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": refs[op.body]}}},
        }
    content: dict[str, Any] = {}
    if op.answer is not None:
        content["application/json"] = {"schema": {"$ref": refs[op.answer]}}
    if op.csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    error = {"application/json": {"schema": {"$ref": refs[schema.ErrorEnvelope]}}}
    doc["responses"] = {
        str(op.status): {"description": op.summary, "content": content},
        **{status: {"description": text, "content": error} for status, text in _ERRORS.items()},
    }
    return doc


@functools.cache
def document() -> dict[str, Any]:
    models = _models()
    keys, definitions = models_json_schema(
        [(m, "validation" if m in {op.body for op in OPERATIONS} else "serialization")
         for m in models],
        ref_template=REF,
    )  # fmt: skip
    refs: dict[Any, str] = {model: keys[(model, mode)]["$ref"] for (model, mode) in keys}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(PREFIX + op.path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "meshgate admin API",
            "version": "1",
            "description": "Keys, tenants, usage and spend, models and the audit log. "
            "Send an admin key as `Authorization: Bearer ...`; every error is OpenAI's envelope.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": definitions.get("$defs", {}),
            "securitySchemes": {"adminKey": {"type": "http", "scheme": "bearer"}},
        },
    }


@functools.cache
def document_json() -> bytes:
    return orjson.dumps(document())


async def openapi_json(request: Request) -> Response:
    return Response(document_json(), media_type="application/json")
