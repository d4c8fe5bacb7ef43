"""GET /openapi.json is derived from openai-python's types, and meshgate keeps to it.

The document's schemas are the pinned SDK's own (edge/openapi.py) with the
overlay of edge/openapi_overlay.py, which takes its fields from the page's
tables (services/validation/surface.py). These tests check the derivation and
the overlay offline, then run schemathesis against the session mesh: requests
generated from OpenAI's shapes, responses (each SSE chunk too) validated
against OpenAI's response models (schemathesis reads each SSE event's `data` as JSON
and checks it against the `contentSchema` of StreamEvent).

A generated request that breaks the document must be refused with a 4xx,
unless all it breaks is a field the overlay marks `x-meshgate-pass-through`
(forwarded to the engine, which decides). A request that fits the document and
names a catalog model must be served, unless meshgate refuses it for one of the
reasons in REFUSALS, each a documented rule that JSON Schema cannot state (it
depends on the model, or on another field's value).

schemathesis's `from_fixture` + `parametrize` path does not work with pytest 9,
so each operation runs its own derandomized Hypothesis test over
`operation.as_strategy()`, bounded in examples.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31

from edge import openapi, openapi_overlay
from services.validation import surface
from tests.conftest import RunningMesh

DOC = openapi.document()
SCHEMAS = DOC["components"]["schemas"]
REQUESTS = {
    "/v1/chat/completions": ("CreateChatCompletionRequest", surface.CHAT_FIELDS),
    "/v1/completions": ("CreateCompletionRequest", surface.COMPLETIONS_FIELDS),
    "/v1/embeddings": ("CreateEmbeddingRequest", surface.EMBEDDINGS_FIELDS),
    "/v1/responses": ("CreateResponseRequest", surface.RESPONSES_FIELDS),
}
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "meshgate/reference-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    "/v1/completions": {"model": "meshgate/reference-mini", "prompt": "hi", "max_tokens": 2},
    "/v1/embeddings": {"model": "bge-m3", "input": "hi"},
    "/v1/responses": {"model": "meshgate/reference-mini", "input": "hi", "max_output_tokens": 16},
}
OPERATIONS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/responses/{response_id}"),
    ("DELETE", "/v1/responses/{response_id}"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
]
# Catalog models of the sample config; without them nearly every body names an unknown model.
MODELS = {
    "/v1/chat/completions": ["meshgate/reference-pro", "meshgate/reference-mini"],
    "/v1/completions": ["meshgate/reference-mini"],
    "/v1/embeddings": ["bge-m3"],
    "/v1/responses": ["meshgate/reference-pro", "meshgate/reference-mini"],
}
EXAMPLES = {"POST": 60, "GET": 20, "DELETE": 20}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


def validator(name: str, document: dict[str, Any] = DOC) -> jsonschema.Draft202012Validator:
    """A validator for one component, its `$ref`s resolved inside the document."""
    root = {"$ref": openapi_overlay.REF_PREFIX + name, "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


# ---------------------------------------------------------------- the document ----


def test_document_is_valid_openapi_31() -> None:
    assert DOC["openapi"] == "3.1.0"
    problems = [
        f"{list(e.absolute_path)}: {e.message}"
        for e in jsonschema.Draft202012Validator(OPENAPI_31).iter_errors(DOC)
    ]
    assert not problems, problems


def test_document_is_derived_from_the_pinned_sdk() -> None:
    """The installed SDK is the one the validators were audited against, and the one used."""
    assert openai.__version__ == openapi.pinned_sdk()
    assert DOC["info"]["x-openai-python"] == openapi.pinned_sdk()
    for name in ("ChatCompletion", "ChatCompletionChunk", "Completion", "CreateEmbeddingResponse"):
        assert SCHEMAS[name]["title"] == name


def test_document_is_served_once_without_auth(mesh: RunningMesh) -> None:
    response = httpx.get(f"{mesh.origin}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get("x-request-id")
    assert response.content == openapi.document_json()  # built once, served as is
    document = response.json()
    assert {f"{m} {p}" for m, p in OPERATIONS} == {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    }
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert openapi.document_json() is openapi.document_json()


def body_variants(path: str) -> list[dict[str, Any]]:
    name, _ = REQUESTS[path]
    return list(openapi_overlay.variants(SCHEMAS, SCHEMAS[name]))


@pytest.mark.parametrize("path", list(REQUESTS))
def test_every_field_of_the_sdk_is_in_a_table_or_passed_through(path: str) -> None:
    _, rows = REQUESTS[path]
    tabled = surface.field_names(rows)
    for variant in body_variants(path):
        for field, schema in variant["properties"].items():
            marked = schema.get(openapi_overlay.PASS_THROUGH, False)
            assert marked == (field not in tabled), field
            assert (openapi_overlay.SUPPORT in schema) == (field in tabled), field


REFUSED = [
    (path, name, notes)
    for path, (_, rows) in REQUESTS.items()
    for name, support, notes in rows
    if support == "No"
]


def refused_value(schema: dict[str, Any]) -> object:
    """A value the SDK's type takes but the overlay does not: what OpenAI would serve."""
    sdk, narrowed = schema["allOf"]
    for candidate in (True, 2, 1, 0, "x", {"id": "pmpt_x"}):
        if (
            jsonschema.Draft202012Validator({**sdk, "components": DOC["components"]}).is_valid(
                candidate
            )
            and candidate not in narrowed["enum"]
        ):
            return candidate
    raise AssertionError(schema)


@pytest.mark.parametrize(
    ("path", "field", "notes"), REFUSED, ids=[f"{p} {f}" for p, f, _ in REFUSED]
)
def test_a_field_the_page_marks_no_is_refused_as_documented(
    mesh: RunningMesh, path: str, field: str, notes: str
) -> None:
    headers = {"Authorization": f"Bearer {mesh.api_key}"}
    for variant in body_variants(path):
        schema = variant["properties"][field]
        assert schema[openapi_overlay.SUPPORT] == "No"
        value = refused_value(schema)
        response = httpx.post(
            mesh.origin + path, json={**VALID[path], field: value}, headers=headers, timeout=30
        )
        assert response.status_code == 400, (field, value, response.text)
        assert response.json()["error"]["param"] == field
        for allowed in schema["allOf"][1]["enum"]:
            served = httpx.post(
                mesh.origin + path,
                json={**VALID[path], field: allowed},
                headers=headers,
                timeout=30,
            )
            assert served.status_code == 200, (field, allowed, served.text)


def test_the_response_table_is_in_the_response_schemas() -> None:
    for name in ("ChatCompletion", "ChatCompletionChunk", "Completion"):
        assert SCHEMAS[name]["properties"]["system_fingerprint"]["not"] == {}
    usage = SCHEMAS["CompletionUsage"]
    for key in ("cache_read_input_tokens", "cache_creation_input_tokens", "prompt_tokens_details"):
        assert key in usage["required"]
    assert SCHEMAS["PromptTokensDetails"]["required"] == ["cached_tokens"]
    assert {"category", "capabilities", "context_length"} <= set(SCHEMAS["Model"]["required"])
    assert SCHEMAS["ErrorObject"]["required"] == ["message", "type", "param", "code"]


# ------------------------------------------------------------------ schemathesis ----


def relaxed_document() -> dict[str, Any]:
    """The document with every pass-through field allowed any value."""
    relaxed = copy.deepcopy(DOC)
    schemas = relaxed["components"]["schemas"]
    for name, _ in REQUESTS.values():
        for variant in openapi_overlay.variants(schemas, schemas[name]):
            for field, schema in variant["properties"].items():
                if schema.get(openapi_overlay.PASS_THROUGH):
                    variant["properties"][field] = {}
    return relaxed


RELAXED = relaxed_document()
REQUEST_VALIDATORS = {path: validator(name) for path, (name, _) in REQUESTS.items()}
RELAXED_VALIDATORS = {path: validator(name, RELAXED) for path, (name, _) in REQUESTS.items()}


def documented_refusal(path: str, error: dict[str, Any]) -> bool:
    """Whether a 400 is one the operation's `x-meshgate-refusals` lists (by code or param)."""
    refusals = DOC["paths"][path]["post"][openapi_overlay.REFUSALS_KEY]
    for refusal in refusals:
        match = refusal["match"]
        said = f"{error.get('param')}: {error.get('message')}"
        if error.get("code") == match or re.search(match, said):
            return True
    return False


@pytest.fixture(scope="module")
def api_schema(mesh: RunningMesh) -> Any:
    return schemathesis.openapi.from_url(f"{mesh.origin}/openapi.json", timeout=10)


def cases(operation: Any, path: str) -> st.SearchStrategy[Any]:
    """Positive and negative cases; most positive bodies name a real catalog model."""
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    negative = operation.as_strategy(GenerationMode.NEGATIVE)
    if path not in MODELS:
        return st.one_of(positive, negative)

    def with_model(pair: tuple[Any, str | None]) -> Any:
        case, model = pair
        if model is not None and isinstance(case.body, dict):
            case.body["model"] = model
        return case

    real = st.tuples(positive, st.sampled_from([None, *MODELS[path]])).map(with_model)
    return st.one_of(real, negative)


def check_case(case: Any, response: Any, path: str) -> None:
    """What schemathesis's checks cannot know: pass-through fields and documented refusals."""
    status = response.status_code
    body = case.body
    if path not in REQUESTS or not isinstance(body, dict):
        if case.meta.generation.mode.is_negative and path in REQUESTS:
            assert 400 <= status < 500, (status, body)
        return
    fits = REQUEST_VALIDATORS[path].is_valid(body)
    if not fits:
        # It breaks OpenAI's shape: a 4xx, unless only pass-through fields broke it.
        if status < 400:
            problems = [e.message for e in RELAXED_VALIDATORS[path].iter_errors(body)]
            assert not problems, ("a body outside the document was served", problems, body)
    elif status == 400 and body.get("model") in MODELS[path]:
        error = response.json()["error"]
        assert documented_refusal(path, error), ("a body the document allows was refused", error)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api(api_schema: Any, mesh: RunningMesh, method: str, path: str) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {mesh.api_key}"}

    @given(case=cases(operation, path))
    @settings(
        max_examples=EXAMPLES[method],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS)
        check_case(case, response, path)

    run()


def test_an_embedding_is_floats_or_base64_as_the_api_sends_it() -> None:
    """The SDK's type lists floats only (it decodes base64 itself); the wire has both."""
    schema = openapi.document()["components"]["schemas"]["Embedding"]["properties"]["embedding"]
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid([0.25, -1.0])
    assert validator.is_valid("AACAPgAAgL8=")
    assert not validator.is_valid({"vector": [0.25]})
