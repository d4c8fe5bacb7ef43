"""The validators are authored against openai-python 1.109.1: the pin cannot drift silently."""

from __future__ import annotations

import copy
import json
from importlib.metadata import version
from pathlib import Path
from typing import Any

from services.validation import chat, completions, embeddings, responses
from services.validation.sdk_snapshot import ROOTS, SNAPSHOT, diff, snapshot

ROOT = Path(__file__).resolve().parents[1]


def _checked_in() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SNAPSHOT.read_text())
    return data


def test_installed_sdk_matches_the_audited_snapshot() -> None:
    changes = diff(_checked_in(), snapshot())
    assert not changes, (
        "the installed openai SDK's request shape differs from services/validation/sdk_snapshot.json.\n"
        "Audit the validators and docs/compatibility.md against these changes, then run\n"
        "`.venv/bin/python -m services.validation.sdk_snapshot --write`:\n  " + "\n  ".join(changes)
    )


def test_pin_is_the_same_everywhere() -> None:
    assert version("openai") == _checked_in()["openai_version"] == "1.109.1"
    assert '"openai==1.109.1"' in (ROOT / "pyproject.toml").read_text()


def test_editing_one_field_of_the_snapshot_is_detected() -> None:
    """Any single edit to the recorded shape shows up as a diff line naming the field."""
    original = _checked_in()
    name = ROOTS["chat"]
    for field, edit in [("temperature", {"required": True}), ("seed", {"type": "str"})]:
        edited = copy.deepcopy(original)
        edited["types"][name][field].update(edit)
        assert diff(edited, original) == [
            f"~ {name}.{field}: {edited['types'][name][field]} -> {original['types'][name][field]}"
        ]
    removed = copy.deepcopy(original)
    del removed["types"][name]["n"]
    assert diff(removed, original) == [f"~ {name}.n: None -> {original['types'][name]['n']}"]


def _fields(root: str) -> dict[str, Any]:
    fields: dict[str, Any] = _checked_in()["types"][ROOTS[root]]
    return fields


def test_modelled_fields_exist_in_the_sdk_with_the_same_required_ness() -> None:
    chat_fields = {**_fields("chat"), **_fields("chat_streaming")}
    assert chat.MODELLED <= set(chat_fields)
    assert {f for f, spec in chat_fields.items() if spec["required"] and f != "stream"} == {
        "model",
        "messages",
    }
    text_fields = {**_fields("completions"), **_fields("completions_streaming")}
    assert completions.MODELLED <= set(text_fields)
    assert {f for f, spec in text_fields.items() if spec["required"] and f != "stream"} == {
        "model",
        "prompt",
    }
    embedding_fields = _fields("embeddings")
    assert embeddings.MODELLED <= set(embedding_fields)
    assert {f for f, spec in embedding_fields.items() if spec["required"]} == {"model", "input"}


def test_roles_and_part_types_match_the_sdk() -> None:
    types = _checked_in()["types"]
    messages = _fields("chat")["messages"]["type"]
    roles = set()
    for name in types:
        if name.endswith("MessageParam") and name in messages:
            literal = types[name]["role"]["type"]
            roles.add(literal.removeprefix("Literal['").removesuffix("']"))
    assert roles == set(chat.ROLES)


def test_every_responses_field_of_the_sdk_is_modelled() -> None:
    """Each field is served, forwarded, accepted or refused on purpose: none passes unread."""
    fields = {**_fields("responses"), **_fields("responses_streaming")}
    assert set(fields) == responses.MODELLED


def _literals(rendered: str) -> set[str]:
    inner = rendered.removeprefix("Literal[").removesuffix("]")
    return {item.strip().strip("'") for item in inner.split(",")}


def test_responses_tool_types_are_the_sdks() -> None:
    """TOOL_TYPES lists every `type` of the SDK's ToolParam union, so that a built-in tool
    is refused by name rather than as an unknown value."""
    types = _checked_in()["types"]
    tools = _fields("responses")["tools"]["type"]
    listed: set[str] = set()
    for name, fields in types.items():
        if name in tools and "type" in fields:
            listed |= _literals(fields["type"]["type"])
    assert listed == set(responses.TOOL_TYPES)
