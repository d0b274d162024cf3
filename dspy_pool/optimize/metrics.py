"""Declarative metrics made callable, in optimizer workers (imports DSPy).

    MetricSpec(kind, fields, options) --build_metric--> metric(example, prediction, trace=None, ...) -> float in [0, 1]

Built-in kinds (declared in catalog.METRICS) compare each field and average
over the fields: the job's `fields`, or every expected output field of the
example when it names none. A prediction that is missing (the program
failed) or lacks a field scores 0 for it.

    exact_match    normalised predicted == normalised expected
    f1             token F1 (SQuAD-style) of the normalised texts
    contains       normalised expected occurs in normalised predicted
    numeric_close  |predicted - expected| <= tolerance (x |expected| when relative); unparseable: 0
    llm_judge      one judge call per example: the operator's allow-listed model reads the
                   rubric, the inputs, the expected and the predicted fields and gives 0..1

Normalisation (exact_match, f1, contains): `ignore_case` (casefold),
`ignore_whitespace` (strip, runs of whitespace as one space),
`ignore_punctuation` (drop Unicode punctuation). Non-text values are compared
as canonical JSON.

Operator kinds (kinds.register_metric) are built by their factory with the
options they declare, checked here again: a worker trusts no option it did
not check. The metric accepts GEPA's five arguments (gold, pred, trace,
pred_name, pred_trace) as well as DSPy's usual three.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from typing import Any, Callable, Mapping

import dspy

from dspy_pool import kinds
from dspy_pool.errors import InvalidArgument
from dspy_pool.optimize import catalog
from dspy_pool.optimize.task import MetricSpec
from dspy_pool.options import check_options

LMResolver = Callable[[str], Any]  # an allow-listed model name -> a dspy.BaseLM
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


class Metric:
    """A metric DSPy optimizers and our evaluation call: per-field scores averaged, in [0, 1]."""

    def __init__(self, kind: str, fields: tuple[str, ...], score: Callable[[Any, Any, Any], float]) -> None:
        self.kind = kind
        self.fields = fields
        self._score = score
        self.__name__ = f"metric_{kind}"  # DSPy logs metric names

    def __call__(self, example: Any, prediction: Any, trace: Any = None, pred_name: Any = None,
                 pred_trace: Any = None) -> float:
        if prediction is None:
            return 0.0
        return _unit(self._score(example, prediction, trace))

    def __repr__(self) -> str:
        return f"Metric({self.kind!r}, fields={self.fields!r})"


def build_metric(spec: MetricSpec, lm_for: LMResolver | None = None) -> Metric:
    """The callable metric for a spec; InvalidArgument for an unknown kind or a bad option."""
    fields = tuple(spec.fields)
    declared = catalog.METRICS.get(spec.kind)
    if declared is None:
        return _operator_metric(spec, fields)
    options = check_options(spec.options, declared.options, f"metric {spec.kind!r}: option")
    missing = sorted(declared.required - set(options))
    if missing:
        raise InvalidArgument(f"metric {spec.kind!r}: option {missing[0]!r} is required")
    if spec.kind == "llm_judge":
        return _judge(fields, options, lm_for)
    compare = _COMPARERS[spec.kind](**options)
    return Metric(spec.kind, fields, lambda example, prediction, trace: _per_field(fields, example, prediction, compare))


def _operator_metric(spec: MetricSpec, fields: tuple[str, ...]) -> Metric:
    try:
        kind = kinds.lookup_metric(spec.kind)
    except KeyError as exc:
        raise InvalidArgument(str(exc.args[0])) from None
    options = check_options(spec.options, kind.options, f"metric {spec.kind!r}: option")
    try:
        fn = kind.factory(fields, **options)
    except Exception as exc:
        raise InvalidArgument(f"metric kind {spec.kind!r} rejected its options: {type(exc).__name__}: {exc}") from exc
    return Metric(spec.kind, fields, lambda example, prediction, trace: fn(example, prediction, trace))


# --- comparing fields ---------------------------------------------------------


def expected_fields(example: Any, fields: tuple[str, ...]) -> tuple[str, ...]:
    """The named fields, or every expected (non-input) field of the example."""
    if fields:
        return fields
    labels = example.labels() if hasattr(example, "labels") else {}
    return tuple(labels.keys())


def _per_field(fields: tuple[str, ...], example: Any, prediction: Any, compare: Callable[[Any, Any], float]) -> float:
    names = expected_fields(example, fields)
    if not names:
        return 0.0
    total = 0.0
    for name in names:
        expected = _get(example, name)
        predicted = _get(prediction, name)
        if expected is None or predicted is None:
            continue
        total += _unit(compare(expected, predicted))
    return total / len(names)


def _get(obj: Any, name: str) -> Any:
    try:
        return obj[name]
    except (KeyError, TypeError, IndexError, AttributeError):
        return getattr(obj, name, None)


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def normalise(text: str, ignore_case: bool, ignore_whitespace: bool, ignore_punctuation: bool) -> str:
    if ignore_punctuation:
        text = "".join(c for c in text if not unicodedata.category(c).startswith("P"))
    if ignore_case:
        text = text.casefold()
    if ignore_whitespace:
        text = " ".join(text.split())
    return text


def _exact_match(**norm: bool) -> Callable[[Any, Any], float]:
    return lambda expected, predicted: float(normalise(as_text(expected), **norm) == normalise(as_text(predicted), **norm))


def _contains(**norm: bool) -> Callable[[Any, Any], float]:
    return lambda expected, predicted: float(normalise(as_text(expected), **norm) in normalise(as_text(predicted), **norm))


def token_f1(expected: str, predicted: str) -> float:
    want, got = expected.split(), predicted.split()
    if not want or not got:
        return float(want == got)
    overlap = sum((Counter(want) & Counter(got)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(got), overlap / len(want)
    return 2 * precision * recall / (precision + recall)


def _f1(**norm: bool) -> Callable[[Any, Any], float]:
    return lambda expected, predicted: token_f1(normalise(as_text(expected), **norm), normalise(as_text(predicted), **norm))


def as_number(value: Any) -> float | None:
    """A finite number from a number or from the first number in a text (thousands commas dropped)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _NUMBER.search(value.replace(",", ""))
        if match is None:
            return None
        number = float(match.group())
    else:
        return None
    return number if math.isfinite(number) else None


def _numeric_close(tolerance: float, relative: bool) -> Callable[[Any, Any], float]:
    def compare(expected: Any, predicted: Any) -> float:
        want, got = as_number(expected), as_number(predicted)
        if want is None or got is None:
            return 0.0
        allowed = tolerance * abs(want) if relative else tolerance
        return float(abs(got - want) <= allowed)

    return compare


_COMPARERS: Mapping[str, Callable[..., Callable[[Any, Any], float]]] = {
    "exact_match": _exact_match,
    "f1": _f1,
    "contains": _contains,
    "numeric_close": _numeric_close,
}


def _unit(value: Any) -> float:
    """A score in [0, 1]: bools as 0/1, anything unusable as 0."""
    if isinstance(value, bool):
        return float(value)
    score = getattr(value, "score", value)  # GEPA-style dspy.Prediction(score=..., feedback=...)
    try:
        score = float(score)
    except (TypeError, ValueError):
        return 0.0
    return min(1.0, max(0.0, score)) if math.isfinite(score) else 0.0


# --- the judge ---------------------------------------------------------------


class Judge(dspy.Signature):
    """Judge how well the predicted outputs satisfy the rubric, given the inputs and the expected outputs.
    Answer with a score between 0 (fails the rubric) and 1 (fully satisfies it)."""

    rubric: str = dspy.InputField()
    inputs: str = dspy.InputField(desc="the task's inputs, as JSON")
    expected: str = dspy.InputField(desc="the expected outputs, as JSON")
    predicted: str = dspy.InputField(desc="the outputs to judge, as JSON")
    score: float = dspy.OutputField(desc="between 0 and 1")


def _judge(fields: tuple[str, ...], options: Mapping[str, Any], lm_for: LMResolver | None) -> Metric:
    if lm_for is None:
        raise InvalidArgument(f"metric 'llm_judge': judge model {options['model']!r} is not available in this worker")
    lm = lm_for(options["model"])
    rubric = options["rubric"]
    predictor = dspy.Predict(Judge)

    def score(example: Any, prediction: Any, trace: Any) -> float:
        names = expected_fields(example, fields)
        inputs = example.inputs() if hasattr(example, "inputs") else {}
        shown = {
            "inputs": as_text({k: _plain(v) for k, v in dict(inputs).items()}),
            "expected": as_text({n: _plain(_get(example, n)) for n in names}),
            "predicted": as_text({n: _plain(_get(prediction, n)) for n in names}),
        }
        # trace=[]: the judge's own call stays out of the program's trace (bootstrapped demos).
        with dspy.context(lm=lm, trace=[]):
            return predictor(rubric=rubric, **shown).score

    return Metric("llm_judge", fields, score)


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    return value
