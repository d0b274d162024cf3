"""Fallback planning: chain validation, plans per failure reason, classification, the deadline reserve, and the budget."""

from __future__ import annotations

import pytest

from dspy_pool.errors import MEANINGS
from dspy_pool.server.fallback import (
    LOCAL_RESERVE,
    NO_FALLBACK,
    WORKER_RESERVE,
    FailureReason,
    FallbackBudget,
    FallbackChain,
    Step,
    check_default_chain,
    classify,
    default_steps_for,
    plan,
    reserve_s,
)

FULL = FallbackChain(
    steps=("cache", "lm", "program", "static", "fail"),
    lm="openai/gpt-4o-mini",
    program="qa_simple",
    static_outputs={"answer": "unknown"},
)

# -- validation ------------------------------------------------------------------


def test_chain_steps_become_step_members():
    """Step names given as strings are normalised to Step members."""
    assert FULL.steps == (Step.CACHE, Step.LM, Step.PROGRAM, Step.STATIC, Step.FAIL)


def test_unknown_step_is_rejected():
    """A step name outside the known five is refused, listing the known ones."""
    with pytest.raises(ValueError, match="unknown fallback step 'retry'.*cache, lm, program, static, fail"):
        FallbackChain(steps=("cache", "retry"))


def test_fail_must_be_last():
    """Nothing may follow 'fail'."""
    with pytest.raises(ValueError, match="'fail' must be the last"):
        FallbackChain(steps=("fail", "cache"))


def test_duplicate_steps_are_rejected():
    """A step may appear only once."""
    with pytest.raises(ValueError, match="more than once"):
        FallbackChain(steps=("cache", "cache"))


def test_lm_step_requires_fallback_lm():
    """'lm' without a fallback LM is refused."""
    with pytest.raises(ValueError, match="needs a fallback LM"):
        FallbackChain(steps=("lm",))


def test_program_step_requires_program_name():
    """'program' without a program name is refused."""
    with pytest.raises(ValueError, match="needs a program name"):
        FallbackChain(steps=("program",))


def test_static_step_requires_outputs():
    """'static' without outputs is refused."""
    with pytest.raises(ValueError, match="needs outputs"):
        FallbackChain(steps=("static",), static_outputs={})


# -- plan --------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["breaker_open", "timeout", "lm_error", "rate_limited", "malformed_output", "internal"])
def test_system_failures_try_whole_chain(reason):
    """System failures try every step in chain order."""
    assert plan(FULL, reason) == [Step.CACHE, Step.LM, Step.PROGRAM, Step.STATIC, Step.FAIL]


def test_worker_crash_does_not_rerun_the_same_call():
    """After a call killed its worker, the 'lm' step (same program, same inputs) would be a retry: it is skipped."""
    assert plan(FULL, "worker_crash") == [Step.CACHE, Step.PROGRAM, Step.STATIC, Step.FAIL]


@pytest.mark.parametrize("reason", ["queue_full", "unavailable"])
def test_no_worker_skips_worker_steps(reason):
    """With no worker to take work, only cache, static and fail remain."""
    assert plan(FULL, reason) == [Step.CACHE, Step.STATIC, Step.FAIL]


def test_empty_chain_plans_nothing():
    """A program without a fallback chain has nothing to try."""
    assert plan(NO_FALLBACK, "breaker_open") == []


def test_plan_rejects_unknown_reason():
    """An undeclared failure reason is a caller bug, not a silent empty plan."""
    with pytest.raises(ValueError):
        plan(FULL, "bad_luck")


# -- classify (reads the error table) -------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("lm_error", FailureReason.LM_ERROR),
        ("lm_connection", FailureReason.LM_ERROR),
        ("lm_auth", FailureReason.LM_ERROR),
        ("lm_rate_limited", FailureReason.RATE_LIMITED),
        ("lm_timeout", FailureReason.TIMEOUT),
        ("deadline_exceeded", FailureReason.TIMEOUT),
        ("lm_malformed_output", FailureReason.MALFORMED_OUTPUT),
        ("worker_crashed", FailureReason.WORKER_CRASH),
        ("worker_hung", FailureReason.WORKER_CRASH),
        ("queue_full", FailureReason.QUEUE_FULL),
        ("unavailable", FailureReason.UNAVAILABLE),
        ("internal", FailureReason.INTERNAL),
    ],
)
def test_classify_maps_error_kinds(kind, reason):
    """Each system failure maps to the fallback reason the response reports."""
    assert classify(kind) == reason


@pytest.mark.parametrize("kind", ["invalid_argument", "not_found", "cancelled", "lm_bad_request", "failed_precondition"])
def test_callers_own_errors_never_fall_back(kind):
    """Bad input, unknown names, an over-long prompt and cancellations have no fallback reason."""
    assert classify(kind) is None


def test_classify_is_the_error_tables_column():
    """classify reads errors.MEANINGS, so the two can never disagree."""
    for kind, row in MEANINGS.items():
        assert classify(kind) == row.fallback
        assert classify(kind.value) == row.fallback


def test_classify_unknown_kind_is_internal():
    """An undeclared kind is treated as internal."""
    assert classify("cosmic_ray") is FailureReason.INTERNAL


# -- reserve_s -------------------------------------------------------------------------

STATIC_ONLY = FallbackChain(steps=("static",), static_outputs={"answer": "later"})
CACHE_THEN_LM = FallbackChain(steps=("cache", "lm"), lm="openai/backup")


def test_no_chain_reserves_nothing():
    """Without a chain (or with only 'fail') the primary keeps the whole deadline."""
    assert reserve_s(NO_FALLBACK, 30.0) == 0.0
    assert reserve_s(FallbackChain(steps=("fail",)), 30.0) == 0.0


def test_local_steps_reserve_a_small_share():
    """Cache and static steps keep back a tenth of the budget, within the local floor and cap."""
    assert reserve_s(STATIC_ONLY, 2.0) == pytest.approx(0.2)
    assert reserve_s(STATIC_ONLY, 0.2) == pytest.approx(LOCAL_RESERVE.floor_s)
    assert reserve_s(STATIC_ONLY, 300.0) == pytest.approx(LOCAL_RESERVE.cap_s)


def test_a_worker_step_reserves_more():
    """A chain with an 'lm' or 'program' step keeps back enough for a real LM call."""
    assert reserve_s(CACHE_THEN_LM, 10.0) == pytest.approx(4.0)
    assert reserve_s(CACHE_THEN_LM, 10.0) > reserve_s(STATIC_ONLY, 10.0)
    assert reserve_s(CACHE_THEN_LM, 600.0) == pytest.approx(WORKER_RESERVE.cap_s)


def test_primary_keeps_at_least_half():
    """However short the budget, the reserve never exceeds half of it."""
    assert reserve_s(CACHE_THEN_LM, 0.4) == pytest.approx(0.2)
    assert reserve_s(STATIC_ONLY, 0.06) == pytest.approx(0.03)


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan")])
def test_spent_or_bad_budget_reserves_nothing(budget):
    """A budget already spent (or not a number) reserves nothing."""
    assert reserve_s(STATIC_ONLY, budget) == 0.0


# -- FallbackBudget -----------------------------------------------------------------


def test_budget_admits_up_to_max():
    """try_acquire succeeds max_concurrent times, then refuses and counts the refusal."""
    budget = FallbackBudget(max_concurrent=2)
    assert budget.try_acquire() and budget.try_acquire()
    assert not budget.try_acquire()
    assert budget.rejected == 1


def test_budget_release_frees_a_slot():
    """Releasing a slot lets the next fallback in."""
    budget = FallbackBudget(max_concurrent=1)
    assert budget.try_acquire()
    budget.release()
    assert budget.try_acquire()


def test_budget_release_without_acquire_is_an_error():
    """An unmatched release raises instead of letting the bound drift."""
    with pytest.raises(RuntimeError):
        FallbackBudget(max_concurrent=1).release()


def test_a_default_chain_applies_its_lm_program_and_static_steps_to_programs_that_give_what_they_need():
    """--default-fallback cache,static: a program with static outputs gets both steps, one without gets cache alone
    (its registration failed, blaming a field the client never set)."""
    default = ("cache", "program", "static", "fail")
    assert default_steps_for(default, "", "", None) == ("cache", "fail")
    assert default_steps_for(default, "", "simple", {"answer": "later"}) == default
    check_default_chain(default)
    with pytest.raises(ValueError, match="appears more than once"):
        check_default_chain(("cache", "cache"))
