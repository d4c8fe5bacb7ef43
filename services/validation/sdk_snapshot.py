"""The request shape of the pinned openai SDK, as a comparable snapshot.

The validators in this package are written against openai-python 1.109.1.
`sdk_snapshot.json` records that SDK's request TypedDicts (field names,
required-ness and types, recursively); tests/test_sdk_snapshot.py compares it
with the installed SDK, so bumping the pin fails until someone audits the diff.

Regenerate after an audit with:
    .venv/bin/python -m services.validation.sdk_snapshot --write
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import typing_extensions as tx

SNAPSHOT = Path(__file__).with_name("sdk_snapshot.json")

ROOTS = {
    "chat": "openai.types.chat.completion_create_params.CompletionCreateParamsBase",
    "chat_streaming": "openai.types.chat.completion_create_params.CompletionCreateParamsStreaming",
    "completions": "openai.types.completion_create_params.CompletionCreateParamsBase",
    "completions_streaming": "openai.types.completion_create_params.CompletionCreateParamsStreaming",
    "embeddings": "openai.types.embedding_create_params.EmbeddingCreateParams",
    "responses": "openai.types.responses.response_create_params.ResponseCreateParamsBase",
    "responses_streaming": "openai.types.responses.response_create_params.ResponseCreateParamsStreaming",
}


def _load(qualified: str) -> Any:
    module, _, name = qualified.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def _qualified(tp: Any) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


def _render(tp: Any, pending: list[Any]) -> str:
    """A stable string for a type; TypedDicts render as their qualified name and are queued."""
    origin = tx.get_origin(tp)
    args = tx.get_args(tp)
    if origin is tx.Annotated:
        extras = [getattr(m, "alias", None) for m in tp.__metadata__]
        inner = _render(args[0], pending)
        alias = next((a for a in extras if a), None)
        return f"{inner} (alias {alias!r})" if alias else inner
    if origin in (tx.Required, tx.NotRequired):
        return _render(args[0], pending)
    if origin is tx.Literal:
        # Sorted: typing caches Literals by equality, which ignores order, so the order
        # seen would depend on which module first wrote an equal Literal.
        return "Literal[" + ", ".join(sorted(repr(a) for a in args)) + "]"
    if origin in (typing.Union, types.UnionType):
        return "Union[" + ", ".join(_render(a, pending) for a in args) + "]"
    if tx.is_typeddict(tp):
        pending.append(tp)
        return _qualified(tp)
    if origin is not None:
        name = getattr(origin, "__qualname__", str(origin))
        return f"{name}[" + ", ".join(_render(a, pending) for a in args) + "]"
    if tp is type(None):
        return "None"
    if isinstance(tp, type):
        return tp.__qualname__
    return str(tp)


def _required(tp: Any, field: str, hint: Any) -> bool:
    """Required[...] as written; __required_keys__ alone misses it under postponed annotations."""
    origin = tx.get_origin(hint)
    if origin is tx.Required:
        return True
    return origin is not tx.NotRequired and field in tp.__required_keys__ and tp.__total__


def snapshot() -> dict[str, Any]:
    """Every TypedDict reachable from the roots: field -> {type, required}."""
    import openai

    pending = [_load(q) for q in ROOTS.values()]
    shapes: dict[str, dict[str, dict[str, Any]]] = {}
    while pending:
        tp = pending.pop()
        name = _qualified(tp)
        if name in shapes:
            continue
        hints = tx.get_type_hints(tp, include_extras=True)
        shapes[name] = {
            field: {"type": _render(hint, pending), "required": _required(tp, field, hint)}
            for field, hint in sorted(hints.items())
        }
    return {
        "openai_version": openai.__version__,
        "roots": ROOTS,
        "types": dict(sorted(shapes.items())),
    }


def diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences, one line each, for the audit."""
    lines = []
    if old.get("openai_version") != new.get("openai_version"):
        lines.append(f"openai version: {old.get('openai_version')} -> {new.get('openai_version')}")
    old_types, new_types = old.get("types", {}), new.get("types", {})
    for name in sorted(set(old_types) | set(new_types)):
        before, after = old_types.get(name), new_types.get(name)
        if before is None:
            lines.append(f"+ type {name}")
            continue
        if after is None:
            lines.append(f"- type {name}")
            continue
        for field in sorted(set(before) | set(after)):
            if before.get(field) != after.get(field):
                lines.append(f"~ {name}.{field}: {before.get(field)} -> {after.get(field)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--write", action="store_true", help="overwrite sdk_snapshot.json after an audit"
    )
    args = parser.parse_args(argv)
    current = snapshot()
    if args.write:
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        print(f"wrote {SNAPSHOT} ({len(current['types'])} types)")
        return 0
    changes = diff(json.loads(SNAPSHOT.read_text()), current)
    print("\n".join(changes) or "snapshot matches the installed SDK")
    return 1 if changes else 0


if __name__ == "__main__":
    sys.exit(main())
