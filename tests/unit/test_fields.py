"""The fields a spec declares, checked without DSPy, in the front and again in the worker (dspy_pool.fields)."""

import pytest

from dspy_pool.errors import InvalidArgument
from dspy_pool.fields import MAX_FIELDS, MAX_TYPE_CHARS, declared_fields
from dspy_pool.server.registry import check_spec
from dspy_pool.v1 import dspy_pool_pb2 as pb


def test_names_come_from_the_signature_or_the_field_lists():
    """Input and output names as DSPy would read them, typed or not."""
    assert declared_fields(pb.ProgramSpec(signature="context: list[str], question -> answer: int")).inputs == ("context", "question")
    listed = pb.ProgramSpec(input_fields=[pb.FieldSpec(name="a", type="int")], output_fields=[pb.FieldSpec(name="b")])
    assert declared_fields(listed).outputs == ("b",)


def test_the_front_refuses_too_wide_and_duplicate_specs():
    """check_spec stops 10,000 fields and duplicate names before any worker sees them."""
    wide = pb.ProgramSpec(name="w", input_fields=[pb.FieldSpec(name=f"f{i}") for i in range(10_000)],
                          output_fields=[pb.FieldSpec(name="out")])
    with pytest.raises(InvalidArgument, match=f"at most {MAX_FIELDS}"):
        check_spec(wide, ["predict"])
    with pytest.raises(InvalidArgument, match="twice"):
        check_spec(pb.ProgramSpec(name="d", signature="a, b, a -> c"), ["predict"])


def test_a_long_listed_type_is_refused_before_parsing():
    """A field list type longer than MAX_TYPE_CHARS is refused (the front would otherwise parse megabytes)."""
    spec = pb.ProgramSpec(input_fields=[pb.FieldSpec(name="a", type="list[" * 200 + "int" + "]" * 200)],
                          output_fields=[pb.FieldSpec(name="b")])
    with pytest.raises(InvalidArgument, match=f"longer than {MAX_TYPE_CHARS}"):
        declared_fields(spec)


@pytest.mark.parametrize("signature", ["a -> b -> c", "a -> b: list[", "a, *rest -> b", "a=1 -> b", "x: antigravity -> y"])
def test_unusual_signatures_are_refused_with_a_reason(signature):
    """Two arrows, a syntax error, star or default arguments, or an unknown type name: INVALID_ARGUMENT."""
    with pytest.raises(InvalidArgument):
        declared_fields(pb.ProgramSpec(signature=signature))
