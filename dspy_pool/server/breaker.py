"""Circuit breaker: a pure state machine per (program, LM endpoint), plus a thin logging guard.

The machine never reads a clock, never logs and never locks: every method takes
`now` (monotonic seconds) and transitions are queued as `Transition` values for
the caller to drain. That keeps it testable tick by tick and lets the event loop
consult it without holding anything across the guarded call (hard rule 8).

    CLOSED --- failure rate or slow-call rate >= threshold, -----------> OPEN
      ^        once the window holds minimum_calls counted calls          |
      |                                                                    | now >= open_until
      |                                                                    v
      +--- all half_open_max_probes probes succeeded ------------------ HALF_OPEN
           (and not too many of them were slow)                           |
                                                                           |
    OPEN <--- a probe failed, timed out, or too many probes were slow -----+

- CLOSED admits every call; each counted result lands in a sliding window
  (count-based ring of the last N results, or time-based buckets). Rates are
  judged only once the window holds `minimum_calls` results.
- OPEN rejects every call until `open_until`. The wait grows by `wait_multiplier`
  with each consecutive trip and is capped at `max_wait_duration_s`; closing
  resets the streak.
- HALF_OPEN hands out at most `half_open_max_probes` probe permits. A probe that
  has not reported within `probe_timeout_s` counts as failed the next time the
  breaker is consulted, so a lost probe cannot leave it stuck half-open.

Only system failures count (`Outcome.FAILURE`); the caller's bad input and
cancellations are `Outcome.IGNORED` and never touch the window. Each state change
bumps a generation; permits carry the generation they were issued in, and results
from an older generation are dropped, so a slow call admitted while closed cannot
skew the probes of a later half-open episode.

Usage from the event loop (no lock, nothing awaited while consulting):

    permit = guard.acquire(key)
    if permit is None:
        ...  # breaker open: go straight to the fallback chain
    else:
        try:
            result = await run_primary()
        except PoolError as error:
            guard.record(key, permit, outcome_for(error), duration_s=...)
            raise
        guard.record(key, permit, Outcome.SUCCESS, duration_s=...)
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import structlog

from dspy_pool.errors import ErrorKind, PoolError


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"  # a system failure: LM error or timeout, worker crash, malformed LM output
    IGNORED = "ignored"  # the caller's bad input, cancellation: says nothing about the endpoint


# A deadline shorter than this that ran out says nothing about the LM endpoint: the caller asked for less time than
# most LM calls take. Counted, one client's too-short deadlines opened the breaker every client of the program shares.
MIN_DEADLINE_COUNTED_S = 1.0


def outcome_for(error: PoolError, budget_s: float | None = None) -> Outcome:
    """FAILURE when the error table says the kind counts against the breaker (hard rule 8), else IGNORED.

    A call that never left our queue says nothing about the LM endpoint, whatever its kind; nor does a deadline
    of less than MIN_DEADLINE_COUNTED_S (`budget_s`: the time the call had) running out.
    """
    if not error.meaning.breaker_failure or error.queued_only:
        return Outcome.IGNORED
    if error.kind is ErrorKind.DEADLINE_EXCEEDED and budget_s is not None and budget_s < MIN_DEADLINE_COUNTED_S:
        return Outcome.IGNORED
    return Outcome.FAILURE


class BreakerKey(NamedTuple):
    program: str
    lm_endpoint: str


# Reasons carried by transitions, for the log and for tests.
REASON_FAILURE_RATE = "failure_rate"
REASON_SLOW_CALL_RATE = "slow_call_rate"
REASON_WAIT_ELAPSED = "wait_elapsed"
REASON_PROBE_FAILED = "probe_failed"
REASON_PROBE_TIMED_OUT = "probe_timed_out"
REASON_PROBES_SLOW = "probes_slow"
REASON_PROBES_SUCCEEDED = "probes_succeeded"

# Undrained transitions are kept only this deep so a caller that never drains cannot leak.
_MAX_QUEUED_TRANSITIONS = 64


def _is_positive(value: float) -> bool:
    # Written so that NaN fails too.
    return value > 0


def _is_rate(value: float) -> bool:
    return 0 < value <= 1


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds shared by every breaker of a registry; validated on construction."""

    window_type: str = "count"  # "count" (last N calls) or "time" (last N seconds)
    window_size: float = 100  # calls for "count", seconds for "time"
    minimum_calls: int = 20
    failure_rate_threshold: float = 0.5
    slow_call_duration_s: float = 30.0
    slow_call_rate_threshold: float = 1.0  # 1.0: trips only when every call in the window is slow
    wait_duration_s: float = 5.0
    wait_multiplier: float = 2.0
    max_wait_duration_s: float = 60.0
    half_open_max_probes: int = 3
    probe_timeout_s: float = 30.0
    time_bucket_s: float = 1.0  # bucket width of a "time" window

    def __post_init__(self) -> None:
        problems = list(_config_problems(self))
        if problems:
            raise ValueError("invalid breaker config: " + "; ".join(problems))


def _config_problems(config: BreakerConfig) -> Iterator[str]:
    if config.window_type not in ("count", "time"):
        yield f"window_type must be 'count' or 'time', not {config.window_type!r}"
    if config.window_type == "count" and (not isinstance(config.window_size, int) or config.window_size < 1):
        yield f"a count window_size must be an integer >= 1, not {config.window_size!r}"
    if config.window_type == "time" and not (_is_positive(config.window_size) and math.isfinite(config.window_size)):
        yield f"a time window_size must be a finite number of seconds > 0, not {config.window_size!r}"
    if config.window_type == "time" and not (_is_positive(config.time_bucket_s) and config.time_bucket_s <= config.window_size):
        yield f"time_bucket_s must be > 0 and <= window_size, not {config.time_bucket_s!r}"
    if not isinstance(config.minimum_calls, int) or config.minimum_calls < 1:
        yield f"minimum_calls must be an integer >= 1, not {config.minimum_calls!r}"
    elif config.window_type == "count" and isinstance(config.window_size, int) and config.minimum_calls > config.window_size:
        # A ring of N can never hold more than N results: the breaker could never trip.
        yield f"minimum_calls ({config.minimum_calls}) must not exceed a count window_size ({config.window_size})"
    if not _is_rate(config.failure_rate_threshold):
        yield f"failure_rate_threshold must be in (0, 1], not {config.failure_rate_threshold!r}"
    if not _is_rate(config.slow_call_rate_threshold):
        yield f"slow_call_rate_threshold must be in (0, 1], not {config.slow_call_rate_threshold!r}"
    if not _is_positive(config.slow_call_duration_s):
        yield f"slow_call_duration_s must be > 0, not {config.slow_call_duration_s!r}"
    if not (_is_positive(config.wait_duration_s) and math.isfinite(config.wait_duration_s)):
        yield f"wait_duration_s must be a finite number > 0, not {config.wait_duration_s!r}"
    if not (config.wait_multiplier >= 1 and math.isfinite(config.wait_multiplier)):
        yield f"wait_multiplier must be a finite number >= 1, not {config.wait_multiplier!r}"
    if not (config.max_wait_duration_s >= config.wait_duration_s and math.isfinite(config.max_wait_duration_s)):
        yield f"max_wait_duration_s must be finite and >= wait_duration_s, not {config.max_wait_duration_s!r}"
    if not isinstance(config.half_open_max_probes, int) or config.half_open_max_probes < 1:
        yield f"half_open_max_probes must be an integer >= 1, not {config.half_open_max_probes!r}"
    if not (_is_positive(config.probe_timeout_s) and math.isfinite(config.probe_timeout_s)):
        yield f"probe_timeout_s must be a finite number > 0, not {config.probe_timeout_s!r}"


class Permit(NamedTuple):
    """Leave to make one call; hand it back to `record` exactly once.

    A tuple, not a dataclass: one is issued on every call, and a tuple is the cheapest immutable value to build.
    """

    generation: int  # the breaker's generation when issued; older ones are stale
    serial: int
    issued_at: float
    probe: bool  # issued while half-open


_new_permit = tuple.__new__  # Permit's fields in order, without NamedTuple's Python-level __new__


@dataclass(frozen=True)
class Transition:
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at: float
    open_until: float | None = None  # set when to_state is OPEN
    consecutive_trips: int = 0
    failure_rate: float | None = None  # of the window that tripped it, when it tripped on rates
    slow_rate: float | None = None


@dataclass(frozen=True)
class BreakerSnapshot:
    """What GetPoolStatus shows for one breaker."""

    state: BreakerState
    # Rates of the closed-state window: None until it holds minimum_calls results.
    # While open or half-open they still show the window that tripped it.
    failure_rate: float | None
    slow_rate: float | None
    calls_in_window: int
    probes_in_flight: int
    open_until: float | None  # None unless open
    consecutive_trips: int
    opened_total: int
    half_opened_total: int
    closed_total: int


class _WindowTotals(NamedTuple):
    calls: int
    failures: int
    slow: int


class _Window(Protocol):
    # Running sums, current as of the last add (a time window also as of the last totals()).
    calls: int
    failures: int
    slow: int

    def add(self, failed: bool, slow: bool, now: float) -> None: ...
    def totals(self, now: float) -> _WindowTotals: ...
    def reset(self) -> None: ...


class _CountWindow:
    """The last `size` counted results in a ring with running sums: adding and reading are O(1) and build nothing.

    Each result is one byte (bit 0 failed, bit 1 slow); the ring grows up to `size` as results come,
    so a large window costs memory only once it has filled.
    """

    __slots__ = ("_size", "_ring", "_next", "calls", "failures", "slow")

    def __init__(self, size: int) -> None:
        self._size = size
        self._ring = bytearray()
        self._next = 0  # once full: the oldest result, overwritten by the next
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def add(self, failed: bool, slow: bool, now: float) -> None:
        code = failed + 2 * slow
        if self.calls < self._size:
            self._ring.append(code)
            self.calls += 1
        else:
            index = self._next
            old = self._ring[index]
            self._ring[index] = code
            self._next = index + 1 if index + 1 < self._size else 0
            if old:
                self.failures -= old & 1
                self.slow -= old >> 1
        if code:
            self.failures += failed
            self.slow += slow

    def totals(self, now: float) -> _WindowTotals:
        return _WindowTotals(self.calls, self.failures, self.slow)

    def reset(self) -> None:
        self._ring.clear()
        self._next = 0
        self.calls = 0
        self.failures = 0
        self.slow = 0


class _Bucket:
    __slots__ = ("index", "calls", "failures", "slow")

    def __init__(self, index: int) -> None:
        self.index = index
        self.calls = 0
        self.failures = 0
        self.slow = 0


class _TimeWindow:
    """Results of the last `window_s` seconds, in buckets of `bucket_s` that expire by `now`.

    The window therefore spans between window_s - bucket_s and window_s seconds:
    whole buckets expire at once, which keeps memory at ceil(window_s / bucket_s)
    buckets however many calls arrive.
    """

    def __init__(self, window_s: float, bucket_s: float) -> None:
        self._bucket_s = bucket_s
        self._bucket_count = max(1, math.ceil(window_s / bucket_s - 1e-9))
        self._buckets: deque[_Bucket] = deque()
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def _index(self, now: float) -> int:
        return math.floor(now / self._bucket_s)

    def _expire(self, now: float) -> None:
        oldest_kept = self._index(now) - self._bucket_count + 1
        while self._buckets and self._buckets[0].index < oldest_kept:
            gone = self._buckets.popleft()
            self.calls -= gone.calls
            self.failures -= gone.failures
            self.slow -= gone.slow

    def add(self, failed: bool, slow: bool, now: float) -> None:
        self._expire(now)
        index = self._index(now)
        # A clock that steps back lands in the newest bucket rather than reordering the ring.
        if not self._buckets or self._buckets[-1].index < index:
            self._buckets.append(_Bucket(index))
        bucket = self._buckets[-1]
        bucket.calls += 1
        bucket.failures += failed
        bucket.slow += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def totals(self, now: float) -> _WindowTotals:
        self._expire(now)
        return _WindowTotals(self.calls, self.failures, self.slow)

    def reset(self) -> None:
        self._buckets.clear()
        self.calls = 0
        self.failures = 0
        self.slow = 0


def _make_window(config: BreakerConfig) -> _Window:
    if config.window_type == "count":
        return _CountWindow(int(config.window_size))
    return _TimeWindow(config.window_size, config.time_bucket_s)


def _rates(totals: _WindowTotals, minimum_calls: int) -> tuple[float | None, float | None]:
    if totals.calls < minimum_calls or totals.calls == 0:
        return None, None
    return totals.failures / totals.calls, totals.slow / totals.calls


class CircuitBreaker:
    """One breaker's state machine. Pure: `now` comes in, transitions queue up for the caller."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        # Read on every call: copied out of the config once.
        self._slow_call_duration_s = config.slow_call_duration_s
        self._minimum_calls = config.minimum_calls
        self._failure_rate_threshold = config.failure_rate_threshold
        self._slow_call_rate_threshold = config.slow_call_rate_threshold
        self._state = BreakerState.CLOSED
        self._generation = 0
        self._next_serial = 0
        self._window = _make_window(config)
        # In a count window a plain success (not failed, not slow) never raises a rate: past minimum_calls the
        # trip check after it can be skipped. Not so in a time window, where the add may expire older successes.
        self._success_cannot_trip = isinstance(self._window, _CountWindow)
        self._open_until: float | None = None
        self._consecutive_trips = 0
        self._opened_total = 0
        self._half_opened_total = 0
        self._closed_total = 0
        # Half-open bookkeeping for the current episode only.
        self._probes_in_flight: dict[int, float] = {}  # serial -> issued_at
        self._probe_successes = 0
        self._slow_probes = 0
        self._transitions: deque[Transition] = deque(maxlen=_MAX_QUEUED_TRANSITIONS)

    # -- consulting ---------------------------------------------------------

    def state(self, now: float) -> BreakerState:
        self._advance(now)
        return self._state

    def acquire(self, now: float) -> Permit | None:
        """A permit to call, or None when open or when every probe slot is taken."""
        if self._state is BreakerState.CLOSED:  # time alone changes nothing while closed: no _advance
            self._next_serial += 1
            return _new_permit(Permit, (self._generation, self._next_serial, now, False))
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            return self._issue(now, probe=False)
        if self._state is BreakerState.OPEN:
            return None
        probes_issued = len(self._probes_in_flight) + self._probe_successes
        if probes_issued >= self.config.half_open_max_probes:
            return None
        permit = self._issue(now, probe=True)
        self._probes_in_flight[permit.serial] = now
        return permit

    def record(self, permit: Permit, outcome: Outcome, duration_s: float, now: float) -> None:
        """Count the result of a call made under `permit`; stale permits are dropped."""
        if self._state is BreakerState.CLOSED:  # the fast path: closed has nothing to advance and no probes to free
            if permit.generation == self._generation and outcome is not Outcome.IGNORED:
                failed = outcome is Outcome.FAILURE
                slow = duration_s >= self._slow_call_duration_s
                window = self._window
                window.add(failed, slow, now)
                if failed or slow or window.calls <= self._minimum_calls or not self._success_cannot_trip:
                    self._trip_if_rates_exceeded(now)
            return
        self._advance(now)
        if permit.generation != self._generation:
            return
        if outcome is Outcome.IGNORED:
            # Frees the probe slot: the call told us nothing about the endpoint.
            self._probes_in_flight.pop(permit.serial, None)
            return
        failed = outcome is Outcome.FAILURE
        slow = duration_s >= self._slow_call_duration_s
        if self._state is BreakerState.CLOSED:
            self._window.add(failed, slow, now)
            self._trip_if_rates_exceeded(now)
        elif self._state is BreakerState.HALF_OPEN:
            self._record_probe(permit, failed, slow, now)
        # No permit is issued while open, so a current-generation result cannot arrive then.

    def snapshot(self, now: float) -> BreakerSnapshot:
        self._advance(now)
        totals = self._window.totals(now)
        failure_rate, slow_rate = _rates(totals, self.config.minimum_calls)
        return BreakerSnapshot(
            state=self._state,
            failure_rate=failure_rate,
            slow_rate=slow_rate,
            calls_in_window=totals.calls,
            probes_in_flight=len(self._probes_in_flight),
            open_until=self._open_until if self._state is BreakerState.OPEN else None,
            consecutive_trips=self._consecutive_trips,
            opened_total=self._opened_total,
            half_opened_total=self._half_opened_total,
            closed_total=self._closed_total,
        )

    def take_transitions(self) -> list[Transition]:
        """Transitions since the last call, oldest first; the caller logs them."""
        if not self._transitions:
            return []
        taken = list(self._transitions)
        self._transitions.clear()
        return taken

    # -- internals -----------------------------------------------------------

    def _issue(self, now: float, *, probe: bool) -> Permit:
        self._next_serial += 1
        return _new_permit(Permit, (self._generation, self._next_serial, now, probe))

    def _advance(self, now: float) -> None:
        """Apply what the passage of time alone decides: the open wait ending, probes timing out."""
        if self._state is BreakerState.OPEN and self._open_until is not None and now >= self._open_until:
            self._enter_half_open(now)
        if self._state is BreakerState.HALF_OPEN and self._a_probe_timed_out(now):
            self._open(now, REASON_PROBE_TIMED_OUT)

    def _a_probe_timed_out(self, now: float) -> bool:
        deadline = self.config.probe_timeout_s
        return any(now - issued_at >= deadline for issued_at in self._probes_in_flight.values())

    def _trip_if_rates_exceeded(self, now: float) -> None:
        """Right after an add at `now`: the window's running sums are current, nothing to expire or build."""
        window = self._window
        calls = window.calls
        if calls < self._minimum_calls:
            return
        failure_rate = window.failures / calls
        slow_rate = window.slow / calls
        if failure_rate >= self._failure_rate_threshold:
            self._open(now, REASON_FAILURE_RATE, failure_rate, slow_rate)
        elif slow_rate >= self._slow_call_rate_threshold:
            self._open(now, REASON_SLOW_CALL_RATE, failure_rate, slow_rate)

    def _record_probe(self, permit: Permit, failed: bool, slow: bool, now: float) -> None:
        if self._probes_in_flight.pop(permit.serial, None) is None:
            return  # already reported: count each probe once
        if failed:
            self._open(now, REASON_PROBE_FAILED)
            return
        self._probe_successes += 1
        self._slow_probes += slow
        probes = self.config.half_open_max_probes
        if self._probe_successes < probes:
            return
        # Same slow-call rule as when closed, judged over the probes.
        if self._slow_probes / probes >= self.config.slow_call_rate_threshold:
            self._open(now, REASON_PROBES_SLOW)
        else:
            self._close(now)

    def _current_wait_s(self) -> float:
        config = self.config
        try:
            wait = config.wait_duration_s * config.wait_multiplier ** (self._consecutive_trips - 1)
        except OverflowError:
            return config.max_wait_duration_s
        return min(wait, config.max_wait_duration_s)

    def _open(self, now: float, reason: str, failure_rate: float | None = None, slow_rate: float | None = None) -> None:
        self._consecutive_trips += 1
        self._opened_total += 1
        self._open_until = now + self._current_wait_s()
        self._reset_probes()
        self._change_state(
            BreakerState.OPEN,
            reason,
            now,
            open_until=self._open_until,
            failure_rate=failure_rate,
            slow_rate=slow_rate,
        )

    def _enter_half_open(self, now: float) -> None:
        self._half_opened_total += 1
        self._open_until = None
        self._reset_probes()
        self._change_state(BreakerState.HALF_OPEN, REASON_WAIT_ELAPSED, now)

    def _close(self, now: float) -> None:
        self._closed_total += 1
        self._consecutive_trips = 0
        self._open_until = None
        self._reset_probes()
        # Start the window afresh: the results that tripped it describe the outage, not now.
        self._window.reset()
        self._change_state(BreakerState.CLOSED, REASON_PROBES_SUCCEEDED, now)

    def _reset_probes(self) -> None:
        self._probes_in_flight.clear()
        self._probe_successes = 0
        self._slow_probes = 0

    def _change_state(self, to_state: BreakerState, reason: str, now: float, **details: Any) -> None:
        from_state = self._state
        self._state = to_state
        self._generation += 1
        self._transitions.append(
            Transition(from_state, to_state, reason, now, consecutive_trips=self._consecutive_trips, **details)
        )


class BreakerRegistry:
    """Breakers by key, created lazily from one config."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self._breakers: dict[Hashable, CircuitBreaker] = {}

    def get(self, key: Hashable) -> CircuitBreaker:
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._breakers[key] = CircuitBreaker(self.config)
        return breaker

    def discard(self, key: Hashable) -> None:
        """Forget a breaker, e.g. when its program is removed."""
        self._breakers.pop(key, None)

    def keys(self) -> list[Hashable]:
        return list(self._breakers)

    def snapshots(self, now: float) -> dict[Hashable, BreakerSnapshot]:
        return {key: breaker.snapshot(now) for key, breaker in self._breakers.items()}

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, key: object) -> bool:
        return key in self._breakers


_EVENT_BY_STATE = {
    BreakerState.OPEN: "breaker_opened",
    BreakerState.HALF_OPEN: "breaker_half_open",
    BreakerState.CLOSED: "breaker_closed",
}


class AsyncBreakerGuard:
    """The registry with a real clock, logging transitions; safe to call from the event loop.

    Every method is synchronous and short: consulting a breaker never awaits, so
    no lock is needed in single-threaded asyncio and none is held across the
    guarded call, which happens between `acquire` and `record`.
    """

    def __init__(
        self,
        registry: BreakerRegistry,
        clock: Callable[[], float] = time.monotonic,
        logger: Any | None = None,
    ) -> None:
        self.registry = registry
        self._breakers = registry._breakers  # the registry's own dict: one lookup per call, no method call
        self._clock = clock
        self._log = logger if logger is not None else structlog.get_logger("dspy_pool.breaker")

    def acquire(self, key: Hashable) -> Permit | None:
        breaker = self._breakers.get(key) or self.registry.get(key)
        permit = breaker.acquire(self._clock())
        if breaker._transitions:
            self._log_transitions(key, breaker)
        return permit

    def record(self, key: Hashable, permit: Permit, outcome: Outcome, duration_s: float | None = None) -> None:
        """Report a call's result; `duration_s` defaults to the time since the permit was issued."""
        now = self._clock()
        if duration_s is None:
            duration_s = now - permit.issued_at
        breaker = self._breakers.get(key)
        if breaker is None:  # forgotten since the permit (its program was deleted): not made again for one late call
            return
        breaker.record(permit, outcome, duration_s, now)
        if breaker._transitions:
            self._log_transitions(key, breaker)

    def state(self, key: Hashable) -> BreakerState:
        breaker = self.registry.get(key)
        state = breaker.state(self._clock())
        self._log_transitions(key, breaker)
        return state

    def snapshots(self) -> dict[Hashable, BreakerSnapshot]:
        now = self._clock()
        snapshots = self.registry.snapshots(now)
        for key in snapshots:
            self._log_transitions(key, self.registry.get(key))
        return snapshots

    def _log_transitions(self, key: Hashable, breaker: CircuitBreaker) -> None:
        for transition in breaker.take_transitions():
            fields = _key_fields(key)
            fields.update(
                from_state=transition.from_state.value,
                reason=transition.reason,
                consecutive_trips=transition.consecutive_trips,
            )
            if transition.to_state is BreakerState.OPEN:
                fields.update(
                    wait_s=round(transition.open_until - transition.at, 3) if transition.open_until is not None else None,
                    failure_rate=transition.failure_rate,
                    slow_rate=transition.slow_rate,
                )
                self._log.warning(_EVENT_BY_STATE[transition.to_state], **fields)
            else:
                self._log.info(_EVENT_BY_STATE[transition.to_state], **fields)


def _key_fields(key: Hashable) -> dict[str, Any]:
    if isinstance(key, tuple) and len(key) == 2:
        program, lm_endpoint = key
        return {"program": program, "lm_endpoint": lm_endpoint}
    return {"breaker": str(key)}
