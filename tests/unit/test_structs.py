"""google.protobuf.Struct <-> plain Python values."""

from __future__ import annotations

import dataclasses
import enum
import math

import pydantic
from google.protobuf import struct_pb2

import pytest

from dspy_pool.structs import check_struct, dict_to_struct, list_to_python, struct_depth, struct_to_dict, to_jsonable


class Color(enum.Enum):
    RED = "red"


class Answer(pydantic.BaseModel):
    text: str
    score: float


@dataclasses.dataclass
class Point:
    x: int
    y: int


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"child": value}
    return value


def test_round_trip_nested_dict_and_list():
    """Nested dicts, lists, strings, bools and None survive a round trip."""
    values = {"q": "hi", "flags": [True, False], "ctx": {"docs": ["a", {"b": None}]}, "score": 0.5}
    assert struct_to_dict(dict_to_struct(values)) == values


def test_integral_floats_come_back_as_int():
    """Whole numbers come back as int, fractional ones as float."""
    out = struct_to_dict(dict_to_struct({"n": 3, "f": 3.0, "x": 2.5, "list": [1, 2.0]}))
    assert out == {"n": 3, "f": 3, "x": 2.5, "list": [1, 2]}
    assert type(out["f"]) is int and type(out["x"]) is float


def test_huge_integral_float_stays_float():
    """Integral values beyond 2**53 stay float, since they are not exact ints."""
    assert type(struct_to_dict(dict_to_struct({"big": 1e20}))["big"]) is float


def test_list_to_python_converts_items():
    """list_to_python converts a ListValue and its nested structs."""
    lv = struct_pb2.ListValue()
    lv.extend([1.0, "a", {"k": 2.0}])
    assert list_to_python(lv) == [1, "a", {"k": 2}]


def test_dict_to_struct_fills_given_message():
    """dict_to_struct writes into the message passed in and returns it."""
    message = struct_pb2.Struct()
    assert dict_to_struct({"a": 1}, message) is message
    assert message["a"] == 1.0


def test_to_jsonable_pydantic_model():
    """A pydantic model becomes its JSON-mode dump."""
    assert to_jsonable(Answer(text="4", score=0.9)) == {"text": "4", "score": 0.9}


def test_to_jsonable_dataclass():
    """A dataclass instance becomes a dict of its fields."""
    assert to_jsonable(Point(1, 2)) == {"x": 1, "y": 2}


def test_to_jsonable_enum():
    """An enum becomes its value."""
    assert to_jsonable({"c": Color.RED}) == {"c": "red"}


def test_to_jsonable_set_and_tuple():
    """Sets and tuples become lists."""
    assert to_jsonable({"s": {7}, "t": (1, 2)}) == {"s": [7], "t": [1, 2]}


def test_to_jsonable_non_finite_floats():
    """NaN and infinities become strings, since JSON has no such numbers."""
    assert to_jsonable([math.nan, math.inf, -math.inf, 1.5]) == ["nan", "inf", "-inf", 1.5]


def test_to_jsonable_dict_keys_become_strings():
    """Non-string dict keys become strings."""
    assert to_jsonable({1: "a", None: "b"}) == {"1": "a", "None": "b"}


def test_to_jsonable_unknown_object_is_str():
    """Objects with no known shape become their str()."""
    assert to_jsonable(object) == str(object)


def test_to_jsonable_pydantic_output_fits_a_struct():
    """Outputs holding models, dataclasses and enums can be put into a Struct."""
    out = struct_to_dict(dict_to_struct({"a": Answer(text="x", score=1.0), "p": Point(1, 2), "c": Color.RED}))
    assert out == {"a": {"text": "x", "score": 1}, "p": {"x": 1, "y": 2}, "c": "red"}


def test_struct_depth_counts_nesting():
    """A flat struct has depth 1; each nested struct or list adds one."""
    assert struct_depth(struct_pb2.Struct(), limit=10) == 1
    assert struct_depth(dict_to_struct({"a": 1}), limit=10) == 1
    assert struct_depth(dict_to_struct(nested(4)), limit=10) == 4
    assert struct_depth(dict_to_struct({"a": [[1]]}), limit=10) == 3


def test_struct_depth_stops_past_limit():
    """Past the limit, struct_depth returns limit + 1 rather than walking everything."""
    assert struct_depth(dict_to_struct(nested(50)), limit=5) == 6


def test_struct_depth_at_limit_is_exact():
    """A struct exactly as deep as the limit reports its depth."""
    assert struct_depth(dict_to_struct(nested(5)), limit=5) == 5


def test_check_struct_accepts_flat_and_nested_values_that_are_set():
    """A Struct whose every Value has a kind passes, flat or nested within the limit."""
    check_struct(dict_to_struct({"question": "q", "n": 3, "ok": True, "none": None}), 1, "inputs")
    check_struct(dict_to_struct({"a": {"b": [1, {"c": "d"}]}}), 4, "inputs")


def test_check_struct_names_an_unset_value_at_the_top():
    """A top-level Value with no kind set is refused, naming its key."""
    message = dict_to_struct({"question": "q"})
    message.fields["empty"].Clear()
    with pytest.raises(ValueError, match=r"^inputs\.empty: value has no kind set"):
        check_struct(message, 8, "inputs")


def test_check_struct_names_an_unset_value_deep_inside():
    """A nested Value with no kind set is refused with its path."""
    message = dict_to_struct({"a": {"b": [1, 2]}})
    message["a"]["b"].values.add()
    with pytest.raises(ValueError, match=r"^inputs\.a\.b\[2\]: value has no kind set"):
        check_struct(message, 8, "inputs")


def test_check_struct_refuses_nesting_past_the_limit():
    """Nesting deeper than max_depth is refused; a limit of 0 refuses even a flat Struct."""
    with pytest.raises(ValueError, match="nested deeper than 2 levels"):
        check_struct(dict_to_struct(nested(3)), 2, "inputs")
    check_struct(dict_to_struct(nested(2)), 2, "inputs")
    with pytest.raises(ValueError, match="nested deeper than 0 levels"):
        check_struct(dict_to_struct({"question": "q"}), 0, "inputs")
