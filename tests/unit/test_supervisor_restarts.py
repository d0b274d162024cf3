"""The restart policy (dspy_pool/restarts.py), tick by tick on a fake clock: backoff, giving up, a fresh run after a stable stretch."""

from __future__ import annotations

import pytest

from dspy_pool.restarts import RestartPolicy, RestartState, after_failure, after_start, backoff_s

POLICY = RestartPolicy(max_attempts=3, base_delay_s=0.5, max_delay_s=1.5, stable_after_s=30.0)


def test_backoff_doubles_from_the_base_up_to_the_cap():
    """No failure: no wait; then base, 2x, 4x ... never above the cap, even after very many failures."""
    assert [backoff_s(n, 0.5, 1.5) for n in range(5)] == [0.0, 0.5, 1.0, 1.5, 1.5]
    assert backoff_s(10_000, 0.5, 1.5) == 1.5


def test_failures_in_a_row_back_off_then_give_up_past_max_attempts():
    """Each failure waits longer; the failure after max_attempts says give up (None)."""
    state, delays = after_start(RestartState(), now=0.0), []
    for now in (1.0, 2.0, 3.0, 4.0):
        delay, state = after_failure(POLICY, state, now)
        delays.append(delay)
    assert delays == [0.5, 1.0, 1.5, None]
    assert state.failures == 4 and state.up_since is None


def test_coming_up_briefly_does_not_reset_the_count():
    """A process that dies soon after each start is still failing in a row."""
    state = after_start(RestartState(), now=0.0)
    for now in (1.0, 3.0, 5.0):
        _, state = after_failure(POLICY, state, now)
        state = after_start(state, now + 0.5)
    delay, state = after_failure(POLICY, state, 7.0)
    assert delay is None and state.failures == 4


def test_a_stable_stretch_earns_a_fresh_run():
    """Up for stable_after_s: the next death counts as the first again, with the shortest delay."""
    state = after_start(RestartState(), now=0.0)
    for now in (1.0, 2.0, 3.0):
        _, state = after_failure(POLICY, state, now)
    state = after_start(state, now=4.0)
    delay, state = after_failure(POLICY, state, now=4.0 + POLICY.stable_after_s)
    assert delay == 0.5 and state.failures == 1


def test_max_attempts_zero_never_restarts():
    """max_attempts=0: the first failure gives up."""
    delay, _ = after_failure(RestartPolicy(max_attempts=0), RestartState(), 0.0)
    assert delay is None


def test_a_negative_setting_is_refused():
    """Nonsense settings fail when the policy is built, not at the first restart."""
    with pytest.raises(ValueError):
        RestartPolicy(max_attempts=-1)
    with pytest.raises(ValueError):
        RestartPolicy(base_delay_s=-0.1)


def test_without_deaths_counting_only_starts_that_fail_give_up():
    """deaths_count=False (the zygote): a process that came up and died is restarted however often, at the backoff
    (capped); starts that never come up give up past max_attempts in a row, and one that comes up resets them."""
    policy = RestartPolicy(max_attempts=2, base_delay_s=0.5, max_delay_s=1.5, deaths_count=False)
    state, delays = RestartState(), []
    for now in range(10):  # up, then killed, ten times, each soon after it came up
        state = after_start(state, now=float(now))
        delay, state = after_failure(policy, state, now + 0.5)
        delays.append(delay)
    assert delays == [0.5, 1.0] + [1.5] * 8
    for _ in range(2):  # then two relaunches that never get ready: still trying
        delay, state = after_failure(policy, state, 20.0)
        assert delay == 1.5
    assert after_failure(policy, state, 21.0)[0] is None  # the third in a row: give up
    state = after_start(RestartState(failures=5, failed_starts=2), now=30.0)
    assert after_failure(policy, state, 31.0)[0] == 1.5 and state.failed_starts == 0
