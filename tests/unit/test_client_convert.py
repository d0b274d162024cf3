"""The Python client's Struct conversion (clients/python/dspy_pool_client/convert.py) at its edges."""

from __future__ import annotations

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "clients" / "python"))

from dspy_pool_client.convert import from_struct, to_struct  # noqa: E402


@pytest.mark.parametrize("inputs", [["question", "hi"], "question=hi", 42])
def test_inputs_that_are_not_a_mapping_are_a_type_error(inputs):
    """A list or a string raised AttributeError ('list' object has no attribute 'items'), not the documented TypeError."""
    with pytest.raises(TypeError, match="mapping of names to values"):
        to_struct(inputs)


def test_the_largest_exact_integer_comes_back_as_the_int_it_went_as():
    """2^53 is accepted on the way out, and came back as the float 9007199254740992.0."""
    assert from_struct(to_struct({"n": 2**53, "m": -(2**53)})) == {"n": 2**53, "m": -(2**53)}
    assert type(from_struct(to_struct({"n": 2**53}))["n"]) is int
