"""Retry decisions: transient kinds, backoff with jitter, and the retry budget, with a fake clock."""

from __future__ import annotations

import random

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_pool.errors import MEANINGS, ErrorKind
from dspy_pool.server.retry import RetryBudget, backoff_delay, is_transient


class FixedRandom(random.Random):
    """A random source whose draws are always `value`, to pin the jitter."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


# -- is_transient ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lm_error", "lm_rate_limited", "lm_connection"])
def test_provider_failures_are_transient(kind):
    """LM 5xx/429/connection errors are worth retrying: the provider did no work for them."""
    assert is_transient(kind)


@pytest.mark.parametrize(
    "kind",
    ["invalid_argument", "not_found", "cancelled", "queue_full", "deadline_exceeded", "lm_timeout", "lm_malformed_output", "internal",
     "worker_crashed", "worker_hung", "lm_auth", "lm_bad_request", "program_error", "program_quarantined", "failed_precondition"],
)
def test_other_failures_are_not_transient(kind):
    """Bad input, cancellation, overload, spent deadlines, refused keys and calls that died with their worker are never retried.

    A call only fails with worker_crashed once it reached the worker, so it may have
    partly run; retrying it could run it twice (and a poison call would kill worker after worker).
    A 401 fails the same way every time: retrying only sends the provider the bad key again.
    """
    assert not is_transient(kind)


def test_is_transient_is_the_error_tables_column():
    """is_transient reads errors.MEANINGS, and nothing it allows may have run (hard rule 10)."""
    for kind, row in MEANINGS.items():
        assert is_transient(kind.value) is row.transient
        assert not (is_transient(kind) and row.may_have_run)


def test_is_transient_accepts_error_kind_members():
    """ErrorKind members work as well as their string values."""
    assert is_transient(ErrorKind.LM_RATE_LIMITED)
    assert not is_transient(ErrorKind.INVALID_ARGUMENT)


def test_unknown_kind_is_not_transient():
    """A kind nobody declared is not retried."""
    assert not is_transient("something_new")


# -- backoff_delay -------------------------------------------------------------


def test_backoff_ceiling_doubles_per_attempt():
    """The jitter ceiling is base_s * 2**attempt."""
    rng = FixedRandom(0.999999)
    delays = [backoff_delay(attempt, 0.1, 100.0, rng) for attempt in range(4)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8], rel=1e-5)


def test_backoff_is_capped_at_max():
    """The delay never exceeds max_s, even for a huge attempt number."""
    rng = FixedRandom(0.999999)
    assert backoff_delay(10, 0.1, 2.0, rng) <= 2.0
    assert backoff_delay(10_000, 0.1, 2.0, rng) <= 2.0


def test_backoff_full_jitter_spans_zero_to_ceiling():
    """Full jitter draws anywhere in [0, ceiling), so synchronised failures spread out."""
    rng = random.Random(7)
    delays = [backoff_delay(3, 0.1, 10.0, rng) for _ in range(500)]
    assert all(0.0 <= delay < 0.8 for delay in delays)
    assert min(delays) < 0.1 and max(delays) > 0.7


def test_backoff_rejects_negative_attempt():
    """A negative attempt number is a caller bug."""
    with pytest.raises(ValueError):
        backoff_delay(-1, 0.1, 1.0, random.Random(0))


# -- RetryBudget -----------------------------------------------------------------


def test_budget_spends_at_most_ratio_of_recent_calls():
    """With no floor, 100 calls allow exactly 20 retries at ratio 0.2."""
    budget = RetryBudget(ratio=0.2, window_s=10.0, min_retries_per_s=0.0)
    for _ in range(100):
        budget.record_call(0.0)
    spent = sum(budget.try_spend(0.5) for _ in range(50))
    assert spent == 20


def test_budget_without_calls_refuses_without_floor():
    """With no recent calls and no floor there is nothing to spend."""
    budget = RetryBudget(ratio=0.2, window_s=10.0, min_retries_per_s=0.0)
    assert not budget.try_spend(0.0)


def test_budget_floor_lets_quiet_service_retry():
    """The per-second floor allows a few retries with no traffic at all."""
    budget = RetryBudget(ratio=0.2, window_s=10.0, min_retries_per_s=0.5)
    spent = sum(budget.try_spend(0.0) for _ in range(20))
    assert spent == 5


def test_budget_recovers_as_window_slides():
    """Once spent retries fall out of the window, fresh calls fund new retries."""
    budget = RetryBudget(ratio=0.2, window_s=10.0, min_retries_per_s=0.0)
    for _ in range(10):
        budget.record_call(0.0)
    assert budget.try_spend(0.0) and budget.try_spend(0.0)
    assert not budget.try_spend(0.0)
    for _ in range(10):
        budget.record_call(10.0)
    assert budget.try_spend(10.0) and budget.try_spend(10.0)
    assert not budget.try_spend(10.0)


def test_budget_forgets_old_calls():
    """Calls older than the window no longer fund retries."""
    budget = RetryBudget(ratio=0.2, window_s=10.0, min_retries_per_s=0.0)
    for _ in range(100):
        budget.record_call(0.0)
    assert budget.available(5.0) == pytest.approx(20.0)
    assert budget.available(10.0) == pytest.approx(0.0)
    assert not budget.try_spend(10.0)


def test_budget_rejects_bad_settings():
    """A negative ratio or a bucket wider than the window is refused."""
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(ratio=-0.1)
    with pytest.raises(ValueError, match="bucket_s"):
        RetryBudget(window_s=1.0, bucket_s=2.0)


@given(st.lists(st.floats(min_value=0.0, max_value=1.5), max_size=200))
@settings(max_examples=200, deadline=None)
def test_budget_counts_calls_as_a_plain_window_would(steps):
    """Calls at any spacing (many in one bucket, gaps past the window): the recent calls equal a direct count."""
    budget = RetryBudget(ratio=1.0, window_s=2.0, min_retries_per_s=0.0, bucket_s=0.5)
    now, kept = 100.0, []
    for step in steps:
        now += step
        budget.record_call(now)
        kept.append(now)
        newest = math.floor(now / 0.5)
        expected = sum(1 for t in kept if math.floor(t / 0.5) > newest - 4)
        assert budget.available(now) == pytest.approx(expected)
