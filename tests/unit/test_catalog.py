"""The optimization catalog: optimizers and metric kinds a client may name, their options typed, bounded, allow-listed."""

import pytest

from dspy_pool import kinds
from dspy_pool.errors import InvalidArgument
from dspy_pool.optimize import catalog
from dspy_pool.optimize.task import MetricSpec
from dspy_pool.options import Option

ALLOWED = ("openai/judge", "openai/reflector")

OPTIMIZERS = ["labeled_few_shot", "bootstrap_few_shot", "bootstrap_few_shot_with_random_search", "mipro_v2",
              "copro", "simba", "gepa"]
METRICS = ["exact_match", "f1", "contains", "numeric_close", "llm_judge"]
MINIMAL = {"gepa": {"reflection_lm": "openai/reflector"}}


def test_catalog_names_every_shipped_optimizer_and_metric():
    """The seven DSPy optimizers and five metric kinds, nothing else."""
    assert catalog.optimizer_names() == sorted(OPTIMIZERS)
    assert catalog.metric_names() == sorted(METRICS)


def test_catalog_does_not_import_dspy():
    """The front imports the catalog: it must stay free of DSPy."""
    source = open(catalog.__file__).read()
    assert "import dspy\n" not in source and "from dspy " not in source and "from dspy." not in source


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_accepts_its_defaults(name):
    """Every optimizer checks with no options (gepa: its reflection LM) and returns its declared defaults."""
    checked = catalog.check_optimizer(name, MINIMAL.get(name, {}), ALLOWED)
    declared = catalog.OPTIMIZERS[name].options
    for option, spec in declared.items():
        if spec.default is not None:
            assert checked[option] == spec.default


def test_unknown_optimizer_is_refused_with_the_known_ones():
    """An optimizer the catalog does not name is InvalidArgument listing the known ones."""
    with pytest.raises(InvalidArgument, match=r"unknown optimizer 'dspy\.Ensemble'.*labeled_few_shot"):
        catalog.check_optimizer("dspy.Ensemble", {}, ALLOWED)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_unknown_option_is_refused_by_name(name):
    """An option the optimizer does not declare is InvalidArgument naming it."""
    with pytest.raises(InvalidArgument, match=r"'teacher_settings' is not accepted"):
        catalog.check_optimizer(name, {**MINIMAL.get(name, {}), "teacher_settings": {"lm": "x"}}, ALLOWED)


@pytest.mark.parametrize(("name", "option", "value", "problem"), [
    ("labeled_few_shot", "k", 0, "below the minimum"),
    ("labeled_few_shot", "k", 65, "above the maximum"),
    ("labeled_few_shot", "k", 2.5, "whole number"),
    ("labeled_few_shot", "k", "8", "expected a number"),
    ("bootstrap_few_shot", "max_rounds", 11, "above the maximum"),
    ("bootstrap_few_shot", "metric_threshold", 1.5, "above the maximum"),
    ("bootstrap_few_shot_with_random_search", "num_candidate_programs", 1000, "above the maximum"),
    ("mipro_v2", "auto", "extreme", "is not one of"),
    ("mipro_v2", "minibatch", "yes", "true or false"),
    ("copro", "breadth", 1, "below the minimum"),
    ("simba", "max_steps", 0, "below the minimum"),
    ("gepa", "candidate_selection_strategy", "random", "is not one of"),
])
def test_out_of_bounds_values_are_refused(name, option, value, problem):
    """Values of the wrong type, out of range or not among the choices are InvalidArgument naming the option."""
    with pytest.raises(InvalidArgument, match=rf"'{option}'.*{problem}"):
        catalog.check_optimizer(name, {**MINIMAL.get(name, {}), option: value}, ALLOWED)


def test_numbers_from_a_struct_are_normalised():
    """A protobuf Struct sends numbers as doubles: 8.0 for an int option becomes 8."""
    checked = catalog.check_optimizer("labeled_few_shot", {"k": 8.0}, ALLOWED)
    assert checked == {"k": 8} and isinstance(checked["k"], int)


def test_mipro_auto_defaults_to_light():
    """mipro_v2 with no options runs the light preset."""
    assert catalog.check_optimizer("mipro_v2", {}, ALLOWED)["auto"] == "light"


def test_mipro_counts_need_auto_none():
    """num_trials with a preset is refused; with auto='none' both counts are required; counts alone imply none."""
    with pytest.raises(InvalidArgument, match="'num_trials' cannot be combined with auto='light'"):
        catalog.check_optimizer("mipro_v2", {"auto": "light", "num_trials": 3}, ALLOWED)
    with pytest.raises(InvalidArgument, match="'num_candidates' is required when auto='none'"):
        catalog.check_optimizer("mipro_v2", {"auto": "none", "num_trials": 3}, ALLOWED)
    checked = catalog.check_optimizer("mipro_v2", {"num_trials": 3, "num_candidates": 2}, ALLOWED)
    assert checked["auto"] == "none"


def test_gepa_needs_exactly_one_budget():
    """gepa: exactly one of auto, max_metric_calls, max_full_evals (auto light when none is given)."""
    base = {"reflection_lm": "openai/reflector"}
    assert catalog.check_optimizer("gepa", base, ALLOWED)["auto"] == "light"
    assert catalog.check_optimizer("gepa", {**base, "max_metric_calls": 100}, ALLOWED)["auto"] == "none"
    with pytest.raises(InvalidArgument, match="exactly one of"):
        catalog.check_optimizer("gepa", {**base, "auto": "light", "max_metric_calls": 100}, ALLOWED)
    with pytest.raises(InvalidArgument, match="exactly one of"):
        catalog.check_optimizer("gepa", {**base, "max_metric_calls": 100, "max_full_evals": 2}, ALLOWED)
    with pytest.raises(InvalidArgument, match="exactly one of"):
        catalog.check_optimizer("gepa", {**base, "auto": "none"}, ALLOWED)


def test_gepa_reflection_lm_is_required_and_allow_listed():
    """GEPA's reflection LM must be named and on the operator's allow-list."""
    with pytest.raises(InvalidArgument, match="'reflection_lm' is required"):
        catalog.check_optimizer("gepa", {}, ALLOWED)
    with pytest.raises(InvalidArgument, match=r"'reflection_lm': model 'openai/gpt-evil' is not on the operator's allow-list"):
        catalog.check_optimizer("gepa", {"reflection_lm": "openai/gpt-evil"}, ALLOWED)
    with pytest.raises(InvalidArgument, match="none configured"):
        catalog.check_optimizer("gepa", {"reflection_lm": "openai/reflector"}, ())
    assert catalog.check_optimizer("gepa", {"reflection_lm": "openai/reflector"}, ALLOWED)["reflection_lm"] == "openai/reflector"


def test_options_must_be_an_object():
    """Options that are not a mapping are InvalidArgument."""
    with pytest.raises(InvalidArgument, match="options must be an object"):
        catalog.check_optimizer("copro", ["breadth"], ALLOWED)


# --- metrics -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["exact_match", "f1", "contains", "numeric_close"])
def test_each_metric_accepts_its_defaults(kind):
    """Built-in metric kinds check with no options and come back as a MetricSpec with their defaults."""
    spec = catalog.check_metric(kind, ("answer",), {}, (), ALLOWED)
    assert spec == MetricSpec(kind, ("answer",), {n: o.default for n, o in catalog.METRICS[kind].options.items()})


def test_normalisation_options():
    """exact_match takes case, whitespace and punctuation normalisation switches."""
    spec = catalog.check_metric("exact_match", (), {"ignore_case": False, "ignore_punctuation": True}, (), ())
    assert spec.options == {"ignore_case": False, "ignore_whitespace": True, "ignore_punctuation": True}
    with pytest.raises(InvalidArgument, match="'ignore_accents' is not accepted"):
        catalog.check_metric("exact_match", (), {"ignore_accents": True}, (), ())


def test_numeric_close_tolerance_is_bounded():
    """numeric_close's tolerance is a non-negative number."""
    assert catalog.check_metric("numeric_close", (), {"tolerance": 0.5, "relative": True}, (), ()).options == {
        "tolerance": 0.5, "relative": True}
    with pytest.raises(InvalidArgument, match="'tolerance'.*below the minimum"):
        catalog.check_metric("numeric_close", (), {"tolerance": -1}, (), ())


def test_llm_judge_needs_a_rubric_and_an_allow_listed_model():
    """llm_judge: rubric and model required, the model on the allow-list, the rubric bounded."""
    good = {"rubric": "Is the code right?", "model": "openai/judge"}
    assert catalog.check_metric("llm_judge", ("code",), good, (), ALLOWED).options == good
    with pytest.raises(InvalidArgument, match="'rubric' is required"):
        catalog.check_metric("llm_judge", (), {"model": "openai/judge"}, (), ALLOWED)
    with pytest.raises(InvalidArgument, match="'model' is required"):
        catalog.check_metric("llm_judge", (), {"rubric": "x"}, (), ALLOWED)
    with pytest.raises(InvalidArgument, match="'model': model 'http://evil/v1' is not on the operator's allow-list"):
        catalog.check_metric("llm_judge", (), {**good, "model": "http://evil/v1"}, (), ALLOWED)
    with pytest.raises(InvalidArgument, match="'rubric'.*longer than 4000"):
        catalog.check_metric("llm_judge", (), {**good, "rubric": "x" * 4001}, (), ALLOWED)


def test_unknown_metric_kind_is_refused_with_the_known_ones():
    """A kind neither built in nor registered is InvalidArgument listing the known kinds."""
    with pytest.raises(InvalidArgument, match=r"unknown metric kind 'bleu'.*exact_match.*rouge"):
        catalog.check_metric("bleu", (), {}, ("rouge",), ())


def test_operator_kinds_by_name_pass_their_options_to_the_worker():
    """An operator kind known by name only: its options go on to the worker, which checks them."""
    spec = catalog.check_metric("rouge", ("answer",), {"n": 2}, ("rouge",), ())
    assert spec == MetricSpec("rouge", ("answer",), {"n": 2})


def test_operator_kinds_with_declared_options_are_checked_here():
    """An operator kind given with its declared options is checked like a built-in one."""
    declared = {"rouge": {"n": Option(int, default=1, min=1, max=4)}}
    assert catalog.check_metric("rouge", (), {}, declared, ()).options == {"n": 1}
    with pytest.raises(InvalidArgument, match="'n'.*above the maximum"):
        catalog.check_metric("rouge", (), {"n": 9}, declared, ())


@pytest.mark.parametrize(("fields", "problem"), [
    (("answer", "answer"), "named twice"),
    (("bad name",), "not a field name"),
    ((3,), "not a field name"),
    (tuple(f"f{i}" for i in range(65)), "at most 64"),
])
def test_metric_fields_are_checked(fields, problem):
    """Metric fields are identifiers, named once, bounded in number."""
    with pytest.raises(InvalidArgument, match=problem):
        catalog.check_metric("exact_match", fields, {}, (), ())


def test_metric_fields_must_be_outputs_when_the_outputs_are_known():
    """Given the program's output fields, a metric may only name those."""
    assert catalog.check_metric("f1", ("answer",), {}, (), (), output_fields=("answer",)).fields == ("answer",)
    with pytest.raises(InvalidArgument, match="'question' is not an output field"):
        catalog.check_metric("f1", ("question",), {}, (), (), output_fields=("answer",))


# --- kinds.register_metric ---------------------------------------------------------


@pytest.fixture
def clean_metrics():
    saved = dict(kinds._metrics)
    yield
    kinds._metrics.clear()
    kinds._metrics.update(saved)


def test_register_metric_mirrors_register(clean_metrics):
    """Operator metric kinds are registered with declared options, listed and looked up by name."""

    @kinds.register_metric("rouge_l", options={"beta": Option(float, default=1.2, min=0, max=10)})
    def make(fields, beta):
        return lambda example, prediction, trace=None: 1.0

    assert "rouge_l" in kinds.metric_names()
    assert kinds.lookup_metric("rouge_l").factory is make
    assert kinds.lookup_metric("rouge_l").options["beta"].default == 1.2
    kinds.register_metric("rouge_l", make)  # the same factory again: fine (module re-import)
    with pytest.raises(ValueError, match="already registered"):
        kinds.register_metric("rouge_l", lambda fields: None)


@pytest.mark.parametrize("name", ["exact_match", "Bad-Name", ""])
def test_register_metric_refuses_builtin_and_bad_names(clean_metrics, name):
    """Built-in kinds cannot be replaced; names are lowercase identifiers."""
    with pytest.raises(ValueError):
        kinds.register_metric(name, lambda fields: None)


def test_register_metric_refuses_undeclared_option_types(clean_metrics):
    """Options must be Option objects under identifier names."""
    with pytest.raises(ValueError, match="must be an identifier mapped to an Option"):
        kinds.register_metric("custom", lambda fields, k: None, options={"k": int})


def test_lookup_of_unknown_metric_kind_names_the_registered_ones(clean_metrics):
    """lookup_metric of an unknown kind is a KeyError listing what is registered."""
    with pytest.raises(KeyError, match="unknown metric kind 'nope'"):
        kinds.lookup_metric("nope")

