"""Building programs from specs in the worker: signatures, declared options, LM options, saved state, demos, typed inputs."""

import json

import dspy
import pytest

from dspy_pool import kinds
from dspy_pool.errors import InvalidArgument
from dspy_pool.fields import MAX_FIELDS
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.options import DEFAULT_LM_CALL_OPTIONS, Option, parse_lm_rules
from dspy_pool.pool import lms, programs
from dspy_pool.v1 import dspy_pool_pb2 as pb

RULES = programs.BuildRules(lm_options=parse_lm_rules(DEFAULT_LM_CALL_OPTIONS))

kinds.load_builtins()
kinds.register("unit_sized", lambda signature, k: dspy.Predict(signature), options={"k": Option(int, default=3, min=1, max=10)})


def spec(signature="question -> answer", module="", state_json="", module_options=None, lm_options=None, demos=(), **fields):
    message = pb.ProgramSpec(name="p", signature=signature, module=module, state_json=state_json, **fields)
    if module_options is not None:
        message.module_options.update(module_options)
    if lm_options is not None:
        message.lm_options.update(lm_options)
    for demo in demos:
        message.demos.add().update(demo)
    return message


def build(**fields) -> programs.BuiltProgram:
    return programs.build(spec(**fields), RULES)


# -- signatures ------------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_wide_described_signature_builds_in_one_go():
    """255 described inputs build (field by field they took minutes, then a RecursionError), descriptions kept."""
    inputs = [pb.FieldSpec(name=f"f{i}", description=f"field {i}") for i in range(MAX_FIELDS - 1)]
    program = programs.build(pb.ProgramSpec(name="wide", input_fields=inputs, output_fields=[pb.FieldSpec(name="out")]), RULES)
    signature = program.module.signature
    assert len(program.input_names) == MAX_FIELDS - 1
    assert signature.fields["f7"].json_schema_extra["desc"] == "field 7"


def test_too_many_fields_are_invalid():
    """More than MAX_FIELDS fields, in field lists or in a signature string, is INVALID_ARGUMENT."""
    inputs = [pb.FieldSpec(name=f"f{i}") for i in range(MAX_FIELDS)]
    with pytest.raises(InvalidArgument, match=f"at most {MAX_FIELDS}"):
        programs.build(pb.ProgramSpec(name="w", input_fields=inputs, output_fields=[pb.FieldSpec(name="out")]), RULES)
    with pytest.raises(InvalidArgument, match=f"at most {MAX_FIELDS}"):
        build(signature=", ".join(f"f{i}" for i in range(MAX_FIELDS + 10)) + " -> out")


@pytest.mark.parametrize("signature,message", [
    ("a, a -> b", "twice"),
    ("a -> b, b", "twice"),
    ("-> answer", "no input"),
    ("question ->", "no output"),
    ("config -> answer", "reserved"),
    ("lm, question -> answer", "reserved"),
])
def test_bad_signatures_are_invalid(signature, message):
    """Duplicates, a missing side, and inputs DSPy reads as call settings are refused."""
    with pytest.raises(InvalidArgument, match=message):
        build(signature=signature)


def test_duplicate_names_in_field_lists_are_invalid():
    """The same name twice in input_fields/output_fields is refused."""
    with pytest.raises(InvalidArgument, match="twice"):
        programs.build(pb.ProgramSpec(name="d", input_fields=[pb.FieldSpec(name="a"), pb.FieldSpec(name="a")],
                                      output_fields=[pb.FieldSpec(name="b")]), RULES)


@pytest.mark.parametrize("annotation", ["os.environ", "this", "dspy.settings", "sys.modules", "Field(default=1)", "int + str"])
def test_type_annotations_are_a_closed_vocabulary(annotation, monkeypatch):
    """A module or attribute chain as a type is refused before DSPy imports or reads it (no environment in the error)."""
    monkeypatch.setenv("UNIT_SECRET", "hunter2-in-the-environment")
    with pytest.raises(InvalidArgument, match="not allowed") as caught:
        build(signature=f"x: {annotation} -> y")
    assert "hunter2" not in caught.value.message


def test_typed_signatures_still_build():
    """The vocabulary covers the usual types: lists, dicts, Optional, unions, Literal, dspy.History."""
    program = build(signature='a: list[dict[str, int]], b: Optional[float], c: int | None, d: Literal["x", "y"], '
                               'history: dspy.History -> out: bool')
    assert program.input_names == ("a", "b", "c", "d") and program.takes_history


# -- module and LM options ---------------------------------------------------
def test_builtins_refuse_every_module_option():
    """predict takes no options: api_base, temperature or anything else is refused, naming it."""
    for name in ("api_base", "temperature", "foo"):
        with pytest.raises(InvalidArgument, match=f"'{name}'"):
            build(module_options={name: 1})


def test_a_declared_module_option_reaches_the_factory_checked():
    """A kind's declared option is accepted in bounds and refused outside them."""
    build(module="unit_sized", module_options={"k": 5})
    with pytest.raises(InvalidArgument, match="'k'"):
        build(module="unit_sized", module_options={"k": 11})


def test_lm_options_set_each_predictors_lm_kwargs():
    """Allow-listed options land in every predictor's config (the kwargs of each LM call), normalised."""
    program = build(module="chain_of_thought", lm_options={"temperature": 0.3, "n": 2})
    assert [p.config for p in program.module.predictors()] == [{"temperature": 0.3, "n": 2}]
    assert isinstance(program.lm_options["n"], int)


@pytest.mark.parametrize("options", [{"api_base": "http://x/v1"}, {"model": "openai/x"}, {"extra_headers": {"a": "b"}},
                                     {"temperature": 3}, {"n": 1.5}])
def test_lm_options_outside_the_allow_list_are_invalid(options):
    """Names the operator did not allow-list, and values outside its bounds, are refused."""
    with pytest.raises(InvalidArgument, match=f"'{next(iter(options))}'"):
        build(lm_options=options)


# -- saved state and demos -----------------------------------------------------
def _predict_state(**extra) -> dict:
    predict = dspy.Predict("question -> answer")
    predict.demos = [dspy.Example(question="2+2?", answer="4", augmented=True)]
    return {**predict.dump_state(), **extra}


def test_saved_state_as_dspy_writes_it_loads():
    """dump_state output (demos included) loads as before."""
    program = build(state_json=json.dumps(_predict_state()))
    assert program.module.demos[0]["answer"] == "4"


@pytest.mark.parametrize("extra,message", [
    ({"lm": {"model": "openai/evil", "api_base": "http://x/v1"}}, "names an LM"),
    ({"config": {"api_base": "http://x/v1"}}, "'api_base'"),
    ({"config": {"temperature": 9}}, "'temperature'"),
    ({"callbacks": []}, "'callbacks'"),
    ({"stage": "x"}, "'stage'"),
    ({"demos": [{"question": "q", "answer": "a", "config": {"api_base": "http://x/v1"}}]}, "'config'"),
])
def test_saved_state_that_carries_lm_configuration_is_invalid(extra, message):
    """An LM, LM kwargs outside the allow-list, or anything dump_state does not write is refused before load_state."""
    with pytest.raises(InvalidArgument, match=message):
        build(state_json=json.dumps(_predict_state(**extra)))


def test_saved_state_config_inside_the_allow_list_loads():
    """A predictor config holding only allow-listed options in bounds is accepted."""
    program = build(state_json=json.dumps(_predict_state(config={"temperature": 0.5})))
    assert program.module.config == {"temperature": 0.5}


def test_nested_predictor_state_is_checked_too():
    """chain_of_thought's inner predictor may not carry an LM either."""
    cot = dspy.ChainOfThought("question -> answer")
    state = cot.dump_state()
    state["predict"]["lm"] = {"model": "openai/evil"}
    with pytest.raises(InvalidArgument, match="names an LM"):
        build(module="chain_of_thought", state_json=json.dumps(state))
    state["predict"]["lm"] = None
    build(module="chain_of_thought", state_json=json.dumps(state))


def test_demos_are_data_for_the_signatures_fields_only():
    """Demo keys must be fields of the signature; values are plain data."""
    program = build(demos=[{"question": "capital of France?", "answer": "Paris"}])
    assert program.module.demos[0].answer == "Paris"
    with pytest.raises(InvalidArgument, match="'base'"):
        build(demos=[{"question": "q", "answer": "a", "base": {"lm": "x"}}])


# -- inputs ------------------------------------------------------------------
def test_typed_inputs_are_validated_naming_the_field():
    """An int input takes 3.0 as 3 and refuses "abc", 1.5 and null with INVALID_ARGUMENT naming the field."""
    program = build(signature="n: int, items: list[int], maybe: Optional[int], text -> answer")
    inputs = program.call_inputs({"n": 3.0, "items": [1.0, 2.0], "maybe": None, "text": {"a": 1}})
    assert inputs == {"n": 3, "items": [1, 2], "maybe": None, "text": '{"a": 1}'}
    assert isinstance(inputs["n"], int)
    for bad in ("abc", 1.5, None):
        with pytest.raises(InvalidArgument, match="input 'n'"):
            program.call_inputs({"n": bad, "items": [], "maybe": 1.0, "text": "t"})
    with pytest.raises(InvalidArgument, match="input 'items'"):
        program.call_inputs({"n": 1.0, "items": ["x"], "maybe": None, "text": "t"})


def test_history_is_refused_for_a_program_without_a_history_input():
    """history goes only to programs that declare it."""
    with pytest.raises(InvalidArgument, match="history"):
        build().call_inputs({"question": "q", "history": []})
    assert build(signature="question, history: dspy.History -> answer").call_inputs({"question": "q"}) == {"question": "q"}


# -- LiteLLM stays off the event loop ---------------------------------------------
def test_only_settings_the_native_engine_cannot_carry_need_litellm():
    """The allow-listed options stay on DSPy's native engine; an unknown option would import LiteLLM on first call."""
    lm = lms.build_lm(wire.ZygoteConfig(lm="openai/sim", lm_api_base="http://127.0.0.1:9/v1", lm_api_key="k"))
    assert not lms.needs_litellm(lm, {"temperature": 0.5, "top_p": 0.9, "max_tokens": 10, "n": 2})
    assert lms.needs_litellm(lm, {"foo": 1})
