"""spec_files: YAML/TOML/JSON spec files <-> ProgramSpec, round trips and precise errors."""

from __future__ import annotations

import json
import textwrap

import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_pool import spec_files
from dspy_pool.spec_files import SpecFileError
from dspy_pool.v1 import dspy_pool_pb2 as pb

EVERY_FIELD = {
    "name": "qa",
    "signature": "question -> answer",
    "input_fields": [{"name": "question", "type": "str", "description": "what was asked"}],
    "output_fields": [{"name": "answer", "type": "str"}],
    "module": "chain_of_thought",
    "instructions": 'Answer "briefly".\nCite nothing. \\ tab\there, é, 😀, del \x7f\n',
    "demos": [{"question": "2+2?", "answer": "4", "meta": {"score": 0.5, "tags": ["a", 1, True, {"deep": []}], "key with spaces": {}}}, {}],
    "state_json": '{"predict": {"demos": [], "lm": null}}',
    "module_options": {"k": 5},
    "fallback": {"chain": ["cache", "lm", "program", "static"], "lm": "openai/gpt-4o-mini", "lm_api_base": "",
                 "program": "qa_simple", "static_outputs": {"answer": "Sorry."}},
    "description": "the demo program",
    "warmup_inputs": [{"question": "warm up"}, {"question": "again"}],
    "lm_options": {"temperature": 0.2, "max_tokens": 512},
}


def _spec(fields: dict) -> pb.ProgramSpec:
    return json_format.ParseDict(fields, pb.ProgramSpec())


def _write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def _error(text: str, fmt: str = "yaml") -> str:
    with pytest.raises(SpecFileError) as caught:
        spec_files.parse_specs(textwrap.dedent(text), fmt, "spec.yaml")
    return str(caught.value)


# -- reading ------------------------------------------------------------------------------


def test_one_spec_a_list_and_a_programs_mapping_read_alike(tmp_path):
    """A file may hold one spec, a list of specs, or {programs: [...]}; each gives the same specs."""
    one = _write(tmp_path, "one.yaml", "name: qa\nsignature: question -> answer\n")
    listed = _write(tmp_path, "list.yaml", "- name: qa\n  signature: question -> answer\n")
    wrapped = _write(tmp_path, "wrapped.json", '{"programs": [{"name": "qa", "signature": "question -> answer"}]}')
    expected = [pb.ProgramSpec(name="qa", signature="question -> answer")]
    assert spec_files.load_specs(one) == spec_files.load_specs(listed) == spec_files.load_specs(wrapped) == expected


def test_toml_reads_programs_tables_and_a_single_spec(tmp_path):
    """TOML says a list as [[programs]] tables, and one spec as top-level keys."""
    tables = _write(tmp_path, "specs.toml", """\
        [[programs]]
        name = "a"
        signature = "x -> y"
        [programs.fallback]
        chain = ["static"]
        static_outputs = {y = "none"}

        [[programs]]
        name = "b"
        signature = "x -> y"
        """)
    single = _write(tmp_path, "one.toml", 'name = "a"\nsignature = "x -> y"\n')
    specs = spec_files.load_specs(tables)
    assert [s.name for s in specs] == ["a", "b"] and specs[0].fallback.static_outputs["y"] == "none"
    assert spec_files.load_specs(single) == [pb.ProgramSpec(name="a", signature="x -> y")]


def test_every_programspec_field_reads_by_its_proto_or_json_name():
    """ParseDict does the conversion, so every field works, by proto name or JSON name."""
    proto_names = spec_files.parse_specs(json.dumps(EVERY_FIELD), "json")
    json_names = spec_files.parse_specs('{"name": "qa", "warmupInputs": [{"q": "hi"}], "lmOptions": {"temperature": 0.1}}', "yaml")
    assert proto_names == [_spec(EVERY_FIELD)]
    assert json_names[0].warmup_inputs[0]["q"] == "hi" and json_names[0].lm_options["temperature"] == 0.1


def test_an_empty_programs_list_is_no_specs():
    """`programs: []` says "none" on purpose, unlike an empty file."""
    assert spec_files.parse_specs("programs: []\n", "yaml") == []
    assert "got nothing" in _error("")


# -- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "json", "toml"])
def test_dump_then_load_gives_equal_specs(fmt, tmp_path):
    """dump_specs writes what load_specs reads back to equal specs, in every format."""
    specs = [_spec({**EVERY_FIELD, "demos": [{"question": "2+2?", "answer": "4", "nested": {"tags": ["a", 1.5, False]}}]}),
             pb.ProgramSpec(name="bare", signature="x -> y")]
    path = tmp_path / f"specs.{fmt}"
    path.write_text(spec_files.dump_specs(specs, fmt), encoding="utf-8")
    assert spec_files.load_specs(path) == specs


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_yaml_and_json_hold_nulls_and_every_field(fmt):
    """YAML and JSON carry every value a Struct can hold, null included."""
    spec = _spec({**EVERY_FIELD, "demos": [{"question": None, "answer": ["x", None]}]})
    assert spec_files.parse_specs(spec_files.dump_specs([spec], fmt), fmt) == [spec]


def test_toml_refuses_a_null_naming_where_it_is():
    """TOML has no null: dumping one is a ValueError that names the value's path."""
    spec = _spec({"name": "qa", "demos": [{"answer": None}]})
    with pytest.raises(ValueError, match=r"programs\[0\]\.demos\[0\]\.answer: TOML has no null"):
        spec_files.dump_specs([spec], "toml")


def test_dump_takes_programs_and_writes_only_what_is_set():
    """Program messages dump their spec; defaults are left out and whole numbers lose their '.0'."""
    program = pb.Program(spec=_spec({"name": "qa", "signature": "q -> a", "lm_options": {"max_tokens": 512}}), version=3)
    text = spec_files.dump_specs([program], "yaml")
    assert text == "programs:\n- name: qa\n  signature: q -> a\n  lm_options:\n    max_tokens: 512\n"


def test_yaml_dump_writes_multiline_text_as_a_block():
    """Multi-line instructions read as written, not as one escaped line."""
    text = spec_files.dump_specs([_spec({"name": "qa", "instructions": "First line.\nSecond line.\n"})], "yaml")
    assert "instructions: |\n    First line.\n    Second line.\n" in text


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3),
    max_leaves=10)


@settings(max_examples=60, deadline=None)
@given(demo=st.dictionaries(st.text(), json_values, max_size=4), fmt=st.sampled_from(spec_files.FORMATS))
def test_any_struct_value_round_trips(demo, fmt):
    """Any JSON value in a Struct field survives dump and load (TOML: any but null)."""
    spec = pb.ProgramSpec(name="qa")
    spec.demos.add().update(demo)
    try:
        text = spec_files.dump_specs([spec], fmt)
    except ValueError:
        assert fmt == "toml" and "null" in json.dumps(demo)
        return
    assert spec_files.parse_specs(text, fmt) == [spec]


# -- errors -------------------------------------------------------------------------------


def test_unknown_field_names_the_entry_and_suggests_the_field():
    """A misspelt field names the file, the entry (by index and name) and the closest real field."""
    message = _error("""\
        programs:
          - {name: a, signature: x -> y}
          - {name: b, fallback: {chian: [cache]}}
        """)
    assert message == 'spec.yaml: programs[1] ("b"): field "fallback.chian": unknown field; did you mean "chain"?'


def test_wrong_types_name_the_field_path_with_its_index():
    """A value of the wrong type names its full path, list indexes included."""
    assert _error("name: a\ninput_fields: [{name: q}, {name: 3}]\n") == \
        'spec.yaml: program "a": field "input_fields[1].name": expected a string, got an integer 3 (quote it)'
    assert _error("name: a\nfallback: {chain: cache}\n").endswith('field "fallback.chain": expected a list, got a string')
    assert _error("- name: a\n  demos: [{}, 3]\n") == 'spec.yaml: [0] ("a"): field "demos[1]": expected a mapping, got an integer'
    assert _error("name: a\nmodule: yes\n").endswith('field "module": expected a string, got a boolean True (quote it)')


def test_values_json_cannot_hold_are_named():
    """YAML and TOML dates are not JSON values: the error names the Struct key that holds one."""
    assert _error("name: a\nwarmup_inputs: [{when: 2024-01-01}]\n").endswith(
        'field "warmup_inputs[0].when": a date \'2024-01-01\' is not a JSON value (quote it)')
    assert 'field "demos[0].when"' in _error('[[programs]]\nname = "a"\ndemos = [{when = 1979-05-27}]\n', "toml")


def test_a_spec_without_a_name_is_refused():
    """Every spec needs its name; the error says which entry lacks it."""
    assert _error("- {name: a}\n- {signature: x -> y}\n") == 'spec.yaml: [1]: field "name": required: the program\'s name'


def test_file_level_problems_name_the_file():
    """Unreadable, malformed or mis-shaped files name the file and what is wrong."""
    assert _error("name: [a\n").startswith("spec.yaml: invalid YAML at line 2, column 1: ")
    assert _error('{"name": "a",}', "json").startswith("spec.yaml: invalid JSON: ")
    assert _error('name = \n', "toml").startswith("spec.yaml: invalid TOML: ")
    assert _error("5\n") == 'spec.yaml: expected a program spec, a list of specs or {"programs": [...]}, got an integer'
    assert _error("programs: []\nname: a\n") == 'spec.yaml: unexpected top-level keys beside "programs": name'
    assert _error("[1]\n") == "spec.yaml: [0]: expected a mapping of ProgramSpec fields, got an integer"


def test_missing_file_and_unknown_suffix(tmp_path):
    """A file that is not there, or not .yaml/.yml/.toml/.json, is a SpecFileError naming it."""
    with pytest.raises(SpecFileError, match=r"missing\.yaml: cannot read: No such file"):
        spec_files.load_specs(tmp_path / "missing.yaml")
    with pytest.raises(SpecFileError, match=r"specs\.txt: unknown format"):
        spec_files.load_specs(_write(tmp_path, "specs.txt", "name: a\n"))


def test_a_fallback_program_is_registered_before_the_programs_that_name_it():
    """A file listing qa before its fallback qa_small stopped start-up ("fallback program 'qa_small' is not registered"):
    the specs come out with each fallback first, the rest in file order; a cycle keeps its order (the server refuses it)."""
    text = textwrap.dedent("""
        programs:
          - {name: qa, signature: "question -> answer", fallback: {chain: [program], program: qa_small}}
          - {name: other, signature: "question -> answer"}
          - {name: qa_small, signature: "question -> answer"}
          - {name: x, signature: "q -> a", fallback: {chain: [program], program: y}}
          - {name: y, signature: "q -> a", fallback: {chain: [program], program: x}}
    """)
    assert [spec.name for spec in spec_files.parse_specs(text, "yaml")] == ["other", "qa_small", "qa", "x", "y"]
