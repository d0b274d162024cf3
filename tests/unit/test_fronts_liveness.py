"""When a front counts as hung (dspy_pool.fronts.liveness): pure, tick by tick."""

from __future__ import annotations

import pytest

from dspy_pool.fronts.liveness import after_check, check_interval_s, hung, silent_s, started

TIMEOUT_S = 10.0


def run(checks, start: float = 0.0):
    """Feed (now, answered) checks to a front that came up at `start`; the state after each."""
    state, states = started(start), []
    for now, answered in checks:
        state = after_check(state, answered, now)
        states.append(state)
    return states


def test_a_front_that_answers_is_never_hung():
    """Answered checks, however far apart, keep a front alive."""
    assert not any(hung(s, TIMEOUT_S) for s in run([(t, True) for t in (2.0, 30.0, 100.0)]))


def test_a_front_silent_for_the_timeout_is_hung_at_the_first_unanswered_check_past_it():
    """Silent from its last answer at t=4: not hung at t=12, hung at the check at t=14."""
    states = run([(2.0, True), (4.0, True), (6.0, False), (8.0, False), (12.0, False), (14.0, False)])
    assert [hung(s, TIMEOUT_S) for s in states] == [False, False, False, False, False, True]
    assert silent_s(states[-1]) == 10.0


def test_one_answer_in_a_run_of_silence_starts_the_count_again():
    """A slow front that answers now and then is not hung."""
    states = run([(2.0, False), (8.0, False), (9.0, True), (12.0, False), (18.9, False)])
    assert not any(hung(s, TIMEOUT_S) for s in states)
    assert hung(after_check(states[-1], False, 19.0), TIMEOUT_S)  # 10 s since the answer at t=9


def test_a_front_that_never_answered_since_it_came_up_counts_from_its_start():
    states = run([(5.0, False), (9.9, False), (15.0, False)], start=5.0)
    assert [hung(s, TIMEOUT_S) for s in states] == [False, False, True]


def test_no_checks_at_all_never_make_a_front_hung():
    """The prober is down: no evidence, no kill, however long it lasts."""
    assert not hung(started(0.0), TIMEOUT_S)
    assert not hung(run([(1.0, True)])[-1], TIMEOUT_S)


def test_a_check_from_before_the_front_came_up_says_nothing():
    """A check sent to the previous run of a restarted front arrives late: ignored."""
    state = started(100.0)
    assert after_check(state, False, 99.0) == state
    assert not hung(after_check(state, False, 50.0), TIMEOUT_S)


@pytest.mark.parametrize("timeout_s,interval_s", [(10.0, 2.0), (60.0, 2.0), (3.0, 0.6), (0.1, 0.1)])
def test_several_checks_fit_in_the_timeout_and_one_comes_every_2_s_at_most(timeout_s, interval_s):
    assert check_interval_s(timeout_s) == pytest.approx(interval_s)
