"""docs/ is generated from the code that defines it, and matches the API page's matrices."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from meshgate.errors import CATALOGUE
from services.validation import chat, completions, embeddings, responses, surface

ROOT = Path(__file__).resolve().parents[1]


def _documents() -> dict[Path, str]:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    documents: dict[Path, str] = module.documents()
    return documents


def test_docs_are_fresh() -> None:
    for path, text in _documents().items():
        assert path.read_text() == text, f"{path.name} is stale: run `python scripts/gen_docs.py`"


def test_compatibility_tables_match_the_validators() -> None:
    assert surface.field_names(surface.CHAT_FIELDS) == chat.MODELLED
    assert surface.field_names(surface.COMPLETIONS_FIELDS) == completions.MODELLED
    assert surface.field_names(surface.EMBEDDINGS_FIELDS) == embeddings.MODELLED
    assert surface.field_names(surface.RESPONSES_FIELDS) == responses.MODELLED


# The API page's own matrices (seed/inference-api-compatibility.txt), row by row.
PAGE_CHAT = {
    "model": "Yes", "messages": "Yes", "temperature": "Yes", "top_p": "Yes", "max_tokens": "Yes",
    "stop": "Yes", "seed": "Yes", "user": "Yes", "stream": "Yes", "stream_options": "Yes",
    "tools": "Yes", "tool_choice": "Yes", "response_format: json_object": "Yes",
    "response_format: json_schema": "Partial", "logprobs": "No", "top_logprobs": "No", "n": "No",
    "presence_penalty": "Yes", "frequency_penalty": "Yes",
}  # fmt: skip
PAGE_ENDPOINTS = {
    "POST /v1/chat/completions": "Yes", "POST /v1/completions": "Yes", "GET /v1/models": "Yes",
    "POST /v1/embeddings": "Yes", "POST /v1/fine-tuning": "No",
    "POST /v1/assistants, /v1/threads, /v1/runs": "No", "POST /v1/batches": "No",
    "GET /v1/files, /v1/files/*": "No",
}  # fmt: skip
PAGE_RESPONSE = {
    "id, created, model, choices, usage": "Yes",
    "usage.cache_read_input_tokens, usage.cache_creation_input_tokens": "Yes",
    "system_fingerprint": "No",
}


def test_support_levels_match_the_page() -> None:
    ours = {name: support for name, support, _ in surface.CHAT_FIELDS}
    assert {k: ours.get(k) for k in PAGE_CHAT} == PAGE_CHAT
    endpoints = {name: support for name, support, _ in surface.ENDPOINTS}
    assert {k: endpoints.get(k) for k in PAGE_ENDPOINTS} == PAGE_ENDPOINTS
    assert {name: support for name, support, _ in surface.RESPONSE_FIELDS} == PAGE_RESPONSE


def test_every_error_code_in_the_code_is_documented() -> None:
    documented = {e.code for e in CATALOGUE}
    used: set[str] = set()
    for folder in ("edge", "services", "meshgate"):
        for source in (ROOT / folder).rglob("*.py"):
            if "/v1/" in str(source):
                continue
            text = source.read_text()
            used |= set(re.findall(r'\bcode="([a-z_]+)"', text))
            used |= set(re.findall(r'_unauthorized\([^()]*?,\s*"([a-z_]+)",?\s*\)', text, re.S))
    assert used <= documented, f"undocumented codes: {sorted(used - documented)}"


def test_only_the_narrow_set_has_codes() -> None:
    codes = {e.code for e in CATALOGUE if e.code}
    assert codes <= {
        "context_length_exceeded",
        "model_not_found",
        "missing_api_key",
        "invalid_auth_scheme",
        "invalid_api_key",
        "revoked_api_key",
        "expired_api_key",
        # auth's role codes: a valid key without the role its endpoint needs (403)
        "api_role_required",
        "admin_role_required",
        "rate_limit_exceeded",
        "insufficient_quota",
    }
