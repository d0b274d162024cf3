"""Automatic optimization triggers (pure), tick by tick; captured calls and their sampling."""

from __future__ import annotations

from dspy_pool.optimize.feedback import Captured, Captures, sampled
from dspy_pool.optimize import triggers
from dspy_pool.optimize.triggers import Observation, TriggerConfig, TriggerState, decide


def seen(**changes) -> Observation:
    base = dict(feedback_examples=0, feedback_count=0, feedback_score_mean=0.0, dev_score=0.0, calls=0, error_rate=0.0, job_active=False)
    return Observation(**{**base, **changes})


def test_feedback_examples_trigger_once_per_threshold_and_respect_the_interval():
    """10 new examples start a job; the next needs 10 more and min_interval_s since the last start."""
    config = TriggerConfig(after_feedback_examples=10, min_interval_s=60)
    state = TriggerState()
    reason, state = decide(config, state, seen(feedback_examples=9), now=0)
    assert reason == ""
    reason, state = decide(config, state, seen(feedback_examples=10), now=1)
    assert "10 new feedback examples" in reason and state.last_started_at == 1
    assert decide(config, state, seen(feedback_examples=30), now=30)[0] == ""  # within the interval
    assert decide(config, state, seen(feedback_examples=19), now=70)[0] == ""  # only 9 new
    assert decide(config, state, seen(feedback_examples=20), now=70)[0] != ""


def test_a_score_drop_triggers_only_with_enough_feedback():
    """Mean feedback 0.2 below the dev score starts a job once min_calls feedbacks came in."""
    config = TriggerConfig(on_score_drop=0.2, min_calls=20)
    assert decide(config, TriggerState(), seen(feedback_count=19, feedback_score_mean=0.5, dev_score=0.8), now=0)[0] == ""
    assert "below the dev score" in decide(config, TriggerState(), seen(feedback_count=20, feedback_score_mean=0.5, dev_score=0.8), now=0)[0]
    assert decide(config, TriggerState(), seen(feedback_count=50, feedback_score_mean=0.7, dev_score=0.8), now=0)[0] == ""


def test_an_error_rate_triggers_and_an_active_job_holds_everything_back():
    """An error rate past the threshold starts a job, unless one is already queued or running."""
    config = TriggerConfig(on_error_rate=0.3, min_calls=10)
    assert "error rate" in decide(config, TriggerState(), seen(calls=10, error_rate=0.4), now=0)[0]
    assert decide(config, TriggerState(), seen(calls=10, error_rate=0.4, job_active=True), now=0)[0] == ""
    assert decide(TriggerConfig(), TriggerState(), seen(calls=100, error_rate=1.0, feedback_examples=100), now=0)[0] == ""  # all off


def test_automatic_jobs_that_keep_failing_double_the_wait_and_a_success_resets_it():
    """Through an LM outage the error-rate trigger started a job every min_interval_s, each failing against the same
    provider: now each failed automatic job in a row doubles the wait (up to 64x); one that succeeds resets it."""
    config = TriggerConfig(on_error_rate=0.5, min_interval_s=10, min_calls=1)
    outage = seen(calls=100, error_rate=1.0)
    reason, state = decide(config, TriggerState(), outage, now=0)
    assert reason
    starts = [0]
    for now in range(1, 2000):
        if state.last_job_id:  # the job ended (failed) a second after it started
            state = triggers.after_job(state, failed=True)
        reason, state = decide(config, state, outage, now=now)
        if reason:
            starts.append(now)
            state = triggers.started(state, f"job{now}")
    assert [b - a for a, b in zip(starts, starts[1:])][:7] == [10, 20, 40, 80, 160, 320, 640]
    assert all(gap == 640 for gap in [b - a for a, b in zip(starts, starts[1:])][6:])  # capped at 64x
    state = triggers.after_job(triggers.started(state, "ok"), failed=False)
    assert state.failures == 0 and triggers.interval_s(config, state) == 10


def test_sampling_is_stable_per_request_id_and_near_its_rate():
    """A request id always draws the same; 25% keeps about a quarter of 4,000 ids."""
    assert sampled("r1", 0.5) == sampled("r1", 0.5)
    kept = sum(sampled(f"id-{n}", 0.25) for n in range(4000))
    assert 900 <= kept <= 1100 and not sampled("x", 0) and sampled("x", 1)


def test_captures_are_bounded_per_program_and_taken_once():
    """Past max_examples the oldest capture of a program goes; take() returns a capture once."""
    captures = Captures(max_total=100)
    for n in range(5):
        captures.keep(f"r{n}", Captured("qa", 1, {"q": n}, {"a": n}), max_examples=3)
    assert captures.take("r0") is None and captures.take("r4").inputs == {"q": 4}
    assert captures.take("r4") is None and len(captures) == 2
