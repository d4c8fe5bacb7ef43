"""Fuzzing the Responses validator and the endpoint: whatever the body, the answer is a
translated chat request or a 400 naming a field, never a crash.

The validator runs in-process (cheap, so many examples); a smaller run goes over HTTP to
the session mesh, where each answer must be a 200 or OpenAI's envelope below 500.
Hypothesis runs derandomized, so a CI run is reproducible.
"""

from __future__ import annotations

from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshgate.structs import from_dict
from services.validation import checks as c
from services.validation import responses
from services.validation.responses import validate_response
from tests.conftest import RunningMesh
from tests.test_fuzz import JSON, check, dumps

MINI = "meshgate/reference-mini"
VALID = {"model": MINI, "input": "hi", "max_output_tokens": 16}
FIELDS = st.sampled_from(sorted(responses.MODELLED | {"top_k"}))
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
KIND = st.sampled_from(
    ["message", "function_call", "function_call_output", "reasoning", "item_reference", "x"]
)
PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "input_image", "output_text", "refusal", "input_file"])},
    optional={"text": JSON, "image_url": st.text(max_size=20) | JSON, "detail": JSON,
              "refusal": JSON, "file_id": JSON},
)  # fmt: skip
ITEM = st.fixed_dictionaries(
    {},
    optional={
        "type": KIND,
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]),
        "content": st.text(max_size=20) | st.lists(PART, max_size=3) | JSON,
        "call_id": JSON,
        "name": JSON,
        "arguments": JSON,
        "output": JSON,
        "status": JSON,
    },
)
TOOL = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "web_search", "mcp", "custom", "?"])},
    optional={"name": st.sampled_from(["f", "g h"]) | JSON, "parameters": JSON, "strict": JSON,
              "description": JSON},
)  # fmt: skip


def _translates_or_names_a_field(body: dict[str, Any]) -> None:
    try:
        translated = validate_response(body)
    except c.Invalid as exc:
        assert exc.message
        return
    translated.request.SerializeToString()
    from_dict(translated.echo)  # what travels to the edge as a Struct


@settings(FUZZ, max_examples=400)
@given(changes=st.dictionaries(FIELDS, JSON, min_size=1, max_size=4))
def test_random_values_in_every_field(changes: dict[str, Any]) -> None:
    _translates_or_names_a_field({**VALID, **changes})


@settings(FUZZ, max_examples=400)
@given(items=st.lists(ITEM, min_size=1, max_size=5), tools=st.lists(TOOL, max_size=2) | JSON)
def test_random_items_and_tools(items: list[Any], tools: Any) -> None:
    _translates_or_names_a_field({**VALID, "input": items, "tools": tools})


@settings(FUZZ, max_examples=60)
@given(
    items=st.lists(ITEM, min_size=1, max_size=4),
    changes=st.dictionaries(FIELDS, JSON, max_size=3),
)
def test_random_bodies_over_http(
    http: httpx.Client, mesh: RunningMesh, items: list[Any], changes: dict[str, Any]
) -> None:
    body = {**VALID, "input": items, **changes}
    response = http.post(
        "/v1/responses", content=dumps(body), headers={"Authorization": f"Bearer {mesh.api_key}"}
    )
    check(response)
