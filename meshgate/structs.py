"""`google.protobuf.Struct` <-> plain JSON values, keeping integers integers.

A Struct stores every number as a double, so `{"top_k": 5}` would come back as
`5.0`, which some engines reject for integer parameters. Integral doubles
within float64's exact range are turned back into ints.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2


def integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, list):
        return [integral(v) for v in value]
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    return value


def to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    result: dict[str, Any] = integral(json_format.MessageToDict(struct))
    return result


def from_dict(fields: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(fields)
    return struct
