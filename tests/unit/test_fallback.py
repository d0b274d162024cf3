"""Fallback planning: chain validation, plans per failure reason, classification, and the budget."""

from __future__ import annotations

import pytest

from dspy_pool.errors import ErrorKind
from dspy_pool.server.fallback import (
    NO_FALLBACK,
    FailureReason,
    FallbackBudget,
    FallbackChain,
    Step,
    classify,
    counts_as_breaker_failure,
    plan,
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


@pytest.mark.parametrize("reason", ["breaker_open", "timeout", "lm_error", "worker_crash", "rate_limited", "malformed_output", "internal"])
def test_system_failures_try_whole_chain(reason):
    """System failures try every step in chain order."""
    assert plan(FULL, reason) == [Step.CACHE, Step.LM, Step.PROGRAM, Step.STATIC, Step.FAIL]


@pytest.mark.parametrize("reason", ["invalid_argument", "not_found", "cancelled"])
def test_callers_own_errors_never_fall_back(reason):
    """Bad input, unknown names and cancellations get an empty plan."""
    assert plan(FULL, reason) == []


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


# -- classify and breaker counting ---------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("lm_error", FailureReason.LM_ERROR),
        ("lm_connection", FailureReason.LM_ERROR),
        ("lm_rate_limited", FailureReason.RATE_LIMITED),
        ("lm_timeout", FailureReason.TIMEOUT),
        ("deadline_exceeded", FailureReason.TIMEOUT),
        ("lm_malformed_output", FailureReason.MALFORMED_OUTPUT),
        ("worker_crashed", FailureReason.WORKER_CRASH),
        ("worker_hung", FailureReason.WORKER_CRASH),
        ("queue_full", FailureReason.QUEUE_FULL),
        ("unavailable", FailureReason.UNAVAILABLE),
        ("invalid_argument", FailureReason.INVALID_ARGUMENT),
        ("not_found", FailureReason.NOT_FOUND),
        ("cancelled", FailureReason.CANCELLED),
        ("internal", FailureReason.INTERNAL),
    ],
)
def test_classify_maps_error_kinds(kind, reason):
    """Each error kind the pool raises maps to one failure reason."""
    assert classify(kind) == reason


def test_classify_covers_every_error_kind():
    """Every ErrorKind member classifies to a declared reason."""
    for kind in ErrorKind:
        assert classify(kind) in set(FailureReason)


def test_classify_unknown_kind_is_internal():
    """An undeclared kind is treated as internal."""
    assert classify("cosmic_ray") is FailureReason.INTERNAL


@pytest.mark.parametrize(
    "kind",
    ["lm_error", "lm_connection", "lm_rate_limited", "lm_timeout", "lm_malformed_output", "deadline_exceeded", "worker_crashed", "worker_hung"],
)
def test_system_failures_count_for_breaker(kind):
    """LM errors, timeouts, malformed output and worker crashes count against the breaker."""
    assert counts_as_breaker_failure(kind)


@pytest.mark.parametrize("kind", ["invalid_argument", "not_found", "cancelled", "queue_full", "unavailable", "internal", "program_error"])
def test_caller_and_front_errors_do_not_count_for_breaker(kind):
    """The caller's bad input, cancellations and front-side overload never count against the breaker."""
    assert not counts_as_breaker_failure(kind)


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
