"""Execution routing and promotion (pure): which version a call runs, when a version is promoted."""

from __future__ import annotations

import pytest

from dspy_pool.optimize.promotion import Outcome, should_promote
from dspy_pool.optimize.routing import Mode, PolicyView, Route, arm_bucket, route

BASE, OPTIMIZED = 1, 3


def policy(mode: Mode, promoted: int = OPTIMIZED, percent: float = 0.0, sticky: bool = False) -> PolicyView:
    return PolicyView(mode, BASE, promoted, percent, sticky)


def test_a_requested_version_always_wins():
    """A call naming a version runs exactly it, whatever the policy."""
    assert route(policy(Mode.OPTIMIZED), 2, "hybrid", "", "r") == Route(2, "version")


def test_traditional_runs_the_base_and_optimized_the_promoted_version():
    """traditional -> base; optimized -> promoted; the call's mode overrides the policy's."""
    assert route(policy(Mode.TRADITIONAL), 0, "", "", "r") == Route(BASE, "traditional")
    assert route(policy(Mode.OPTIMIZED), 0, "", "", "r") == Route(OPTIMIZED, "optimized")
    assert route(policy(Mode.OPTIMIZED), 0, "traditional", "", "r").version == BASE


def test_optimized_with_nothing_promoted_runs_the_base_marked_pending():
    """optimized mode before any promotion: the base runs, labelled traditional, pending (the caller may wait)."""
    assert route(policy(Mode.OPTIMIZED, promoted=0), 0, "", "", "r") == Route(BASE, "traditional", pending=True)


def test_evaluation_answers_with_the_base_and_compares_the_promoted():
    """evaluation: base answers, the promoted version runs beside it; nothing to compare when none is promoted."""
    assert route(policy(Mode.EVALUATION), 0, "", "", "r") == Route(BASE, "evaluation", compare_with=OPTIMIZED)
    assert route(policy(Mode.EVALUATION, promoted=0), 0, "", "", "r").compare_with == 0


def test_hybrid_sends_about_its_percentage_to_the_optimized_arm():
    """Over 4,000 call ids, a 30% hybrid sends 30% +- 3 to the optimized version."""
    share = sum(route(policy(Mode.HYBRID, percent=30), 0, "", "", f"call-{n}").version == OPTIMIZED for n in range(4000)) / 40
    assert 27 <= share <= 33


def test_sticky_hybrid_keeps_a_session_on_one_arm():
    """With sticky sessions every call of a session takes the same arm, whatever its call id."""
    for session in (f"s{n}" for n in range(50)):
        arms = {route(policy(Mode.HYBRID, percent=50, sticky=True), 0, "", session, f"{session}-{k}").version for k in range(20)}
        assert len(arms) == 1


def test_arm_buckets_are_stable_and_in_range():
    """The same key always gives the same bucket, in [0, 100)."""
    assert arm_bucket("x") == arm_bucket("x") and all(0 <= arm_bucket(str(n)) < 100 for n in range(1000))


def test_unknown_mode_is_a_value_error():
    """A mode outside the four is refused naming them."""
    with pytest.raises(ValueError, match="traditional"):
        route(policy(Mode.TRADITIONAL), 0, "turbo", "", "r")


@pytest.mark.parametrize(("promotion", "baseline", "optimized", "examples", "expected"), [
    ("auto", 0.4, 0.6, 20, True),
    ("auto", 0.4, 0.45, 20, False),  # below min_improvement 0.1
    ("auto", 0.4, 0.9, 5, False),  # too few dev examples
    ("manual", 0.1, 0.9, 50, False),
])
def test_auto_promotion_needs_the_improvement_on_enough_examples(promotion, baseline, optimized, examples, expected):
    """Auto promotes when optimized - baseline >= min_improvement on >= min_dev_examples; manual never does."""
    assert should_promote(promotion, 0.1, 10, Outcome(baseline, optimized, examples)) is expected


@pytest.mark.parametrize(("served", "optimized", "expected"), [
    (0.93, 0.77, False),  # beats the base, but not the version served now (it replaced a better one)
    (0.60, 0.77, True),
    (None, 0.77, True),  # nothing promoted, or scored on another dev set
])
def test_auto_promotion_never_replaces_a_better_promoted_version(served, optimized, expected):
    assert should_promote("auto", 0.05, 10, Outcome(0.5, optimized, 20, served)) is expected
