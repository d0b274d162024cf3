"""Metrics built from declarative specs: per-field comparisons averaged, normalisation, judge and operator kinds."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")

import dspy
import pytest

from dspy_pool import kinds
from dspy_pool.errors import InvalidArgument
from dspy_pool.optimize.metrics import build_metric, token_f1
from dspy_pool.optimize.task import MetricSpec
from dspy_pool.options import Option
from dspy_pool.simlm.engine import make_dummy_lm


def example(**outputs):
    return dspy.Example(question="q", **outputs).with_inputs("question")


def score(kind, expected, predicted, fields=(), **options):
    metric = build_metric(MetricSpec(kind, fields, options))
    return metric(example(**expected), dspy.Prediction(**predicted))


@pytest.mark.parametrize(("expected", "predicted", "options", "want"), [
    ("Paris", "Paris", {}, 1.0),
    ("Paris", "paris", {}, 1.0),
    ("Paris", "paris", {"ignore_case": False}, 0.0),
    ("New  York", " new york\n", {}, 1.0),
    ("New York", "NewYork", {}, 0.0),
    ("New York", "new  york", {"ignore_whitespace": False}, 0.0),
    ("Paris.", "Paris", {}, 0.0),
    ("Paris.", "Paris", {"ignore_punctuation": True}, 1.0),
])
def test_exact_match_normalisation(expected, predicted, options, want):
    """exact_match ignores case and whitespace by default, punctuation when asked."""
    assert score("exact_match", {"answer": expected}, {"answer": predicted}, **options) == want


def test_scores_average_over_fields():
    """Each field scores 0 or 1; the metric is their mean."""
    assert score("exact_match", {"a": "x", "b": "y"}, {"a": "x", "b": "z"}) == 0.5
    assert score("exact_match", {"a": "x", "b": "y"}, {"a": "x", "b": "z"}, fields=("a",)) == 1.0


def test_no_fields_means_every_expected_output():
    """With no fields named, every expected output field of the example is compared, not the inputs."""
    metric = build_metric(MetricSpec("exact_match"))
    assert metric(example(a="x", b="y"), dspy.Prediction(a="x", b="y", question="other")) == 1.0


def test_missing_prediction_or_field_scores_zero():
    """A failed program (None) scores 0; a missing field scores 0 for that field."""
    metric = build_metric(MetricSpec("exact_match", ("a", "b")))
    assert metric(example(a="x", b="y"), None) == 0.0
    assert metric(example(a="x", b="y"), dspy.Prediction(a="x")) == 0.5


def test_non_text_values_compare_as_json():
    """Numbers, lists and dicts compare by value."""
    assert score("exact_match", {"n": 3}, {"n": 3}) == 1.0
    assert score("exact_match", {"tags": ["a", "b"]}, {"tags": ["a", "b"]}) == 1.0
    assert score("exact_match", {"d": {"x": 1, "y": 2}}, {"d": {"y": 2, "x": 1}}) == 1.0


def test_token_f1():
    """f1 is SQuAD-style token F1 on normalised text."""
    assert token_f1("the cat sat", "the cat") == pytest.approx(0.8)
    assert score("f1", {"a": "The cat sat."}, {"a": "the CAT"}) == pytest.approx(0.8)
    assert score("f1", {"a": "dog"}, {"a": "cat"}) == 0.0
    assert score("f1", {"a": ""}, {"a": ""}) == 1.0


def test_contains():
    """contains: the expected text occurs in the prediction after normalisation."""
    assert score("contains", {"a": "Paris"}, {"a": "The capital is paris, of course."}) == 1.0
    assert score("contains", {"a": "Lyon"}, {"a": "The capital is Paris."}) == 0.0


@pytest.mark.parametrize(("expected", "predicted", "options", "want"), [
    (42, 42, {}, 1.0),
    (42, "42", {}, 1.0),
    (3000, "about 3,000 km", {}, 1.0),
    (10, 10.4, {"tolerance": 0.5}, 1.0),
    (10, 10.6, {"tolerance": 0.5}, 0.0),
    (200, 210, {"tolerance": 0.05, "relative": True}, 1.0),
    (200, 211, {"tolerance": 0.05, "relative": True}, 0.0),
    (1, "no number here", {"tolerance": 100}, 0.0),
    (1, True, {"tolerance": 100}, 0.0),
])
def test_numeric_close(expected, predicted, options, want):
    """numeric_close parses numbers (from text too) and applies an absolute or relative tolerance."""
    assert score("numeric_close", {"n": expected}, {"n": predicted}, **options) == want


def test_metric_takes_gepa_arguments():
    """GEPA calls metrics with five arguments (gold, pred, trace, pred_name, pred_trace)."""
    metric = build_metric(MetricSpec("exact_match", ("a",)))
    assert metric(example(a="x"), dspy.Prediction(a="x"), None, "self", []) == 1.0


def test_bad_options_are_refused():
    """A metric option the kind does not declare, or out of bounds, is InvalidArgument."""
    with pytest.raises(InvalidArgument, match="'fuzzy' is not accepted"):
        build_metric(MetricSpec("exact_match", (), {"fuzzy": True}))
    with pytest.raises(InvalidArgument, match="'tolerance'.*below the minimum"):
        build_metric(MetricSpec("numeric_close", (), {"tolerance": -1}))


def test_unknown_kind_is_refused():
    """A kind neither built in nor registered is InvalidArgument."""
    with pytest.raises(InvalidArgument, match="unknown metric kind 'bleu'"):
        build_metric(MetricSpec("bleu"))


def test_llm_judge_asks_the_resolved_model_with_the_rubric():
    """llm_judge resolves its allow-listed model and scores 0..1 with one judge call per example."""
    resolved, prompts = [], []
    lm = make_dummy_lm()

    def lm_for(name):
        resolved.append(name)
        return lm

    metric = build_metric(MetricSpec("llm_judge", ("a",), {"rubric": "Is it the capital of France?", "model": "judge"}),
                          lm_for=lm_for)
    with dspy.context(callbacks=[_Prompts(prompts)]):
        value = metric(example(a="Paris"), dspy.Prediction(a="Paris"))
    assert resolved == ["judge"]
    assert 0.0 <= value <= 1.0
    assert len(prompts) == 1 and "Is it the capital of France?" in prompts[0] and "Paris" in prompts[0]


def test_llm_judge_needs_a_resolver():
    """Without a way to reach the judge model, the metric cannot be built."""
    with pytest.raises(InvalidArgument, match="judge model 'judge' is not available"):
        build_metric(MetricSpec("llm_judge", (), {"rubric": "r", "model": "judge"}))


class _Prompts(dspy.utils.callback.BaseCallback):
    def __init__(self, prompts):
        self.prompts = prompts

    def on_lm_start(self, call_id, instance, inputs):
        self.prompts.append(" ".join(str(m.get("content")) for m in inputs.get("messages") or []))


@pytest.fixture
def operator_metric():
    saved = dict(kinds._metrics)
    calls = []

    @kinds.register_metric("length_ratio", options={"cap": Option(float, default=2.0, min=0.5, max=10)})
    def make(fields, cap):
        calls.append((fields, cap))
        return lambda ex, pred, trace=None: min(cap, len(pred[fields[0]]) / len(ex[fields[0]]))

    yield calls
    kinds._metrics.clear()
    kinds._metrics.update(saved)


def test_operator_metric_is_built_with_its_checked_options(operator_metric):
    """A registered kind's factory gets the fields and checked options; its score is clipped to [0, 1]."""
    metric = build_metric(MetricSpec("length_ratio", ("a",), {"cap": 3}))
    assert operator_metric == [(("a",), 3.0)]
    assert metric(example(a="abcd"), dspy.Prediction(a="ab")) == 0.5
    assert metric(example(a="ab"), dspy.Prediction(a="abcdef")) == 1.0


def test_operator_metric_options_are_checked_in_the_worker(operator_metric):
    """The worker re-checks an operator kind's options against its declaration."""
    with pytest.raises(InvalidArgument, match="'cap'.*above the maximum"):
        build_metric(MetricSpec("length_ratio", ("a",), {"cap": 99}))
    with pytest.raises(InvalidArgument, match="'mode' is not accepted"):
        build_metric(MetricSpec("length_ratio", ("a",), {"mode": "x"}))


@pytest.mark.parametrize(("returned", "want"), [(True, 1.0), (False, 0.0), ("yes", 0.0), (float("nan"), 0.0),
                                                 (-3, 0.0), (0.25, 0.25)])
def test_operator_results_become_scores(operator_metric, returned, want):
    """Operator metrics may return bools (1/0); non-numbers and NaN score 0; numbers are clipped to [0, 1]."""
    kinds.register_metric("fixed", lambda fields: (lambda e, p, t=None: returned))
    assert build_metric(MetricSpec("fixed"))(example(a="x"), dspy.Prediction(a="x")) == want
