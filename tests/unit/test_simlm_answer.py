"""The simulated LM's answers: deterministic, typed, and parsed back by DSPy's adapters."""

import json
import os
from typing import Literal

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")

import dspy
import pydantic
import pytest
from dspy.adapters import ChatAdapter, JSONAdapter

from dspy_pool.simlm.answer import complete, count_tokens, parse_inputs, parse_output_fields, stream_pieces


class Person(pydantic.BaseModel):
    name: str
    age: int


class Typed(dspy.Signature):
    """Answer with every kind of field."""

    question: str = dspy.InputField()
    count: int = dspy.OutputField()
    ratio: float = dspy.OutputField()
    ok: bool = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    scores: dict[str, int] = dspy.OutputField()
    kind: Literal["yes", "no way"] = dspy.OutputField()
    person: Person = dspy.OutputField()
    note: str = dspy.OutputField()


def chat_messages(signature, **inputs):
    return ChatAdapter().format(signature, [], inputs)


def round_trip(signature, adapter=None, response_format=None, **inputs):
    adapter = adapter or ChatAdapter()
    return adapter.parse(signature, complete(adapter.format(signature, [], inputs), response_format))


def test_chat_answer_parses_into_every_type():
    """ChatAdapter parses the answer into int, float, bool, list, dict, Literal, model and str."""
    out = round_trip(Typed, question="how many?")
    assert isinstance(out["count"], int) and isinstance(out["ratio"], float) and isinstance(out["ok"], bool)
    assert isinstance(out["tags"], list) and all(isinstance(t, str) for t in out["tags"])
    assert isinstance(out["scores"], dict) and all(isinstance(v, int) for v in out["scores"].values())
    assert out["kind"] in ("yes", "no way")
    assert isinstance(out["person"], Person)
    assert out["note"].startswith("sim answer ")


def test_json_adapter_prompt_gets_json_answer():
    """A JSONAdapter prompt (no response_format) is answered with a JSON object it parses."""
    out = round_trip(Typed, adapter=JSONAdapter(), question="how many?")
    assert set(out) == set(Typed.output_fields)
    assert isinstance(out["person"], Person)


def test_same_messages_give_same_answer():
    """Determinism: the same conversation always gets the same text."""
    messages = chat_messages(Typed, question="same")
    assert complete(messages) == complete(json.loads(json.dumps(messages)))


def test_different_inputs_give_different_answers():
    """The answer depends on the inputs, so caches and routing can be told apart."""
    assert complete(chat_messages(Typed, question="a")) != complete(chat_messages(Typed, question="b"))


def test_str_field_names_first_input():
    """A str output is a sentence with a hash and the start of the first input."""
    out = round_trip(dspy.Signature("question -> answer"), question="What   is\nthe capital?")
    assert out["answer"].startswith("sim answer ")
    assert out["answer"].endswith("to: What is the capital?")


def test_echo_marker_returns_full_input_value():
    """An input containing SIM_ECHO comes back verbatim in str outputs (unicode, newlines)."""
    value = "SIM_ECHO ünïcode ✓ 🎉\n\nsecond paragraph\twith tab"
    out = round_trip(dspy.Signature("context, question -> answer, reasoning"), context="plain", question=value)
    assert out["answer"] == value and out["reasoning"] == value


def test_chat_form_lists_fields_in_order_then_completed():
    """The text is ChatAdapter's section layout, ending with the completed marker."""
    text = complete(chat_messages(dspy.Signature("q -> a, b: int"), q="x"))
    assert text.index("[[ ## a ## ]]") < text.index("[[ ## b ## ]]") < text.index("[[ ## completed ## ]]")
    assert text.endswith("[[ ## completed ## ]]")


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}}},
        {"type": "json_schema", "schema": {"type": "object"}},
    ],
)
def test_json_response_format_returns_object(response_format):
    """response_format json_object or json_schema (OpenAI and lm15 shapes) gives a JSON object."""
    messages = chat_messages(dspy.Signature("q -> a, b: int"), q="x")
    out = json.loads(complete(messages, response_format))
    assert isinstance(out["a"], str) and isinstance(out["b"], int)


def test_literal_with_int_options_keeps_type():
    """Literal options are Python literals, not only strings."""
    out = round_trip(dspy.Signature("q: str -> level: Literal[1, 2, 3]"), q="x")
    assert out["level"] in (1, 2, 3)


def test_plain_chat_gets_a_sentence():
    """A chat with no DSPy signature still gets a deterministic answer about the message."""
    text = complete([{"role": "user", "content": "hello there"}])
    assert text.startswith("sim answer ") and text.endswith("to: hello there")


def test_content_parts_are_read_as_text():
    """OpenAI content-part lists are joined into the message text."""
    messages = chat_messages(dspy.Signature("q -> a"), q="parts")
    as_parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    assert complete(as_parts) == complete(messages)


def test_parse_inputs_keeps_multiline_values():
    """Input blocks are split on headers only, so blank lines inside a value survive."""
    text = "[[ ## a ## ]]\none\n\ntwo\n\n[[ ## b ## ]]\n3\n\nRespond with the corresponding output fields, ..."
    assert parse_inputs(text) == {"a": "one\n\ntwo", "b": "3"}


def test_parse_output_fields_reads_nested_types():
    """Output types with brackets and quotes are read whole from the system prompt."""
    system = ChatAdapter().format(Typed, [], {"question": "x"})[0]["content"]
    types = {f.name: f.type_name for f in parse_output_fields(system)}
    assert types["scores"] == "dict[str, int]"
    assert types["kind"] == "Literal['yes', 'no way']"


def test_count_tokens_counts_words():
    """Usage counts are rough but stable: whitespace-separated words."""
    assert count_tokens("Hello, wide\n world!") == 3
    assert count_tokens("") == 0


def test_stream_pieces_rejoin_to_the_text():
    """Streaming splits text into word-sized pieces that join back exactly."""
    text = "[[ ## a ## ]]\nsim  answer\n\n[[ ## completed ## ]]\n"
    pieces = stream_pieces(text)
    assert "".join(pieces) == text and len(pieces) > 5
