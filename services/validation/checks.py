"""Typed field checks that fail with OpenAI-shaped messages and bracket paths.

Every check raises `Invalid(message, param)`; the server turns it into a 400
`invalid_request_error` with `code: null`, as the API page prescribes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

import orjson

from meshgate.errors import ApiError, invalid_request


class Invalid(Exception):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def to_api_error(self) -> ApiError:
        return invalid_request(self.message, self.param)


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def describe(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return _KIND_NAMES.get(type(value), "an unknown value")


def wrong_type(path: str, expected: str, value: object) -> NoReturn:
    raise Invalid(
        f"Invalid type for '{path}': expected {expected}, but got {describe(value)} instead.", path
    )


def missing(path: str) -> NoReturn:
    raise Invalid(f"Missing required parameter: '{path}'.", path)


def parse_body(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, no deeper than protobuf can carry."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Invalid(
            "We could not parse the JSON body of your request. The body must be valid JSON "
            "encoded as UTF-8 (see https://platform.openai.com/docs/api-reference).",
            None,
        ) from None
    if not isinstance(data, dict):
        raise Invalid(
            f"The request body must be a JSON object, but got {describe(data)} instead.", None
        )
    for key, value in data.items():
        shallow(value, key, 1)
    return data


def join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def require(obj: Mapping[str, Any], key: str, path: str = "") -> Any:
    value = obj.get(key)
    if value is None:
        missing(join(path, key))
    return value


def string(
    value: object, path: str, *, non_empty: bool = False, max_length: int | None = None
) -> str:
    if not isinstance(value, str):
        wrong_type(path, "a string", value)
    if non_empty and not value:
        raise Invalid(f"Invalid '{path}': empty string. Expected a non-empty string.", path)
    if max_length is not None and len(value) > max_length:
        raise Invalid(
            f"Invalid '{path}': string too long. Expected a string with maximum length "
            f"{max_length}, but got a string with length {len(value)} instead.",
            path,
        )
    return value


def matches(value: str, path: str, pattern: re.Pattern[str]) -> str:
    """`value` if the whole of it matches `pattern`; OpenAI quotes the pattern back."""
    if not pattern.fullmatch(value):
        raise Invalid(
            f"Invalid '{path}': string does not match pattern. Expected a string that matches "
            f"the pattern '{pattern.pattern}'.",
            path,
        )
    return value


def boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        wrong_type(path, "a boolean", value)
    return value


INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# JSON nesting allowed in fields that pass through as a protobuf Struct (each level of a
# JSON array costs protobuf two, and protobuf stops at 100).
MAX_DEPTH = 42


def integer(
    value: object, path: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """An integer that also fits the int64 field it travels in."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        wrong_type(path, "an integer", value)
    low = INT64_MIN if minimum is None else max(minimum, INT64_MIN)
    high = INT64_MAX if maximum is None else min(maximum, INT64_MAX)
    _bounds(value, path, low, high, "integer")
    return value


def shallow(value: object, path: str, depth: int = 0) -> None:
    """Refuse JSON nested deeper than MAX_DEPTH: protobuf could not carry it."""
    if depth > MAX_DEPTH:
        raise Invalid(
            f"Invalid '{path}': nested too deeply. Expected at most {MAX_DEPTH} levels of arrays and objects.",
            path,
        )
    if isinstance(value, dict):
        for key, item in value.items():
            shallow(item, join(path, str(key)), depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            shallow(item, join(path, index), depth + 1)


def number(
    value: object, path: str, *, minimum: float | None = None, maximum: float | None = None
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        wrong_type(path, "a number", value)
    _bounds(value, path, minimum, maximum, "decimal")
    return float(value)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _bounds(
    value: float, path: str, minimum: float | None, maximum: float | None, kind: str
) -> None:
    if minimum is not None and value < minimum:
        raise Invalid(
            f"Invalid '{path}': {kind} below minimum value. Expected a value >= {_fmt(minimum)}, "
            f"but got {_fmt(value)} instead.",
            path,
        )
    if maximum is not None and value > maximum:
        raise Invalid(
            f"Invalid '{path}': {kind} above maximum value. Expected a value <= {_fmt(maximum)}, "
            f"but got {_fmt(value)} instead.",
            path,
        )


def sampling(body: Mapping[str, Any], out: Any) -> None:
    """temperature, top_p and the two penalties into `out`: the same ranges for chat and
    legacy completions. A null counts as omitted."""
    if body.get("temperature") is not None:
        out.temperature = number(body["temperature"], "temperature", minimum=0, maximum=2)
    if body.get("top_p") is not None:
        out.top_p = number(body["top_p"], "top_p", minimum=0, maximum=1)
    for name in ("presence_penalty", "frequency_penalty"):
        if body.get(name) is not None:
            setattr(out, name, number(body[name], name, minimum=-2, maximum=2))


def array(
    value: object, path: str, *, min_length: int = 0, max_length: int | None = None
) -> list[Any]:
    if not isinstance(value, list):
        wrong_type(path, "an array", value)
    if len(value) < min_length:
        raise Invalid(
            f"Invalid '{path}': empty array. Expected an array with minimum length {min_length}, "
            "but got an empty array instead.",
            path,
        )
    if max_length is not None and len(value) > max_length:
        raise Invalid(
            f"Invalid '{path}': array too long. Expected an array with maximum length {max_length}, "
            f"but got an array with length {len(value)} instead.",
            path,
        )
    return value


def obj(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        wrong_type(path, "an object", value)
    return value


def one_of(value: object, path: str, allowed: Iterable[str]) -> str:
    options = tuple(allowed)
    if not isinstance(value, str):
        wrong_type(path, "a string", value)
    if value not in options:
        shown = value if len(value) <= 40 else value[:20] + "..." + value[-10:]
        listed = (
            ", ".join(f"'{o}'" for o in options[:-1])
            + (f", and '{options[-1]}'" if len(options) > 2 else f" and '{options[-1]}'")
            if len(options) > 1
            else f"'{options[0]}'"
        )
        raise Invalid(f"Invalid value: '{shown}'. Supported values are: {listed}.", path)
    return value


def unsupported(path: str, message: str) -> NoReturn:
    raise Invalid(message, path)
