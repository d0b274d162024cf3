"""The scaling policy, tick by tick with a fake clock (plain float `now` values)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_pool.pool.scaler import (
    Decision,
    Reason,
    ScalerConfig,
    ScalerMetrics,
    ScalerState,
    decide,
)

MiB = 1024 * 1024

# Seven calls per worker at the target load: easy arithmetic in the tests below.
CONFIG = ScalerConfig(
    min_workers=1,
    max_workers=20,
    worker_concurrency=10,
    target_queue_wait_s=0.1,
    target_load_per_worker=0.7,
    upscale_step_max=3,
    upscale_cooldown_s=2.0,
    emergency_fraction=0.5,
    emergency_step_max=6,
    downscale_window_s=60.0,
    downscale_utilisation=0.3,
    flap_window_s=120.0,
    flap_penalty_s=60.0,
    max_flap_penalty_s=300.0,
)


def busy(workers: int, in_flight: int = 0, queued: int = 0, **overrides) -> ScalerMetrics:
    """Metrics of `workers` ready workers serving `in_flight` calls with `queued` waiting."""
    slots = workers * CONFIG.worker_concurrency
    values = dict(
        current_workers=workers,
        queue_depth=queued,
        in_flight=in_flight,
        utilisation=in_flight / slots if slots else 0.0,
    )
    values.update(overrides)
    return ScalerMetrics(**values)


def idle(workers: int) -> ScalerMetrics:
    return busy(workers)


@dataclass
class FakePool:
    """A pool that applies each decision: new workers boot for `boot_s`, removed ones leave at once."""

    config: ScalerConfig
    ready: int
    boot_s: float = 0.5
    booting: list[float] = field(default_factory=list)  # ready-at times
    state: ScalerState = field(default_factory=ScalerState)
    changes: list[tuple[float, int, int, Reason]] = field(default_factory=list)  # (now, from, to, reason)

    def metrics(self, demand: int) -> ScalerMetrics:
        slots = self.ready * self.config.worker_concurrency
        in_flight = min(demand, slots)
        queued = demand - in_flight
        return ScalerMetrics(
            current_workers=self.ready,
            starting_workers=len(self.booting),
            queue_depth=queued,
            in_flight=in_flight,
            queue_wait_p95_s=0.5 if queued else 0.0,
            oldest_queued_deadline_fraction=0.2 if queued else 0.0,
            utilisation=in_flight / slots if slots else 0.0,
        )

    def tick(self, now: float, demand: int) -> Decision:
        self.ready += sum(1 for ready_at in self.booting if ready_at <= now)
        self.booting = [ready_at for ready_at in self.booting if ready_at > now]
        decision = decide(self.metrics(demand), self.config, self.state, now)
        self.state = decision.state
        self._apply(decision.desired_workers, now)
        if decision.changed:
            self.changes.append((now, decision.from_workers, decision.desired_workers, decision.reason))
        return decision

    def _apply(self, desired: int, now: float) -> None:
        capacity = self.ready + len(self.booting)
        self.booting += [now + self.boot_s] * max(0, desired - capacity)
        while self.ready + len(self.booting) > desired:
            if self.booting:
                self.booting.pop()
            else:
                self.ready -= 1

    @property
    def size(self) -> int:
        return self.ready + len(self.booting)

    def run(self, demand_at: Callable[[float], int], start: float, stop: float, tick_s: float = 1.0) -> None:
        steps = round((stop - start) / tick_s)
        for step in range(steps):
            now = start + step * tick_s
            self.tick(now, demand_at(now))


def reversals(directions: list[int]) -> int:
    return sum(1 for before, after in zip(directions, directions[1:]) if before != after)


# ------------------------------------------------------------------ scale up


def test_scales_up_when_load_per_worker_exceeds_target():
    """Queued plus in-flight calls above the per-worker target add workers."""
    decision = decide(busy(2, in_flight=20), CONFIG, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (3, Reason.LOAD_PER_WORKER)


def test_scales_up_when_queue_wait_exceeds_target():
    """A p95 queue wait above target adds workers even when the load signal is content."""
    metrics = busy(4, in_flight=24, queued=2, queue_wait_p95_s=0.15)
    decision = decide(metrics, CONFIG, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (6, Reason.QUEUE_WAIT)


def test_ignores_a_stale_queue_wait_once_the_queue_is_empty():
    """A high wait percentile with nothing queued means capacity already caught up."""
    metrics = busy(4, in_flight=20, queue_wait_p95_s=1.0)
    decision = decide(metrics, CONFIG, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (4, Reason.STEADY)


@pytest.mark.parametrize(("demand", "expected"), [(29, 5), (35, 5), (36, 6), (42, 6)])
def test_upscale_step_is_proportional_to_the_excess(demand, expected):
    """The pool grows to just enough workers to bring the load back to target."""
    decision = decide(busy(4, in_flight=demand), CONFIG, ScalerState(), now=0.0)
    assert decision.desired_workers == expected


def test_upscale_step_is_capped():
    """However large the excess, one step adds at most upscale_step_max workers."""
    decision = decide(busy(2, in_flight=20, queued=500), CONFIG, ScalerState(), now=0.0)
    assert decision.desired_workers == 2 + CONFIG.upscale_step_max


def test_wait_signal_waits_out_the_cooldown():
    """After a scale-up the lagging wait percentile adds nothing until the cooldown has passed."""
    first = decide(busy(2, in_flight=20, queued=100), CONFIG, ScalerState(), now=10.0)
    lagging = busy(5, in_flight=20, queued=5, queue_wait_p95_s=0.5)  # the load alone fits 5 workers
    during = decide(lagging, CONFIG, first.state, now=11.9)
    assert (during.desired_workers, during.reason) == (5, Reason.COOLDOWN)
    after = decide(lagging, CONFIG, first.state, now=12.0)
    assert (after.desired_workers, after.reason) == (8, Reason.QUEUE_WAIT)


def test_load_signal_grows_during_the_cooldown():
    """Demand beyond the workers ready and starting adds more at once: that signal does not lag."""
    first = decide(busy(2, in_flight=20, queued=100), CONFIG, ScalerState(), now=10.0)
    second = decide(busy(5, in_flight=50, queued=70, queue_wait_p95_s=0.5), CONFIG, first.state, now=10.5)
    assert (second.desired_workers, second.reason) == (8, Reason.LOAD_PER_WORKER)


def test_scales_up_again_once_cooldown_has_passed():
    """After the cooldown a persisting excess adds the next step."""
    first = decide(busy(2, in_flight=20, queued=100), CONFIG, ScalerState(), now=10.0)
    second = decide(busy(5, in_flight=50, queued=70), CONFIG, first.state, now=12.0)
    assert (second.desired_workers, second.reason) == (8, Reason.LOAD_PER_WORKER)


def test_counts_starting_workers_as_capacity():
    """Workers still booting count, so a tick during their boot does not add them again."""
    metrics = busy(2, in_flight=20, queued=15, starting_workers=3)
    decision = decide(metrics, CONFIG, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (5, Reason.STEADY)


def test_adds_only_the_shortfall_beyond_starting_workers():
    """With workers booting, only the demand they cannot cover adds more."""
    metrics = busy(2, in_flight=20, queued=22, starting_workers=3)
    decision = decide(metrics, CONFIG, ScalerState(), now=0.0)
    assert decision.desired_workers == 6


# ----------------------------------------------------------------- emergency


def test_emergency_ignores_cooldown():
    """A queued call near its deadline adds workers even right after a scale-up."""
    state = ScalerState(last_scale_up_at=99.5)
    metrics = busy(4, in_flight=40, queued=10, oldest_queued_deadline_fraction=0.6)
    decision = decide(metrics, CONFIG, state, now=100.0)
    assert (decision.desired_workers, decision.reason) == (8, Reason.EMERGENCY)


def test_emergency_step_may_exceed_the_normal_step():
    """The emergency step is capped by emergency_step_max, not upscale_step_max."""
    metrics = busy(2, in_flight=20, queued=500, oldest_queued_deadline_fraction=0.9)
    decision = decide(metrics, CONFIG, ScalerState(), now=0.0)
    assert decision.desired_workers == 2 + CONFIG.emergency_step_max


def test_emergency_adds_a_worker_even_when_load_fits():
    """A call about to miss its deadline gets a new worker even if the load looks fine."""
    metrics = busy(4, in_flight=20, queued=1, oldest_queued_deadline_fraction=0.8)
    decision = decide(metrics, CONFIG, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (5, Reason.EMERGENCY)


def test_emergency_does_not_pile_on_while_workers_start():
    """With a worker already booting, an emergency whose load fits adds nothing more."""
    metrics = busy(4, in_flight=20, queued=1, starting_workers=1, oldest_queued_deadline_fraction=0.8)
    decision = decide(metrics, CONFIG, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (5, Reason.STEADY)


# ---------------------------------------------------------------- cold start


def test_cold_start_goes_straight_to_min_workers():
    """An empty pool with a queued call gets min_workers at once."""
    config = dataclasses.replace(CONFIG, min_workers=2)
    decision = decide(busy(0, queued=1), config, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (2, Reason.COLD_START)


def test_cold_start_sizes_the_pool_for_the_queue():
    """A cold pool facing a deep queue starts enough workers for it in one step."""
    decision = decide(busy(0, queued=50), CONFIG, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (8, Reason.COLD_START)


def test_cold_start_starts_one_worker_even_with_min_zero():
    """A pool allowed to idle at zero still starts a worker for a queued call."""
    config = dataclasses.replace(CONFIG, min_workers=0)
    decision = decide(busy(0, queued=1), config, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (1, Reason.COLD_START)


def test_cold_start_ignores_cooldown():
    """The cold path does not wait for the cooldown: every queued call is stuck."""
    state = ScalerState(last_scale_up_at=9.9)
    decision = decide(busy(0, queued=3), CONFIG, state, now=10.0)
    assert decision.reason == Reason.COLD_START


def test_cold_start_counts_workers_already_booting():
    """Ticks during the boot of the first workers add no more."""
    decision = decide(busy(0, queued=5, starting_workers=2), CONFIG, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (2, Reason.STEADY)


def test_empty_pool_with_no_calls_stays_empty():
    """With min_workers 0 and nothing queued, an empty pool stays empty."""
    config = dataclasses.replace(CONFIG, min_workers=0)
    decision = decide(busy(0), config, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (0, Reason.STEADY)


# ---------------------------------------------------------------- scale down


def test_scales_down_only_after_a_full_window():
    """Low utilisation shrinks the pool only once it has lasted the whole window."""
    pool = FakePool(CONFIG, ready=5)
    pool.run(lambda now: 0, start=0.0, stop=60.0)
    assert pool.size == 5
    decision = pool.tick(60.0, 0)
    assert (decision.desired_workers, decision.reason) == (3, Reason.IDLE)


def test_scales_down_half_the_surplus_per_window():
    """Each window removes half the workers the load does not need (rounded up), then restarts."""
    pool = FakePool(CONFIG, ready=9)
    pool.run(lambda now: 0, start=0.0, stop=300.0)
    assert pool.changes == [
        (60.0, 9, 5, Reason.IDLE),
        (120.0, 5, 3, Reason.IDLE),
        (180.0, 3, 2, Reason.IDLE),
        (240.0, 2, 1, Reason.IDLE),
    ]


def test_surplus_counts_the_workers_the_load_needs():
    """With 20 calls in flight (3 workers' worth at the target), 9 workers shed half of 6."""
    state = ScalerState(low_utilisation_since=0.0)
    decision = decide(busy(9, in_flight=20, utilisation=0.2), CONFIG, state, now=60.0)
    assert (decision.desired_workers, decision.reason) == (6, Reason.IDLE)


def test_a_small_step_fraction_removes_one_worker_per_window():
    """downscale_step_fraction near 0 gives the most cautious policy: one worker per window."""
    config = dataclasses.replace(CONFIG, downscale_step_fraction=0.01)
    pool = FakePool(config, ready=5)
    pool.run(lambda now: 0, start=0.0, stop=200.0)
    assert pool.changes == [
        (60.0, 5, 4, Reason.IDLE),
        (120.0, 4, 3, Reason.IDLE),
        (180.0, 3, 2, Reason.IDLE),
    ]


def test_a_queued_call_restarts_the_window():
    """One tick with anything queued restarts the stabilisation window."""
    state = ScalerState()
    for now in range(111):
        # A call can queue briefly with most workers free (session affinity, say).
        metrics = busy(5, in_flight=2, queued=1) if now == 50 else busy(5, in_flight=2)
        decision = decide(metrics, CONFIG, state, float(now))
        assert decision.desired_workers == 5
        state = decision.state
    assert decide(busy(5, in_flight=2), CONFIG, state, 111.0).reason == Reason.IDLE


def test_a_busy_tick_restarts_the_window():
    """One tick above the downscale utilisation restarts the stabilisation window."""
    pool = FakePool(CONFIG, ready=5)
    pool.run(lambda now: 20 if now == 30.0 else 0, start=0.0, stop=91.0)
    assert pool.changes == []
    assert pool.tick(91.0, 0).reason == Reason.IDLE


def test_never_removes_the_last_worker_with_a_call_in_flight():
    """A scale-down that would leave calls without a worker is held back."""
    config = dataclasses.replace(CONFIG, min_workers=0)
    state = ScalerState(low_utilisation_since=0.0)
    decision = decide(busy(1, in_flight=1), config, state, now=500.0)
    assert (decision.desired_workers, decision.reason) == (1, Reason.STEADY)


def test_no_scale_down_that_would_overload_the_remaining_workers():
    """A low averaged utilisation does not remove a worker the current calls need."""
    state = ScalerState(low_utilisation_since=0.0)
    metrics = busy(4, in_flight=25, utilisation=0.1)
    decision = decide(metrics, CONFIG, state, now=500.0)
    assert (decision.desired_workers, decision.reason) == (4, Reason.STEADY)


# -------------------------------------------------------------------- bounds


def test_never_grows_beyond_max_workers():
    """The max bound caps a scale-up step."""
    decision = decide(busy(19, in_flight=190, queued=200), CONFIG, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (20, Reason.MAX_BOUND)


def test_shrinks_to_max_workers_when_above_it():
    """A pool above max (say, after a config change) is brought down to it."""
    decision = decide(busy(25, in_flight=100), CONFIG, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (20, Reason.MAX_BOUND)


def test_grows_to_min_workers_when_below_it():
    """A pool below min (say, after a crash) is brought up to it, load or not."""
    config = dataclasses.replace(CONFIG, min_workers=3)
    decision = decide(idle(1), config, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (3, Reason.MIN_BOUND)


def test_idle_pool_never_shrinks_below_min_workers():
    """However long the pool idles, it keeps min_workers."""
    config = dataclasses.replace(CONFIG, min_workers=2)
    pool = FakePool(config, ready=3)
    pool.run(lambda now: 0, start=0.0, stop=600.0)
    assert pool.size == 2


# ------------------------------------------------------------- memory budget


def test_memory_budget_caps_growth():
    """Growth stops where the workers' measured RSS would exceed the budget."""
    config = dataclasses.replace(CONFIG, memory_budget_bytes=1024 * MiB)
    metrics = busy(2, in_flight=20, queued=200, rss_per_worker_bytes=256 * MiB)
    decision = decide(metrics, config, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (4, Reason.MEMORY_BUDGET)


def test_memory_budget_counts_measured_total_rss():
    """Workers that grew beyond the per-worker figure leave less room for new ones."""
    config = dataclasses.replace(CONFIG, memory_budget_bytes=1024 * MiB)
    metrics = busy(2, in_flight=20, queued=200, rss_per_worker_bytes=256 * MiB, total_rss_bytes=900 * MiB)
    decision = decide(metrics, config, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (2, Reason.MEMORY_BUDGET)


def test_memory_budget_uses_the_estimate_before_any_measurement():
    """Without a measured RSS the configured per-worker estimate sizes the budget."""
    config = dataclasses.replace(CONFIG, memory_budget_bytes=3 * 256 * MiB, worker_rss_estimate_bytes=256 * MiB)
    decision = decide(busy(1, in_flight=10, queued=100), config, ScalerState(), now=0.0)
    assert decision.desired_workers == 3


def test_memory_budget_never_takes_the_pool_below_min_workers():
    """min_workers wins over a budget too small for it."""
    config = dataclasses.replace(CONFIG, min_workers=3, memory_budget_bytes=300 * MiB)
    metrics = busy(0, queued=5, rss_per_worker_bytes=256 * MiB)
    decision = decide(metrics, config, ScalerState(), now=0.0)
    assert decision.desired_workers == 3


def test_memory_budget_does_not_shrink_an_existing_pool():
    """The budget caps growth only; a pool already over it is left to recycling."""
    config = dataclasses.replace(CONFIG, memory_budget_bytes=1024 * MiB)
    metrics = busy(6, in_flight=35, rss_per_worker_bytes=256 * MiB)
    decision = decide(metrics, config, ScalerState(), now=0.0)
    assert (decision.desired_workers, decision.reason) == (6, Reason.STEADY)


# ---------------------------------------------------------------- flapping


def test_readding_a_removed_worker_lengthens_the_window():
    """A worker added back within flap_window_s of a removal adds flap_penalty_s to the window."""
    pool = FakePool(CONFIG, ready=5)
    pool.run(lambda now: 0, start=0.0, stop=61.0)  # removal at 60
    pool.run(lambda now: 40, start=61.0, stop=62.0)  # needs 6 workers: re-add
    assert (pool.state.flaps, pool.state.flap_penalty_s) == (1, 60.0)
    pool.changes.clear()
    pool.run(lambda now: 0, start=62.0, stop=300.0)
    assert [change[0] for change in pool.changes] == [62.0 + 60.0 + 60.0]


def test_growth_long_after_a_removal_is_not_a_flap():
    """Growth after flap_window_s has passed since the removal carries no penalty."""
    pool = FakePool(CONFIG, ready=3, state=ScalerState(low_utilisation_since=0.0))
    pool.tick(60.0, 0)  # removal at 60
    pool.tick(60.0 + CONFIG.flap_window_s, 40)
    assert (pool.state.flaps, pool.state.flap_penalty_s) == (0, 0.0)


def test_growing_back_after_a_crash_is_not_a_flap():
    """Growth that only replaces what a crash took, short of the size before the removal, carries no penalty."""
    state = ScalerState(recent_removals=((60.0, 4),))
    decision = decide(busy(2, in_flight=20), CONFIG, state, now=70.0)  # a crash left 2 of 3
    assert (decision.desired_workers, decision.state.flaps, decision.state.flap_penalty_s) == (3, 0, 0.0)


def test_shrinking_to_max_workers_is_not_remembered_as_a_removal():
    """Only idle removals can flap; a shrink forced by the max bound is not remembered."""
    decision = decide(busy(25, in_flight=100), CONFIG, ScalerState(), now=0.0)
    assert decision.state.recent_removals == ()


def test_a_removal_that_sticks_forgives_a_penalty_step():
    """Once a removal outlives the flap window without a re-add, one penalty step is forgiven."""
    pool = FakePool(CONFIG, ready=5, state=ScalerState(flap_penalty_s=120.0))
    pool.run(lambda now: 0, start=0.0, stop=181.0)  # removal at 60 + 120 = 180
    assert (pool.size, pool.state.flap_penalty_s) == (3, 120.0)
    pool.run(lambda now: 0, start=181.0, stop=301.0)
    assert pool.state.flap_penalty_s == 60.0


def test_flap_penalty_is_capped():
    """Repeated flaps lengthen the window only up to max_flap_penalty_s."""
    state = ScalerState(recent_removals=((95.0, 3), (96.0, 2)), flap_penalty_s=250.0)
    decision = decide(busy(2, in_flight=40), CONFIG, state, now=100.0)
    assert decision.state.flap_penalty_s == CONFIG.max_flap_penalty_s


def test_does_not_flap_under_a_slow_square_wave():
    """Two-minute phases of high and low load: no direction reversal inside any phase, and the
    penalty stops the pool chasing the troughs once it has been caught out."""
    phase_s = 120.0
    pool = FakePool(CONFIG, ready=1)
    pool.run(lambda now: 100 if int(now // phase_s) % 2 == 0 else 10, start=0.0, stop=8 * phase_s)
    by_phase: dict[int, list[int]] = {}
    for now, before, after, _ in pool.changes:
        by_phase.setdefault(int(now // phase_s), []).append(1 if after > before else -1)
    assert all(reversals(directions) == 0 for directions in by_phase.values())
    scale_downs = [now for now, before, after, _ in pool.changes if after < before]
    assert scale_downs == [180.0]  # one in the first trough; none after the re-add was penalised


def test_does_not_flap_under_a_fast_square_wave():
    """Load alternating faster than the downscale window grows the pool once and never shrinks it."""
    pool = FakePool(CONFIG, ready=1)
    pool.run(lambda now: 100 if int(now // 10.0) % 2 == 0 else 10, start=0.0, stop=300.0)
    assert all(after > before for _, before, after, _ in pool.changes)
    assert all(now < 10.0 for now, *_ in pool.changes)
    assert pool.size == 15


# ------------------------------------------------------------------ purity


def test_decide_is_pure():
    """The same inputs give the same decision, and the input state is untouched."""
    state = ScalerState(low_utilisation_since=0.0, recent_removals=((10.0, 4),))
    metrics = busy(3, in_flight=40, queued=5, queue_wait_p95_s=0.3)
    first = decide(metrics, CONFIG, state, now=50.0)
    second = decide(metrics, CONFIG, state, now=50.0)
    assert first == second
    assert state == ScalerState(low_utilisation_since=0.0, recent_removals=((10.0, 4),))


@pytest.mark.parametrize(
    "overrides",
    [
        {"min_workers": 5, "max_workers": 4},
        {"max_workers": 0},
        {"worker_concurrency": 0},
        {"min_workers": 1.5},
        {"target_queue_wait_s": 0.0},
        {"downscale_utilisation": 0.7},
        {"emergency_fraction": 1.5},
        {"emergency_step_max": 2},
        {"flap_penalty_s": -1.0},
        {"downscale_window_s": float("inf")},
    ],
)
def test_config_rejects_invalid_values(overrides):
    """A config that cannot make sense fails at construction, naming the field."""
    with pytest.raises(ValueError, match="invalid ScalerConfig"):
        dataclasses.replace(CONFIG, **overrides)


# ------------------------------------------------------------------ property


@st.composite
def configs(draw) -> ScalerConfig:
    min_workers = draw(st.integers(0, 5))
    target_load = draw(st.floats(0.05, 2.0))
    upscale_step_max = draw(st.integers(1, 10))
    return ScalerConfig(
        min_workers=min_workers,
        max_workers=draw(st.integers(max(min_workers, 1), 30)),
        worker_concurrency=draw(st.integers(1, 64)),
        target_queue_wait_s=draw(st.floats(0.001, 10.0)),
        target_load_per_worker=target_load,
        upscale_step_max=upscale_step_max,
        upscale_cooldown_s=draw(st.floats(0.0, 30.0)),
        emergency_fraction=draw(st.floats(0.01, 1.0)),
        emergency_step_max=draw(st.integers(upscale_step_max, 20)),
        downscale_window_s=draw(st.floats(0.0, 600.0)),
        downscale_utilisation=target_load * draw(st.floats(0.0, 0.99)),
        memory_budget_bytes=draw(st.sampled_from([0, 1, 10**9, 10**12])),
        worker_rss_estimate_bytes=draw(st.integers(1, 10**10)),
        flap_window_s=draw(st.floats(0.0, 600.0)),
        flap_penalty_s=draw(st.floats(0.0, 600.0)),
        max_flap_penalty_s=draw(st.floats(0.0, 3600.0)),
    )


any_float = st.floats(allow_nan=True, allow_infinity=True)
any_count = st.integers(-10, 10**6)
times = st.floats(-1e6, 1e6)

metrics_strategy = st.builds(
    ScalerMetrics,
    current_workers=any_count,
    starting_workers=any_count,
    queue_depth=any_count,
    in_flight=any_count,
    queue_wait_p95_s=any_float,
    oldest_queued_age_s=any_float,
    oldest_queued_deadline_fraction=any_float,
    utilisation=any_float,
    rss_per_worker_bytes=any_float,
    total_rss_bytes=any_float,
)

states = st.builds(
    ScalerState,
    last_scale_up_at=st.none() | times,
    last_scale_down_at=st.none() | times,
    low_utilisation_since=st.none() | times,
    recent_removals=st.lists(st.tuples(times, any_count), max_size=10).map(tuple),
    flap_penalty_s=st.floats(0.0, 1e6),
    flaps=st.integers(0, 100),
)


@settings(max_examples=100, deadline=None)
@given(metrics=metrics_strategy, config=configs(), state=states, now=times)
def test_desired_is_always_within_bounds(metrics, config, state, now):
    """For any metrics and state, decide returns a count within [min_workers, max_workers]."""
    decision = decide(metrics, config, state, now)
    assert config.min_workers <= decision.desired_workers <= config.max_workers
    assert isinstance(decision.reason, Reason)
    if decision.reason in (Reason.QUEUE_WAIT, Reason.LOAD_PER_WORKER):
        assert 0 < decision.desired_workers - decision.from_workers <= config.upscale_step_max
    if decision.reason == Reason.IDLE:
        assert decision.desired_workers == decision.from_workers - 1
