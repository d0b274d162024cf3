"""google.protobuf.Struct <-> plain Python values, for inputs and outputs.

Struct numbers are doubles on the wire; integral values come back as int so a
prompt shows `3`, not `3.0`. Outputs of any type DSPy produces (pydantic
models, dataclasses, enums) are reduced to JSON-compatible values first.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

from google.protobuf import struct_pb2

MAX_EXACT_INT = 2**53  # a Struct number is a double: integers up to this travel exactly


def _from_value(value: Any) -> Any:
    if isinstance(value, struct_pb2.Struct):
        return {key: _from_value(item) for key, item in value.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [_from_value(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < MAX_EXACT_INT:
        return int(value)
    return value


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _from_value(item) for key, item in message.items()}


def list_to_python(message: struct_pb2.ListValue) -> list[Any]:
    return [_from_value(item) for item in message]


def to_jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-compatible copy of `value`; unknown objects become their str()."""
    if _depth > 64:
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, _depth + 1)
    if isinstance(value, dict):
        return {str(key): to_jsonable(item, _depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(item, _depth + 1) for item in value]
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return to_jsonable(model_dump(mode="json"), _depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value), _depth + 1)
    return str(value)


def dict_to_struct(values: dict[str, Any], message: struct_pb2.Struct | None = None) -> struct_pb2.Struct:
    message = message if message is not None else struct_pb2.Struct()
    message.update(to_jsonable(values))
    return message


def struct_depth(message: struct_pb2.Struct | struct_pb2.ListValue, limit: int) -> int:
    """Nesting depth of a Struct, stopping early once it passes `limit`."""
    stack: list[tuple[Any, int]] = [(message, 1)]
    deepest = 0
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        items = node.values() if isinstance(node, struct_pb2.Struct) else node
        for item in items:
            if isinstance(item, (struct_pb2.Struct, struct_pb2.ListValue)):
                stack.append((item, depth + 1))
    return deepest


def check_struct(message: struct_pb2.Struct | struct_pb2.ListValue, max_depth: int, where: str) -> None:
    """Raise ValueError naming the first Value with no kind set, or nesting past `max_depth`.

    Reads the raw Value messages: converting to Python (`.items()`) is what
    raises protobuf's bare "Value not set", with no hint of where.
    """
    # Runs on every call. A flat Struct whose values are all set (the usual inputs) is one pass over its values;
    # anything else takes the walk below, where paths are only spelled out for containers and the Value at fault.
    if max_depth >= 1 and isinstance(message, struct_pb2.Struct):
        fields = message.fields
        for key in fields:  # keys and lookups: the map's values() is a pure-Python view that does the same, slower
            kind = fields[key].WhichOneof("kind")
            if kind is None or kind == "struct_value" or kind == "list_value":
                break
        else:
            return
    stack: list[tuple[Any, int, str]] = [(message, 1, where)]
    while stack:
        node, depth, path = stack.pop()
        if depth > max_depth:
            raise ValueError(f"{path}: nested deeper than {max_depth} levels")
        is_struct = isinstance(node, struct_pb2.Struct)
        for key, value in node.fields.items() if is_struct else enumerate(node.values):
            kind = value.WhichOneof("kind")
            if kind == "struct_value" or kind == "list_value":
                child = f"{path}.{key}" if is_struct else f"{path}[{key}]"
                stack.append((value.struct_value if kind == "struct_value" else value.list_value, depth + 1, child))
            elif kind is None:
                child = f"{path}.{key}" if is_struct else f"{path}[{key}]"
                raise ValueError(f"{child}: value has no kind set (null, number, string, bool, struct or list)")
