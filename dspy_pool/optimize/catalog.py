"""What a client may ask an optimization job for: optimizers and metric kinds, each with declared options.

    StartOptimization(optimizer, options, metric{kind, fields, options})
        --check_optimizer(name, options, allowed_lms)--> normalised options (declared defaults + given)
        --check_metric(kind, fields, options, operator_kinds, allowed_lms)--> a checked MetricSpec
        --> OptimizeTask --> an optimizer worker: runner.run (DSPy's real optimizer) and metrics.build_metric

Every optimizer is one of DSPy's, named here; every option is an `Option`
(typed, bounded, with choices), so a client can only pick among what is
declared, never send code or an optimizer class. An option that names an LM
(GEPA's `reflection_lm`, the judge `model` of `llm_judge`) must be on the
operator's allow-list (`allowed_lms`, from the server configuration): a
client never chooses where LM requests go (DESIGN.md, hard rule 9). Anything
else is InvalidArgument naming the optimizer, metric kind or option.

Pure on purpose, no DSPy import: the front imports this to validate requests.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Collection, Mapping

from dspy_pool.errors import InvalidArgument
from dspy_pool.optimize.task import MetricSpec
from dspy_pool.options import Option, check_options

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_METRIC_FIELDS = 64
NO_AUTO = "none"  # mipro_v2 / gepa: no preset; the counts are given instead


@dataclass(frozen=True)
class Declared:
    """An optimizer or metric kind a client may name: its options, which are required, which name an LM."""

    name: str
    summary: str
    options: Mapping[str, Option] = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    lm_options: frozenset[str] = frozenset()  # values must be on the operator's LM allow-list
    rule: Callable[[dict[str, Any]], None] | None = None  # cross-option checks; may fill in a derived default


def _demos(bootstrapped: int, labeled: int) -> dict[str, Option]:
    return {
        "max_bootstrapped_demos": Option(int, default=bootstrapped, min=0, max=16),
        "max_labeled_demos": Option(int, default=labeled, min=0, max=64),
    }


def _mipro_rule(options: dict[str, Any]) -> None:
    counts = [name for name in ("num_trials", "num_candidates") if name in options]
    auto = options.get("auto")
    if auto is None:
        auto = options["auto"] = NO_AUTO if counts else "light"
    if auto != NO_AUTO and counts:
        raise InvalidArgument(f"optimizer 'mipro_v2': option {counts[0]!r} cannot be combined with auto={auto!r} "
                              f"(the preset sets it); use auto='none' to set num_trials and num_candidates")
    if auto == NO_AUTO and len(counts) < 2:
        missing = "num_trials" if "num_trials" not in options else "num_candidates"
        raise InvalidArgument(f"optimizer 'mipro_v2': option {missing!r} is required when auto='none'")


def _gepa_rule(options: dict[str, Any]) -> None:
    budgets = [name for name in ("max_metric_calls", "max_full_evals") if name in options]
    auto = options.get("auto")
    if auto is None:
        auto = options["auto"] = NO_AUTO if budgets else "light"
    given = budgets + ([] if auto == NO_AUTO else ["auto"])
    if len(given) != 1:
        shown = " and ".join(repr(g) for g in given) or "none of them"
        raise InvalidArgument(f"optimizer 'gepa': set exactly one of 'auto', 'max_metric_calls', 'max_full_evals' "
                              f"(got {shown})")


OPTIMIZERS: Mapping[str, Declared] = MappingProxyType({d.name: d for d in (
    Declared("labeled_few_shot", "k labeled train examples as demos (dspy.LabeledFewShot); no LM calls to compile", {
        "k": Option(int, default=16, min=1, max=64),
    }),
    Declared("bootstrap_few_shot", "demos from the program's own passing traces on train (dspy.BootstrapFewShot)", {
        **_demos(4, 16),
        "max_rounds": Option(int, default=1, min=1, max=10),
        "metric_threshold": Option(float, min=0.0, max=1.0),
    }),
    Declared("bootstrap_few_shot_with_random_search",
             "several bootstrapped demo sets, the best on a validation split kept (dspy.BootstrapFewShotWithRandomSearch)", {
        **_demos(4, 16),
        "max_rounds": Option(int, default=1, min=1, max=10),
        "num_candidate_programs": Option(int, default=16, min=1, max=64),
        "metric_threshold": Option(float, min=0.0, max=1.0),
        "stop_at_score": Option(float, min=0.0, max=1.0),
    }),
    Declared("mipro_v2", "instructions and demo sets searched together with Bayesian optimization (dspy.MIPROv2)", {
        "auto": Option(str, choices=("light", "medium", "heavy", NO_AUTO)),
        "num_trials": Option(int, min=1, max=200),
        "num_candidates": Option(int, min=1, max=50),
        **_demos(4, 4),
        "minibatch": Option(bool, default=True),
        "minibatch_size": Option(int, default=35, min=1, max=500),
        "minibatch_full_eval_steps": Option(int, default=5, min=1, max=50),
    }, rule=_mipro_rule),
    Declared("copro", "instructions proposed and refined breadth x depth times (dspy.COPRO)", {
        "breadth": Option(int, default=10, min=2, max=20),
        "depth": Option(int, default=3, min=1, max=10),
        "init_temperature": Option(float, default=1.4, min=0.0, max=2.0),
    }),
    Declared("simba", "mini-batch ascent adding demos and self-written rules (dspy.SIMBA)", {
        "bsize": Option(int, default=32, min=1, max=256),
        "num_candidates": Option(int, default=6, min=1, max=32),
        "max_steps": Option(int, default=8, min=1, max=64),
        "max_demos": Option(int, default=4, min=0, max=16),
    }),
    Declared("gepa", "instructions evolved from a reflection LM's reading of traces and feedback (dspy.GEPA)", {
        "auto": Option(str, choices=("light", "medium", "heavy", NO_AUTO)),
        "max_metric_calls": Option(int, min=1, max=100_000),
        "max_full_evals": Option(int, min=1, max=100),
        "reflection_lm": Option(str, max_chars=200),
        "reflection_minibatch_size": Option(int, default=3, min=1, max=64),
        "candidate_selection_strategy": Option(str, default="pareto", choices=("pareto", "current_best")),
        "use_merge": Option(bool, default=True),
        "skip_perfect_score": Option(bool, default=True),
    }, required=frozenset({"reflection_lm"}), lm_options=frozenset({"reflection_lm"}), rule=_gepa_rule),
)})


def _normalising(ignore_punctuation: bool) -> dict[str, Option]:
    return {
        "ignore_case": Option(bool, default=True),
        "ignore_whitespace": Option(bool, default=True),  # strip, and runs of whitespace count as one space
        "ignore_punctuation": Option(bool, default=ignore_punctuation),
    }


METRICS: Mapping[str, Declared] = MappingProxyType({d.name: d for d in (
    Declared("exact_match", "1 when the predicted field equals the expected one after normalisation", _normalising(False)),
    Declared("f1", "token F1 between predicted and expected (SQuAD-style)", _normalising(True)),
    Declared("contains", "1 when the expected text occurs in the predicted text after normalisation", _normalising(False)),
    Declared("numeric_close", "1 when the predicted number is within tolerance of the expected one", {
        "tolerance": Option(float, default=0.0, min=0.0, max=1e12),
        "relative": Option(bool, default=False),  # tolerance as a fraction of |expected|
    }),
    Declared("llm_judge", "an allow-listed judge LM scores the prediction (0 to 1) against a rubric", {
        "rubric": Option(str, max_chars=4000),
        "model": Option(str, max_chars=200),
    }, required=frozenset({"rubric", "model"}), lm_options=frozenset({"model"})),
)})


def optimizer_names() -> list[str]:
    return sorted(OPTIMIZERS)


def metric_names(operator_kinds: Collection[str] = ()) -> list[str]:
    return sorted(set(METRICS) | set(operator_kinds))


def _check_declared(declared: Declared, given: Mapping[str, Any], what: str,
                    allowed_lms: Collection[str]) -> dict[str, Any]:
    if not isinstance(given, Mapping):
        raise InvalidArgument(f"{what}: options must be an object")
    checked = check_options(given, declared.options, f"{what}: option")
    missing = sorted(declared.required - set(checked))
    if missing:
        raise InvalidArgument(f"{what}: option {missing[0]!r} is required")
    for name in sorted(declared.lm_options & set(checked)):
        if checked[name] not in allowed_lms:
            allowed = ", ".join(sorted(allowed_lms)) or "none configured"
            raise InvalidArgument(f"{what}: option {name!r}: model {checked[name]!r} is not on the operator's "
                                  f"allow-list (allowed: {allowed})")
    if declared.rule is not None:
        declared.rule(checked)
    return checked


def check_optimizer(name: str, options: Mapping[str, Any], allowed_lms: Collection[str] = ()) -> dict[str, Any]:
    """The optimizer's options, normalised (declared defaults + given); InvalidArgument naming what is wrong."""
    declared = OPTIMIZERS.get(name)
    if declared is None:
        raise InvalidArgument(f"unknown optimizer {name!r} (known: {', '.join(optimizer_names())})")
    return _check_declared(declared, options, f"optimizer {name!r}", allowed_lms)


def check_budget(max_lm_calls: int, max_seconds: float) -> None:
    """OptimizationBudget's numbers: 0 means no limit; anything negative or not finite is InvalidArgument."""
    if max_lm_calls < 0:
        raise InvalidArgument(f"budget.max_lm_calls must be >= 0 (0: no limit), not {max_lm_calls}")
    if not (math.isfinite(max_seconds) and max_seconds >= 0):
        raise InvalidArgument(f"budget.max_seconds must be a finite number >= 0 (0: no limit), not {max_seconds}")


def check_metric(kind: str, fields: Collection[str], options: Mapping[str, Any],
                 operator_kinds: Mapping[str, Mapping[str, Option]] | Collection[str] = (),
                 allowed_lms: Collection[str] = (), *, output_fields: Collection[str] | None = None) -> MetricSpec:
    """The metric, checked and with options normalised; InvalidArgument naming what is wrong.

    `operator_kinds`: the metric kinds the operator registered (kinds.register_metric),
    as names (their options are then checked in the worker, by metrics.build_metric) or
    as a mapping of name to declared options (checked here too). `output_fields`, when
    given, are the program's output fields: each named field must be one of them.
    """
    fields = tuple(fields)
    for name in fields:
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            raise InvalidArgument(f"metric field {name!r} is not a field name")
        if output_fields is not None and name not in output_fields:
            raise InvalidArgument(f"metric field {name!r} is not an output field of the program "
                                  f"(outputs: {', '.join(output_fields) or 'none'})")
    if len(set(fields)) != len(fields):
        duplicate = next(f for f in fields if fields.count(f) > 1)
        raise InvalidArgument(f"metric field {duplicate!r} is named twice")
    if len(fields) > MAX_METRIC_FIELDS:
        raise InvalidArgument(f"a metric compares at most {MAX_METRIC_FIELDS} fields, got {len(fields)}")
    declared = METRICS.get(kind)
    if declared is not None:
        return MetricSpec(kind, fields, _check_declared(declared, options, f"metric {kind!r}", allowed_lms))
    if kind not in operator_kinds:
        raise InvalidArgument(f"unknown metric kind {kind!r} (known: {', '.join(metric_names(operator_kinds))})")
    if isinstance(operator_kinds, Mapping):
        return MetricSpec(kind, fields, check_options(options, operator_kinds[kind], f"metric {kind!r}: option"))
    if not isinstance(options, Mapping):
        raise InvalidArgument(f"metric {kind!r}: options must be an object")
    return MetricSpec(kind, fields, dict(options))
