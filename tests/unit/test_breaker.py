"""Circuit breaker state machine, tick by tick with a fake clock (plain floats)."""

from __future__ import annotations

import dataclasses

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_pool.server.breaker import (
    AsyncBreakerGuard,
    BreakerConfig,
    BreakerKey,
    BreakerRegistry,
    BreakerState,
    CircuitBreaker,
    Outcome,
    Permit,
    MIN_DEADLINE_COUNTED_S,
    outcome_for,
)
from dspy_pool.server.breaker import _CountWindow
from dspy_pool import errors

FAST = 0.01  # a call duration well under the slow threshold
SLOW = 5.0

BASE = BreakerConfig(
    window_type="count",
    window_size=10,
    minimum_calls=4,
    failure_rate_threshold=0.5,
    slow_call_duration_s=1.0,
    slow_call_rate_threshold=0.5,
    wait_duration_s=10.0,
    wait_multiplier=2.0,
    max_wait_duration_s=30.0,
    half_open_max_probes=2,
    probe_timeout_s=5.0,
)


def config(**changes) -> BreakerConfig:
    return dataclasses.replace(BASE, **changes)


def call(breaker: CircuitBreaker, outcome: Outcome, now: float, duration_s: float = FAST) -> Permit:
    permit = breaker.acquire(now)
    assert permit is not None, "expected the breaker to admit the call"
    breaker.record(permit, outcome, duration_s, now)
    return permit


def trip(breaker: CircuitBreaker, now: float) -> None:
    for _ in range(breaker.config.minimum_calls):
        call(breaker, Outcome.FAILURE, now)
    assert breaker.state(now) is BreakerState.OPEN


def half_open(breaker: CircuitBreaker, now: float) -> float:
    """Trip the breaker at `now` and return the time it turns half-open."""
    trip(breaker, now)
    open_until = breaker.snapshot(now).open_until
    assert breaker.state(open_until) is BreakerState.HALF_OPEN
    return open_until


# -- config --------------------------------------------------------------


def test_config_rejects_unknown_window_type():
    """A window type other than count or time is refused."""
    with pytest.raises(ValueError, match="window_type"):
        config(window_type="hourly")


def test_config_rejects_minimum_calls_above_count_window():
    """A count window smaller than minimum_calls could never trip, so it is refused."""
    with pytest.raises(ValueError, match="minimum_calls"):
        config(window_size=3, minimum_calls=4)


def test_config_rejects_rate_out_of_range():
    """Rate thresholds must lie in (0, 1]."""
    with pytest.raises(ValueError, match="failure_rate_threshold"):
        config(failure_rate_threshold=1.5)


def test_config_rejects_max_wait_below_base_wait():
    """The cap on the open wait cannot be below the base wait."""
    with pytest.raises(ValueError, match="max_wait_duration_s"):
        config(wait_duration_s=10.0, max_wait_duration_s=5.0)


# -- closed ----------------------------------------------------------------


def test_starts_closed_and_admits():
    """A new breaker is closed and hands out permits."""
    breaker = CircuitBreaker(BASE)
    assert breaker.state(0.0) is BreakerState.CLOSED
    assert breaker.acquire(0.0) is not None


def test_no_trip_before_minimum_calls():
    """Failures below minimum_calls never trip, however high the rate."""
    breaker = CircuitBreaker(BASE)
    for _ in range(BASE.minimum_calls - 1):
        call(breaker, Outcome.FAILURE, 0.0)
    assert breaker.state(0.0) is BreakerState.CLOSED
    assert breaker.snapshot(0.0).failure_rate is None


def test_trips_on_failure_rate():
    """Once minimum_calls are in, a failure rate at the threshold opens the breaker."""
    breaker = CircuitBreaker(BASE)
    call(breaker, Outcome.SUCCESS, 0.0)
    call(breaker, Outcome.SUCCESS, 0.0)
    call(breaker, Outcome.FAILURE, 0.0)
    assert breaker.state(0.0) is BreakerState.CLOSED
    call(breaker, Outcome.FAILURE, 0.0)
    assert breaker.state(0.0) is BreakerState.OPEN


def test_stays_closed_below_failure_rate():
    """A failure rate under the threshold keeps it closed."""
    breaker = CircuitBreaker(BASE)
    for outcome in [Outcome.SUCCESS] * 7 + [Outcome.FAILURE] * 3:
        call(breaker, outcome, 0.0)
    assert breaker.state(0.0) is BreakerState.CLOSED
    assert breaker.snapshot(0.0).failure_rate == pytest.approx(0.3)


def test_trips_on_slow_call_rate():
    """Successful but slow calls at the slow-rate threshold open the breaker."""
    breaker = CircuitBreaker(BASE)
    call(breaker, Outcome.SUCCESS, 0.0, duration_s=FAST)
    call(breaker, Outcome.SUCCESS, 0.0, duration_s=FAST)
    call(breaker, Outcome.SUCCESS, 0.0, duration_s=SLOW)
    call(breaker, Outcome.SUCCESS, 0.0, duration_s=SLOW)
    assert breaker.state(0.0) is BreakerState.OPEN
    assert breaker.take_transitions()[-1].reason == "slow_call_rate"


def test_ignored_outcomes_never_count():
    """IGNORED results (bad input, cancellation) neither fill the window nor trip it."""
    breaker = CircuitBreaker(BASE)
    for _ in range(50):
        call(breaker, Outcome.IGNORED, 0.0, duration_s=SLOW)
    snapshot = breaker.snapshot(0.0)
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.calls_in_window == 0


def test_count_window_keeps_only_last_n():
    """Old results fall out of a count window, so a past burst of failures is forgotten."""
    breaker = CircuitBreaker(config(failure_rate_threshold=0.9))
    for outcome in [Outcome.FAILURE] * 3 + [Outcome.SUCCESS] * 10:
        call(breaker, outcome, 0.0)
    snapshot = breaker.snapshot(0.0)
    assert snapshot.calls_in_window == 10
    assert snapshot.failure_rate == 0.0


def test_time_window_expires_old_outcomes():
    """Results older than the time window no longer count toward the rate."""
    breaker = CircuitBreaker(config(window_type="time", window_size=10.0, time_bucket_s=1.0))
    for _ in range(3):
        call(breaker, Outcome.FAILURE, 0.0)
    for _ in range(3):
        call(breaker, Outcome.SUCCESS, 10.5)
    snapshot = breaker.snapshot(10.5)
    assert snapshot.calls_in_window == 3
    assert snapshot.failure_rate is None  # below minimum_calls once the failures expired
    call(breaker, Outcome.FAILURE, 10.5)
    assert breaker.state(10.5) is BreakerState.CLOSED


def test_time_window_trips_within_window():
    """Failures spread inside the time window add up and trip."""
    breaker = CircuitBreaker(config(window_type="time", window_size=10.0))
    for tick in range(4):
        call(breaker, Outcome.FAILURE, float(tick * 2))
    assert breaker.state(6.0) is BreakerState.OPEN


# -- open ------------------------------------------------------------------


def test_open_rejects_until_wait_elapses():
    """While open every acquire is refused; at open_until the breaker turns half-open."""
    breaker = CircuitBreaker(BASE)
    trip(breaker, 100.0)
    assert breaker.snapshot(100.0).open_until == 110.0
    assert breaker.acquire(100.0) is None
    assert breaker.acquire(109.99) is None
    assert breaker.state(110.0) is BreakerState.HALF_OPEN
    assert breaker.acquire(110.0) is not None


def test_wait_grows_with_consecutive_trips():
    """Each trip in a row multiplies the open wait by wait_multiplier."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)  # first trip: 10 s
    probe = breaker.acquire(now)
    breaker.record(probe, Outcome.FAILURE, FAST, now)
    snapshot = breaker.snapshot(now)
    assert snapshot.consecutive_trips == 2
    assert snapshot.open_until == now + 20.0


def test_wait_is_capped():
    """The open wait never exceeds max_wait_duration_s."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)  # first trip: 10 s
    waits = []
    for _ in range(4):
        probe = breaker.acquire(now)
        breaker.record(probe, Outcome.FAILURE, FAST, now)
        open_until = breaker.snapshot(now).open_until
        waits.append(open_until - now)
        now = open_until
    assert waits == [20.0, 30.0, 30.0, 30.0]


def test_huge_trip_streak_does_not_overflow():
    """A very long streak of trips still yields the capped wait rather than an overflow."""
    breaker = CircuitBreaker(config(wait_multiplier=1000.0))
    now = half_open(breaker, 0.0)
    for _ in range(200):
        probe = breaker.acquire(now)
        breaker.record(probe, Outcome.FAILURE, FAST, now)
        now = breaker.snapshot(now).open_until
        assert breaker.state(now) is BreakerState.HALF_OPEN
    assert breaker.snapshot(now).consecutive_trips == 201


# -- half-open -------------------------------------------------------------


def test_half_open_allows_only_max_probes():
    """Half-open admits half_open_max_probes calls and rejects the rest."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)
    probes = [breaker.acquire(now) for _ in range(BASE.half_open_max_probes)]
    assert all(probe is not None and probe.probe for probe in probes)
    assert breaker.acquire(now) is None


def test_probe_successes_close():
    """When every probe succeeds the breaker closes and the trip streak resets."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)
    probes = [breaker.acquire(now) for _ in range(BASE.half_open_max_probes)]
    breaker.record(probes[0], Outcome.SUCCESS, FAST, now)
    assert breaker.state(now) is BreakerState.HALF_OPEN
    breaker.record(probes[1], Outcome.SUCCESS, FAST, now)
    snapshot = breaker.snapshot(now)
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.consecutive_trips == 0
    assert snapshot.calls_in_window == 0


def test_probe_failure_reopens():
    """A single failed probe reopens the breaker at once."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)
    probe = breaker.acquire(now)
    breaker.record(probe, Outcome.FAILURE, FAST, now + 1)
    assert breaker.state(now + 1) is BreakerState.OPEN


def test_slow_probes_reopen():
    """Probes that succeed but are too often slow reopen the breaker."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)
    probes = [breaker.acquire(now) for _ in range(BASE.half_open_max_probes)]
    breaker.record(probes[0], Outcome.SUCCESS, SLOW, now)
    breaker.record(probes[1], Outcome.SUCCESS, FAST, now)
    assert breaker.state(now) is BreakerState.OPEN
    assert breaker.take_transitions()[-1].reason == "probes_slow"


def test_ignored_probe_frees_its_slot():
    """An IGNORED probe result hands its slot back for another probe."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)
    probes = [breaker.acquire(now) for _ in range(BASE.half_open_max_probes)]
    assert breaker.acquire(now) is None
    breaker.record(probes[0], Outcome.IGNORED, FAST, now)
    assert breaker.acquire(now) is not None
    assert breaker.state(now) is BreakerState.HALF_OPEN


def test_lost_probe_times_out_and_reopens():
    """A probe that never reports counts as failed once probe_timeout_s has passed."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)
    for _ in range(BASE.half_open_max_probes):
        breaker.acquire(now)
    assert breaker.acquire(now + BASE.probe_timeout_s - 0.01) is None
    assert breaker.state(now + BASE.probe_timeout_s) is BreakerState.OPEN
    assert breaker.take_transitions()[-1].reason == "probe_timed_out"


def test_lost_probe_does_not_leave_breaker_stuck():
    """After a lost probe times out, the breaker goes half-open again and can close."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)
    breaker.acquire(now)  # lost: never recorded
    now += BASE.probe_timeout_s
    reopened_until = breaker.snapshot(now).open_until
    assert breaker.state(reopened_until) is BreakerState.HALF_OPEN
    for _ in range(BASE.half_open_max_probes):
        call(breaker, Outcome.SUCCESS, reopened_until)
    assert breaker.state(reopened_until) is BreakerState.CLOSED


def test_probe_reported_twice_counts_once():
    """Recording the same probe permit twice does not count as two successes."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)
    probe = breaker.acquire(now)
    breaker.record(probe, Outcome.SUCCESS, FAST, now)
    breaker.record(probe, Outcome.SUCCESS, FAST, now)
    assert breaker.state(now) is BreakerState.HALF_OPEN


# -- generations -----------------------------------------------------------


def test_stale_closed_permit_does_not_affect_half_open():
    """A slow call admitted while closed that ends during half-open is dropped, not counted as a probe."""
    breaker = CircuitBreaker(BASE)
    straggler = breaker.acquire(0.0)
    now = half_open(breaker, 0.0)
    breaker.record(straggler, Outcome.FAILURE, now, now)
    assert breaker.state(now) is BreakerState.HALF_OPEN
    assert breaker.snapshot(now).consecutive_trips == 1


def test_stale_permit_does_not_refill_new_closed_window():
    """Results of permits from before a trip do not land in the window after the breaker closes."""
    breaker = CircuitBreaker(BASE)
    stragglers = [breaker.acquire(0.0) for _ in range(BASE.minimum_calls)]
    now = half_open(breaker, 0.0)
    for _ in range(BASE.half_open_max_probes):
        call(breaker, Outcome.SUCCESS, now)
    assert breaker.state(now) is BreakerState.CLOSED
    for permit in stragglers:
        breaker.record(permit, Outcome.FAILURE, FAST, now)
    snapshot = breaker.snapshot(now)
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.calls_in_window == 0


def test_timed_out_probe_reporting_late_is_stale():
    """A probe that reports after it was timed out cannot close the reopened breaker."""
    breaker = CircuitBreaker(config(half_open_max_probes=1))
    now = half_open(breaker, 0.0)
    probe = breaker.acquire(now)
    late = now + BASE.probe_timeout_s + 1
    breaker.record(probe, Outcome.SUCCESS, FAST, late)
    assert breaker.state(late) is BreakerState.OPEN


# -- transitions and snapshot -------------------------------------------------


def test_transitions_are_reported_in_order():
    """A full cycle queues open, half-open and closed transitions with their reasons."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)
    for _ in range(BASE.half_open_max_probes):
        call(breaker, Outcome.SUCCESS, now)
    steps = [(t.from_state, t.to_state, t.reason) for t in breaker.take_transitions()]
    assert steps == [
        (BreakerState.CLOSED, BreakerState.OPEN, "failure_rate"),
        (BreakerState.OPEN, BreakerState.HALF_OPEN, "wait_elapsed"),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED, "probes_succeeded"),
    ]
    assert breaker.take_transitions() == []


def test_snapshot_counts_transitions():
    """The snapshot carries totals of each kind of transition."""
    breaker = CircuitBreaker(BASE)
    now = half_open(breaker, 0.0)
    for _ in range(BASE.half_open_max_probes):
        call(breaker, Outcome.SUCCESS, now)
    snapshot = breaker.snapshot(now)
    assert (snapshot.opened_total, snapshot.half_opened_total, snapshot.closed_total) == (1, 1, 1)


def test_undrained_transitions_stay_bounded():
    """A caller that never drains transitions cannot make the queue grow without bound."""
    breaker = CircuitBreaker(config(half_open_max_probes=1))
    now = half_open(breaker, 0.0)
    for _ in range(200):
        call(breaker, Outcome.FAILURE, now)
        now = breaker.snapshot(now).open_until
        breaker.state(now)
    assert len(breaker.take_transitions()) <= 64


# -- registry and guard ---------------------------------------------------------


def test_registry_creates_one_breaker_per_key():
    """The registry creates a breaker lazily per key and returns the same one after."""
    registry = BreakerRegistry(BASE)
    first = registry.get(BreakerKey("qa", "openai/gpt-4o"))
    assert registry.get(BreakerKey("qa", "openai/gpt-4o")) is first
    assert registry.get(BreakerKey("qa", "other")) is not first
    assert len(registry) == 2


def test_registry_isolates_keys():
    """Tripping one key's breaker leaves another key closed."""
    registry = BreakerRegistry(BASE)
    trip(registry.get(BreakerKey("qa", "a")), 0.0)
    assert registry.get(BreakerKey("qa", "b")).state(0.0) is BreakerState.CLOSED


def test_guard_logs_each_transition_with_key():
    """The guard logs breaker_opened, breaker_half_open and breaker_closed with program and endpoint."""
    clock = [0.0]
    guard = AsyncBreakerGuard(BreakerRegistry(BASE), clock=lambda: clock[0])
    key = BreakerKey("qa", "sim")
    with structlog.testing.capture_logs() as logs:
        for _ in range(BASE.minimum_calls):
            guard.record(key, guard.acquire(key), Outcome.FAILURE)
        clock[0] = 10.0
        probes = [guard.acquire(key) for _ in range(BASE.half_open_max_probes)]
        for probe in probes:
            guard.record(key, probe, Outcome.SUCCESS)
    events = [(entry["event"], entry["program"], entry["lm_endpoint"]) for entry in logs]
    assert events == [
        ("breaker_opened", "qa", "sim"),
        ("breaker_half_open", "qa", "sim"),
        ("breaker_closed", "qa", "sim"),
    ]
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["wait_s"] == BASE.wait_duration_s


def test_guard_measures_duration_from_permit():
    """Without an explicit duration, the guard times the call from the permit's issue."""
    clock = [0.0]
    guard = AsyncBreakerGuard(BreakerRegistry(BASE), clock=lambda: clock[0])
    key = BreakerKey("qa", "sim")
    for _ in range(BASE.minimum_calls):
        permit = guard.acquire(key)
        clock[0] += SLOW
        guard.record(key, permit, Outcome.SUCCESS)
    assert guard.state(key) is BreakerState.OPEN


# -- property ------------------------------------------------------------------

outcomes = st.sampled_from(list(Outcome))
durations = st.floats(min_value=0.0, max_value=3.0)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("call"), outcomes, durations),  # acquire and report at once
        st.tuples(st.just("acquire")),  # acquire and keep the permit outstanding
        st.tuples(st.just("record"), st.integers(min_value=0, max_value=1000), outcomes, durations),
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=40.0)),
        st.tuples(st.just("state")),
    ),
    max_size=80,
)

small_configs = st.builds(
    BreakerConfig,
    window_type=st.just("count"),
    window_size=st.integers(min_value=3, max_value=8),
    minimum_calls=st.integers(min_value=1, max_value=3),
    failure_rate_threshold=st.sampled_from([0.25, 0.5, 1.0]),
    slow_call_duration_s=st.just(1.0),
    slow_call_rate_threshold=st.sampled_from([0.5, 1.0]),
    wait_duration_s=st.just(2.0),
    wait_multiplier=st.just(2.0),
    max_wait_duration_s=st.just(8.0),
    half_open_max_probes=st.integers(min_value=1, max_value=3),
    probe_timeout_s=st.just(5.0),
) | st.builds(
    BreakerConfig,
    window_type=st.just("time"),
    window_size=st.just(5.0),
    minimum_calls=st.integers(min_value=1, max_value=3),
    wait_duration_s=st.just(2.0),
    max_wait_duration_s=st.just(8.0),
    half_open_max_probes=st.integers(min_value=1, max_value=3),
    probe_timeout_s=st.just(5.0),
    slow_call_duration_s=st.just(1.0),
)


@settings(max_examples=150, deadline=None)
@given(small_configs, operations)
def test_random_operations_keep_invariants(breaker_config, ops):
    """Any sequence of acquires, records and time steps never raises, and open never admits early."""
    breaker = CircuitBreaker(breaker_config)
    now = 0.0
    permits: list[Permit] = []
    for op in ops:
        if op[0] == "advance":
            now += op[1]
        elif op[0] in ("acquire", "call"):
            before = breaker.snapshot(now)
            permit = breaker.acquire(now)
            if before.state is BreakerState.OPEN:
                assert now < before.open_until and permit is None
            if permit is not None and op[0] == "call":
                breaker.record(permit, op[1], op[2], now)
            if permit is not None:
                permits.append(permit)
        elif op[0] == "record" and permits:
            # Any permit ever issued: outstanding, already reported, or stale.
            _, index, outcome, duration_s = op
            breaker.record(permits[index % len(permits)], outcome, duration_s, now)
        else:
            breaker.state(now)
        snapshot = breaker.snapshot(now)
        assert snapshot.state in (BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN)
        assert snapshot.probes_in_flight <= breaker_config.half_open_max_probes
        if snapshot.state is BreakerState.OPEN:
            assert snapshot.open_until > now
            assert snapshot.open_until - now <= breaker_config.max_wait_duration_s + 1e-9  # (t + w) - t can round past w
    for transition in breaker.take_transitions():
        if transition.to_state is BreakerState.OPEN:
            assert transition.open_until > transition.at


# -- outcome_for: which errors count (reads the error table) -----------------------------


@pytest.mark.parametrize(
    "kind",
    ["lm_error", "lm_connection", "lm_rate_limited", "lm_timeout", "lm_malformed_output", "lm_auth", "deadline_exceeded",
     "worker_crashed", "worker_hung"],
)
def test_system_failures_count_for_breaker(kind):
    """LM errors (a refused key included), timeouts, malformed output and worker crashes count against the breaker."""
    assert outcome_for(errors.PoolError("x", kind=errors.ErrorKind(kind))) is Outcome.FAILURE


@pytest.mark.parametrize(
    "kind",
    ["invalid_argument", "not_found", "cancelled", "queue_full", "unavailable", "internal", "program_error", "lm_bad_request",
     "program_quarantined", "failed_precondition"],
)
def test_caller_and_front_errors_do_not_count_for_breaker(kind):
    """The caller's bad input, cancellations, front-side overload and the program's own bugs never count (hard rule 8)."""
    assert outcome_for(errors.PoolError("x", kind=errors.ErrorKind(kind))) is Outcome.IGNORED


def test_deadline_spent_in_the_queue_is_ignored():
    """A deadline that passed before the call left our queue says nothing about the LM endpoint."""
    queued = errors.DeadlineExceeded("late", metadata={"phase": errors.PHASE_QUEUED})
    running = errors.DeadlineExceeded("late", metadata={"phase": "running"})
    assert (outcome_for(queued), outcome_for(running)) == (Outcome.IGNORED, Outcome.FAILURE)


def test_outcome_for_is_the_error_tables_column():
    """Every kind counts exactly as its row's breaker_failure says."""
    for kind, row in errors.MEANINGS.items():
        expected = Outcome.FAILURE if row.breaker_failure else Outcome.IGNORED
        assert outcome_for(errors.PoolError("x", kind=kind)) is expected


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=7), st.lists(st.tuples(st.booleans(), st.booleans()), max_size=40),
       st.integers(min_value=0, max_value=40))
def test_count_window_ring_matches_the_last_n_results(size, results, reset_at):
    """The ring's running sums always equal those of the last `size` results, across wraps and a reset."""
    window = _CountWindow(size)
    kept: list[tuple[bool, bool]] = []
    for index, (failed, slow) in enumerate(results):
        if index == reset_at:
            window.reset()
            kept.clear()
        window.add(failed, slow, 0.0)
        kept = (kept + [(failed, slow)])[-size:]
        assert window.totals(0.0) == (len(kept), sum(f for f, _ in kept), sum(s for _, s in kept))


def test_closed_permits_carry_the_generation_and_issue_time():
    """A closed breaker's permit is no probe, carries the current generation, a fresh serial and its issue time."""
    breaker = CircuitBreaker(BASE)
    first, second = breaker.acquire(1.0), breaker.acquire(2.0)
    assert (first.probe, first.issued_at, second.issued_at) == (False, 1.0, 2.0)
    assert first.generation == second.generation and second.serial == first.serial + 1


@given(st.lists(st.sampled_from(["ok", "fail", "slow"]), max_size=120))
@settings(max_examples=200, deadline=None)
def test_skipping_the_trip_check_after_plain_successes_changes_nothing(outcomes):
    """A count window checks its rates only after failures, slow calls and the first minimum_calls: it opens exactly
    when a breaker that checks after every call does (failures before the minimum trip on the call that reaches it)."""
    lean, checked = CircuitBreaker(BASE), CircuitBreaker(BASE)
    checked._success_cannot_trip = False  # the reference: the check after every call
    for number, outcome in enumerate(outcomes):
        now = number * 0.01
        for breaker in (lean, checked):
            permit = breaker.acquire(now)
            if permit is not None:
                breaker.record(permit, Outcome.FAILURE if outcome == "fail" else Outcome.SUCCESS,
                               SLOW if outcome == "slow" else FAST, now)
        assert lean.state(now) is checked.state(now)


def test_failures_before_the_minimum_trip_on_the_success_that_reaches_it():
    breaker = CircuitBreaker(BASE)  # minimum_calls 4, failure rate threshold 0.5
    for outcome in (Outcome.FAILURE, Outcome.FAILURE, Outcome.SUCCESS):
        call(breaker, outcome, 0.0)
    assert breaker.state(0.0) is BreakerState.CLOSED
    call(breaker, Outcome.SUCCESS, 0.0)  # 4 calls, 2 failed: 0.5
    assert breaker.state(0.0) is BreakerState.OPEN


def test_a_short_deadline_running_out_does_not_count_against_the_breaker():
    """A deadline of under a second says more about the caller than the LM: one client's 1 ms deadlines opened the
    breaker for every client of the program (a soak found it). A longer one, or another kind, still counts."""
    deadline = errors.PoolError("deadline exceeded while running", kind=errors.ErrorKind.DEADLINE_EXCEEDED)
    assert outcome_for(deadline, budget_s=0.001) is Outcome.IGNORED
    assert outcome_for(deadline, budget_s=MIN_DEADLINE_COUNTED_S) is Outcome.FAILURE
    assert outcome_for(deadline) is Outcome.FAILURE  # the budget unknown: the error table decides
    lm_down = errors.PoolError("connection refused", kind=errors.ErrorKind.LM_CONNECTION)
    assert outcome_for(lm_down, budget_s=0.001) is Outcome.FAILURE
