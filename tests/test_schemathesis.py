"""schemathesis against the OpenAPI document that meshgate serves for itself (GET /openapi.json).

The schema is loaded from the real session mesh over loopback. For every
operation, schemathesis generates positive and negative cases from it, and each
one is sent to the mesh with the dev key. Every response must not be a server
error, must use a documented status code and content type, must match the
schema documented for that status (each SSE event too), and must carry the
documented headers; a case that breaks the request schema must be refused with
a 4xx. Integer fields carry their protobuf widths (int32/int64) in the document,
so generated values stay within what the wire can hold.

schemathesis's `from_fixture` + `parametrize` path does not work with pytest 9
(it touches a private `Function._nodeid`), so the operations are parametrized
here and each one runs its own Hypothesis test over `operation.as_strategy()`.
"""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.definitions import OPENAPI_30

from edge.openapi import DOCUMENT, DOCUMENT_JSON
from tests.conftest import RunningMesh

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]
OPERATIONS = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.json"),
]
# Models of the sample catalog: without them nearly every generated body names an
# unknown model, and the 200 schemas would never be checked.
MODELS = {
    "/v1/chat/completions": ["meshgate/reference-pro", "meshgate/reference-mini"],
    "/v1/completions": ["meshgate/reference-mini"],
    "/v1/embeddings": ["bge-m3"],
}
MAX_EXAMPLES = 100


@pytest.fixture(scope="module")
def api_schema(mesh: RunningMesh) -> Any:
    return schemathesis.openapi.from_url(f"{mesh.origin}/openapi.json", timeout=10)


def test_document_is_served_without_auth(mesh: RunningMesh) -> None:
    response = httpx.get(f"{mesh.origin}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers.get("x-request-id")
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert {f"{m} {p}" for m, p in OPERATIONS} == {
        f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item
    }
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert response.content == DOCUMENT_JSON  # built once, served as is


def test_document_is_valid_openapi() -> None:
    """The document passes the OpenAPI 3.0 meta-schema (the copy schemathesis ships)."""
    assert DOCUMENT["openapi"].startswith("3.0.")
    validator = jsonschema.Draft4Validator(OPENAPI_30)
    problems = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(DOCUMENT)]
    assert not problems, problems


def cases(operation: Any, path: str) -> st.SearchStrategy[Any]:
    """Positive and negative cases; half the positive bodies name a real catalog model."""
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


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api(api_schema: Any, mesh: RunningMesh, method: str, path: str) -> None:
    operation = api_schema[path][method]
    headers = {"Authorization": f"Bearer {mesh.api_key}"}

    @given(case=cases(operation, path))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

    run()
