"""The pool's scaling policy: a pure function from a metrics snapshot to a worker count.

    controller tick:  ScalerMetrics (snapshot of the pool, built from pool/windows)
                      ScalerConfig  (operator's bounds and targets)          decide(...)
                      ScalerState   (what the previous tick decided)  ────────────────> Decision
                      now           (monotonic seconds)                          desired_workers
                                                                                 state (for next tick)
                                                                                 reason (logged as pool_scaled)

`decide` reads no clock, does no I/O and keeps no hidden state: everything it
remembers between ticks is in `ScalerState`, which the controller hands back
on the next tick. The same inputs always give the same decision, so the policy
is tested tick by tick with a fake clock. Modelled on Ray Serve's autoscaling
policy: pure functions, hysteresis as explicit state, bounds applied last.

`desired_workers` counts every worker that will take traffic: the ready ones
and the ones still starting. The controller spawns when it is above that sum
and drains (never kills) when it is below, so no in-flight call is dropped.

The rules, in the order they are tried, and why each exists:

1. Cold start. No ready worker and calls queued: every call is waiting on
   boot, and no waiting signal means anything yet. Go straight to
   min_workers (at least one), or more if the queue alone needs more, ignoring
   the cooldown. Workers already starting count, so repeated ticks during the
   boot do not pile on more.
2. Emergency. The oldest queued call has used `emergency_fraction` of its
   deadline: it will fail with DEADLINE_EXCEEDED unless capacity arrives now.
   Add enough workers for the current load (at least one unless some are
   already starting), up to the larger `emergency_step_max`, ignoring the
   cooldown. Only the load (a present-tense signal) sizes this step, never the
   wait percentile, which lags by its window and would compound tick after tick.
3. Scale up. Either signal asks for more workers:
   - load: (queued + in flight) / workers above `target_load_per_worker` of
     each worker's concurrency. Wanted = enough workers to bring the load back
     to the target, so the step is proportional to the excess;
   - queue wait: p95 above `target_queue_wait_s` while calls are still queued
     (a percentile over a window lags; an empty queue says capacity is already
     enough). Wanted = workers x (p95 / target).
   The step is capped by `upscale_step_max`. Growth the wait signal asks
   for is taken only once the cooldown after the previous scale-up has
   passed: the percentile lags by its window, so new workers must take load
   before their absence is measured again. The load signal needs no
   cooldown: it is present tense and counts starting workers, so a second
   step only happens when demand still exceeds what is already coming.
4. Scale down. Only after a whole stabilisation window (`downscale_window_s`
   plus any flap penalty) with an empty queue and utilisation below
   `downscale_utilisation` on every tick; any busier tick restarts the window.
   One step at a time, and the window restarts after each step: a step
   removes `downscale_step_fraction` of the surplus (the workers beyond what
   the current load needs at the scale-up target, and beyond min_workers),
   rounded up, at least one. Halving the surplus per window reaches the
   right size in a few windows instead of one window per worker, while
   each step still leaves room for the load to come back. Never a step that
   would push the remaining workers above the scale-up target, which would
   only undo itself on the next tick.
5. Memory budget. Growth stops where the workers would exceed
   `memory_budget_bytes` (measured RSS per worker, else the configured
   estimate). It only caps growth: it never shrinks a pool that is already
   there (that is recycling's job, by `max_rss`).
6. Bounds, last: min_workers and max_workers override everything, so a
   misbehaving signal can never take the pool outside them.

Flapping protection. Every idle removal is remembered for `flap_window_s`,
with the size it shrank from. When the pool grows back to that size while
the removal is remembered, the removal was a mistake: the downscale window is
lengthened by `flap_penalty_s` (up to `max_flap_penalty_s`). When a removal is
forgotten without having been undone, it was right, and one penalty step is
forgiven. An oscillating load thus settles the pool at the size its peaks
need instead of chasing each trough.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields, replace

__all__ = ["Decision", "Reason", "ScalerConfig", "ScalerMetrics", "ScalerState", "decide"]

# Keeps the flap memory bounded even if the controller never applies decisions.
_MAX_REMEMBERED_REMOVALS = 64
# Float error guard for ceil(): 14 calls at 6.999999999999999 per worker need 2 workers, not 3.
_CEIL_EPSILON = 1e-9


class Reason(enum.StrEnum):
    """Why `decide` chose its number; logged as the `reason` of `pool_scaled`."""

    COLD_START = "cold_start"
    EMERGENCY = "emergency"
    QUEUE_WAIT = "queue_wait"
    LOAD_PER_WORKER = "load_per_worker"
    COOLDOWN = "cooldown"  # wanted to grow, but the last scale-up is too recent
    IDLE = "idle"
    MEMORY_BUDGET = "memory_budget"
    MIN_BOUND = "min_bound"
    MAX_BOUND = "max_bound"
    STEADY = "steady"


@dataclass(frozen=True, slots=True)
class ScalerConfig:
    """Bounds and targets of the policy; validated on construction."""

    min_workers: int = 1
    max_workers: int = 8
    worker_concurrency: int = 16  # calls one worker serves at once
    target_queue_wait_s: float = 0.1  # p95 queue wait above this scales up
    target_load_per_worker: float = 0.7  # (queued + in flight) / workers, as a fraction of concurrency
    upscale_step_max: int = 4
    upscale_cooldown_s: float = 2.0
    emergency_fraction: float = 0.5  # of the oldest queued call's deadline
    emergency_step_max: int = 8
    downscale_window_s: float = 60.0
    downscale_utilisation: float = 0.3
    downscale_step_fraction: float = 0.5  # of the surplus workers, removed per window (at least one)
    memory_budget_bytes: int = 0  # 0: no budget
    worker_rss_estimate_bytes: int = 256 * 1024 * 1024  # until a worker's RSS is measured
    flap_window_s: float = 120.0
    flap_penalty_s: float = 60.0
    max_flap_penalty_s: float = 600.0

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise ValueError("invalid ScalerConfig: " + "; ".join(problems))


def _config_problems(config: ScalerConfig) -> list[str]:
    problems = []
    for spec in fields(config):
        value = getattr(config, spec.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{spec.name} must be a finite number, got {value!r}")
        elif value < 0:
            problems.append(f"{spec.name} must not be negative, got {value!r}")
        # Annotations are strings here (from __future__ import annotations).
        elif spec.type == "int" and not isinstance(value, int):
            problems.append(f"{spec.name} must be an integer, got {value!r}")
    if problems:
        return problems
    if config.max_workers < max(config.min_workers, 1):
        problems.append(f"max_workers ({config.max_workers}) must be at least min_workers and 1")
    for name in ("worker_concurrency", "upscale_step_max", "worker_rss_estimate_bytes"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be at least 1")
    if config.emergency_step_max < config.upscale_step_max:
        problems.append("emergency_step_max must be at least upscale_step_max")
    for name in ("target_queue_wait_s", "target_load_per_worker"):
        if getattr(config, name) <= 0:
            problems.append(f"{name} must be positive")
    for name in ("emergency_fraction", "downscale_step_fraction"):
        if not 0 < getattr(config, name) <= 1:
            problems.append(f"{name} must be within (0, 1]")
    # The gap between the two thresholds is the hysteresis: with none, a
    # scale-down would lift the load straight back over the scale-up target.
    if config.downscale_utilisation >= config.target_load_per_worker:
        problems.append("downscale_utilisation must be below target_load_per_worker")
    return problems


@dataclass(frozen=True, slots=True)
class ScalerMetrics:
    """One snapshot of the pool, built by the controller each tick. No timestamps in it."""

    current_workers: int = 0  # ready and taking traffic (draining ones excluded)
    starting_workers: int = 0  # spawned, not ready yet
    queue_depth: int = 0
    in_flight: int = 0
    queue_wait_p95_s: float = 0.0  # over a short window
    oldest_queued_age_s: float = 0.0  # for the log line; the policy reads the deadline fraction
    oldest_queued_deadline_fraction: float = 0.0  # 0..1: share of its deadline the oldest queued call has used
    utilisation: float = 0.0  # in_flight / (current_workers * worker_concurrency)
    rss_per_worker_bytes: float = 0.0  # 0: not measured yet
    total_rss_bytes: float = 0.0  # of all workers; 0: not measured yet


@dataclass(frozen=True, slots=True)
class ScalerState:
    """Everything the policy remembers between ticks; start with `ScalerState()`."""

    last_scale_up_at: float | None = None
    last_scale_down_at: float | None = None  # for status; the window itself restarts on a removal
    low_utilisation_since: float | None = None  # start of the current low-utilisation run
    # (removed_at, workers before): idle removals within flap_window_s not (yet) undone
    recent_removals: tuple[tuple[float, int], ...] = ()
    flap_penalty_s: float = 0.0  # added to the downscale window
    flaps: int = 0  # removals undone so far; for status and logs


@dataclass(frozen=True, slots=True)
class Decision:
    """What the controller applies (spawn or drain to `desired_workers`) and logs as `pool_scaled`."""

    desired_workers: int  # ready + starting workers the pool should have
    state: ScalerState  # hand back on the next tick
    reason: Reason
    from_workers: int  # ready + starting workers the decision started from

    @property
    def changed(self) -> bool:
        return self.desired_workers != self.from_workers


@dataclass(frozen=True, slots=True)
class _Signals:
    """The metrics as the rules read them: counts non-negative, NaN read as zero."""

    ready: int
    starting: int
    queued: int
    demand: int  # queued + in flight
    wait_p95_s: float
    deadline_fraction: float
    utilisation: float
    rss_per_worker_bytes: float
    total_rss_bytes: float

    @property
    def capacity(self) -> int:
        # Starting workers count as capacity: they will take load within
        # milliseconds, and ignoring them would add the same workers twice.
        return self.ready + self.starting


def _count(value: int) -> int:
    return value if value > 0 else 0


def _amount(value: float) -> float:
    # A missing or broken measurement (NaN, negative) must not trigger scaling.
    return value if value > 0 else 0.0


def _signals(metrics: ScalerMetrics) -> _Signals:
    queued = _count(metrics.queue_depth)
    return _Signals(
        ready=_count(metrics.current_workers),
        starting=_count(metrics.starting_workers),
        queued=queued,
        demand=queued + _count(metrics.in_flight),
        wait_p95_s=_amount(metrics.queue_wait_p95_s),
        deadline_fraction=_amount(metrics.oldest_queued_deadline_fraction),
        utilisation=_amount(metrics.utilisation),
        rss_per_worker_bytes=_amount(metrics.rss_per_worker_bytes),
        total_rss_bytes=_amount(metrics.total_rss_bytes),
    )


def decide(metrics: ScalerMetrics, config: ScalerConfig, state: ScalerState, now: float) -> Decision:
    """How many workers the pool should have now, why, and the state for the next tick."""
    signals = _signals(metrics)
    capacity = signals.capacity
    state = _forgive_settled_removals(state, config, now)
    low_since = _low_utilisation_since(signals, config, state.low_utilisation_since, now)
    desired, reason = _propose(signals, config, state, low_since, now)
    desired, reason = _cap_by_memory(desired, reason, signals, config)
    desired, reason = _apply_bounds(desired, reason, config)
    state = _remember(state, config, capacity, desired, reason, low_since, now)
    return Decision(desired_workers=desired, state=state, reason=reason, from_workers=capacity)


def _propose(
    signals: _Signals, config: ScalerConfig, state: ScalerState, low_since: float | None, now: float
) -> tuple[int, Reason]:
    capacity = signals.capacity
    for_load = _workers_for_demand(signals.demand, config)
    if signals.ready == 0 and signals.queued > 0:
        return _cold_start(capacity, for_load, config)
    if signals.queued > 0 and signals.deadline_fraction >= config.emergency_fraction:
        emergency = _emergency_step(signals, for_load, config)
        if emergency > 0:
            return capacity + emergency, Reason.EMERGENCY
    for_wait = _workers_for_wait(signals, config)
    if _cooling_down(state, config, now):
        # The lagging wait signal waits out the cooldown; the present-tense load signal does not.
        if for_wait > capacity >= for_load:
            return capacity, Reason.COOLDOWN
        for_wait = 0
    wanted = max(for_load, for_wait)
    if wanted > capacity:
        step = min(wanted - capacity, config.upscale_step_max)
        reason = Reason.QUEUE_WAIT if for_wait >= for_load else Reason.LOAD_PER_WORKER
        return capacity + step, reason
    removable = _removable_workers(signals, config, state, low_since, now)
    if removable:
        return capacity - removable, Reason.IDLE
    return capacity, Reason.STEADY


def _workers_for_demand(demand: int, config: ScalerConfig) -> int:
    """Workers needed for `demand` calls at the target load per worker."""
    calls_per_worker = config.worker_concurrency * config.target_load_per_worker
    return math.ceil(demand / calls_per_worker - _CEIL_EPSILON)


def _workers_for_wait(signals: _Signals, config: ScalerConfig) -> int:
    """Workers that would bring the queue wait back to its target; 0 when it is met."""
    if signals.queued == 0 or signals.wait_p95_s <= config.target_queue_wait_s:
        return 0
    # The step is capped later anyway; capping the ratio keeps ceil() finite
    # when the measured wait is absurd (inf).
    ratio = min(signals.wait_p95_s / config.target_queue_wait_s, float(config.max_workers + 1))
    return math.ceil(signals.capacity * ratio - _CEIL_EPSILON)


def _cold_start(capacity: int, for_load: int, config: ScalerConfig) -> tuple[int, Reason]:
    wanted = max(config.min_workers, 1, for_load)
    if wanted > capacity:
        return wanted, Reason.COLD_START
    return capacity, Reason.STEADY  # enough workers are already booting


def _emergency_step(signals: _Signals, for_load: int, config: ScalerConfig) -> int:
    # A starting worker will take the oldest call within milliseconds; adding
    # another for the same call every tick would over-add.
    at_least = 0 if signals.starting > 0 else 1
    return min(max(for_load - signals.capacity, at_least), config.emergency_step_max)


def _cooling_down(state: ScalerState, config: ScalerConfig, now: float) -> bool:
    return state.last_scale_up_at is not None and now - state.last_scale_up_at < config.upscale_cooldown_s


def _low_utilisation_since(
    signals: _Signals, config: ScalerConfig, since: float | None, now: float
) -> float | None:
    """When the current run of idle ticks began; None when this tick is not idle."""
    idle = signals.queued == 0 and signals.utilisation < config.downscale_utilisation
    if not idle:
        return None
    return now if since is None else since


def _removable_workers(
    signals: _Signals, config: ScalerConfig, state: ScalerState, low_since: float | None, now: float
) -> int:
    """How many workers a whole (penalised) window of idle ticks allows removing now; 0 for none."""
    capacity = signals.capacity
    if low_since is None or now - low_since < config.downscale_window_s + state.flap_penalty_s:
        return 0
    # Removing workers must not lift the rest over the scale-up target, or
    # the next tick would add them straight back.
    keep = max(config.min_workers, _workers_for_demand(signals.demand, config))
    surplus = capacity - keep
    if surplus <= 0:
        return 0
    return max(1, math.ceil(surplus * config.downscale_step_fraction - _CEIL_EPSILON))


def _cap_by_memory(
    desired: int, reason: Reason, signals: _Signals, config: ScalerConfig
) -> tuple[int, Reason]:
    if config.memory_budget_bytes == 0 or desired <= signals.capacity:
        return desired, reason
    ceiling = max(signals.capacity, _affordable_workers(signals, config))
    if desired > ceiling:
        return ceiling, Reason.MEMORY_BUDGET
    return desired, reason


def _affordable_workers(signals: _Signals, config: ScalerConfig) -> int:
    """How many workers the memory budget can hold, counting starting ones against it."""
    per_worker = signals.rss_per_worker_bytes
    if per_worker == 0 and signals.total_rss_bytes > 0 and signals.ready > 0:
        per_worker = signals.total_rss_bytes / signals.ready
    if per_worker == 0:
        per_worker = config.worker_rss_estimate_bytes
    per_worker = max(per_worker, 1.0)  # sub-byte workers are a broken measurement
    affordable = math.floor(config.memory_budget_bytes / per_worker)
    if signals.total_rss_bytes > 0:
        # The measured total is the truer figure (workers grow as they run);
        # what is left of the budget is all new workers may take.
        headroom = config.memory_budget_bytes - signals.total_rss_bytes
        extra = math.floor(headroom / per_worker) if headroom > 0 else 0
        affordable = min(affordable, signals.ready + extra)
    return affordable


def _apply_bounds(desired: int, reason: Reason, config: ScalerConfig) -> tuple[int, Reason]:
    if desired < config.min_workers:
        return config.min_workers, Reason.MIN_BOUND
    if desired > config.max_workers:
        return config.max_workers, Reason.MAX_BOUND
    return desired, reason


def _forgive_settled_removals(state: ScalerState, config: ScalerConfig, now: float) -> ScalerState:
    """Forget removals older than the flap window; each one that stuck forgives a penalty step."""
    kept = tuple(removal for removal in state.recent_removals if now - removal[0] < config.flap_window_s)
    settled = len(state.recent_removals) - len(kept)
    if settled == 0:
        return state
    penalty = max(0.0, state.flap_penalty_s - settled * config.flap_penalty_s)
    return replace(state, recent_removals=kept, flap_penalty_s=penalty)


def _remember(
    state: ScalerState,
    config: ScalerConfig,
    capacity: int,
    desired: int,
    reason: Reason,
    low_since: float | None,
    now: float,
) -> ScalerState:
    if desired > capacity:
        return _remember_growth(state, config, desired, now)
    if desired < capacity:
        removals = state.recent_removals
        if reason == Reason.IDLE:
            # Only the policy's own judgement can flap; a shrink to max_workers cannot be undone.
            removals = (removals + ((now, capacity),))[-_MAX_REMEMBERED_REMOVALS:]
        return replace(
            state,
            last_scale_down_at=now,
            low_utilisation_since=now,  # the stabilisation window restarts
            recent_removals=removals,
        )
    return replace(state, low_utilisation_since=low_since)


def _remember_growth(state: ScalerState, config: ScalerConfig, desired: int, now: float) -> ScalerState:
    # A removal from N workers is undone when the pool grows back to N: it
    # was a flap, and the downscale window grows to avoid the next one.
    # Growing back after a crash took the pool lower than that is no flap.
    kept = tuple(removal for removal in state.recent_removals if removal[1] > desired)
    undone = len(state.recent_removals) - len(kept)
    penalty = state.flap_penalty_s
    if undone:
        penalty = min(penalty + undone * config.flap_penalty_s, config.max_flap_penalty_s)
    return replace(
        state,
        last_scale_up_at=now,
        low_utilisation_since=None,
        recent_removals=kept,
        flap_penalty_s=penalty,
        flaps=state.flaps + undone,
    )
