"""Cheap sliding-window statistics for the front's hot path.

The dispatcher notes one event per call (queue wait, execution time, outcome);
PoolMetrics hands them over in batches (record_many), and the controller reads a
summary once per tick and `GetPoolStatus` one per request. Recording therefore
has to cost little per value (a bucket is looked up once per run of values in it),
and memory has to stay bounded however hard the front is driven.

    PoolMetrics ── record_many([(now, ...)]) ──> [bucket][bucket]...[bucket]  (a ring of n time buckets)
    controller ── rate(now) / snapshot(now) ──> sums over the buckets still inside the window

Time is cut into buckets of `bucket_s` seconds; a window of `window_s` seconds
is a ring of n = ceil(window_s / bucket_s) buckets. A bucket is reused when its
slot comes round again, so nothing ever has to be evicted explicitly: a query
simply ignores buckets whose index has fallen out of the window. "The last W
seconds" is therefore approximate to one bucket: the current, partial bucket
plus the n - 1 before it.

Latency buckets keep a reservoir of at most `samples_per_bucket` values
(Vitter's algorithm R), so a bucket that saw 100,000 calls costs the same
memory as one that saw 256. Counts, sums and maxima are kept exactly; only the
percentiles are estimated, weighting each bucket's samples by how many calls
they stand for so a busy second is not outvoted by a quiet one. A query sorts
the live samples, so each bucket keeps a sorted copy once it stops changing:
the sort then merges presorted runs, and a full 30 s window costs a controller
tick about a third of sorting from scratch.

Every method takes `now` (float seconds from a monotonic clock); nothing here
reads a clock, so tests drive the windows with a fake one.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from dataclasses import dataclass
from itertools import accumulate

__all__ = ["EwmaGauge", "LatencySnapshot", "LatencyWindow", "RateWindow"]

# An index no real bucket has: it never equals a live index and always falls
# outside the window.
_NO_BUCKET = -(1 << 62)
_floor = math.floor  # one global lookup per record instead of two


def _bucket_count(window_s: float, bucket_s: float) -> int:
    if not (math.isfinite(bucket_s) and bucket_s > 0):
        raise ValueError(f"bucket_s must be a positive number, got {bucket_s!r}")
    if not (math.isfinite(window_s) and window_s >= bucket_s):
        raise ValueError(f"window_s must be at least bucket_s ({bucket_s}), got {window_s!r}")
    # The epsilon keeps 10.0 / 0.1 from becoming 101 buckets.
    return math.ceil(window_s / bucket_s - 1e-9)


class RateWindow:
    """Events per second over the last `window_s` seconds."""

    __slots__ = ("_bucket_s", "_size", "_indices", "_counts", "_newest", "_newest_slot", "_first")

    def __init__(self, window_s: float = 10.0, bucket_s: float = 1.0) -> None:
        self._size = _bucket_count(window_s, bucket_s)
        self._bucket_s = float(bucket_s)
        self._indices = [_NO_BUCKET] * self._size
        self._counts = [0] * self._size
        # The newest bucket's index and slot: recording into it (nearly every call) skips the checks.
        self._newest = _NO_BUCKET
        self._newest_slot = 0
        self._first: int | None = None

    @property
    def window_s(self) -> float:
        return self._size * self._bucket_s

    def record(self, now: float, count: int = 1) -> None:
        """Count `count` events at time `now`."""
        index = _floor(now / self._bucket_s)
        if index == self._newest:  # the common case: the current bucket, already open
            self._counts[self._newest_slot] += count
            return
        if index <= self._newest - self._size:
            # Older than the window: dropping it is cheaper and truer than
            # rewriting a bucket that has been reused since.
            return
        slot = index % self._size
        if self._indices[slot] != index:
            self._indices[slot] = index
            self._counts[slot] = 0
        self._counts[slot] += count
        if index > self._newest:
            self._newest, self._newest_slot = index, slot
        if self._first is None:
            self._first = index

    def record_many(self, times: list[float]) -> None:
        """record(now) for each time, in order: one bucket update per run of times in the same bucket."""
        bucket_s = self._bucket_s
        run_index, run_start, run_count = None, 0.0, 0
        for now in times:
            index = _floor(now / bucket_s)
            if index == run_index:
                run_count += 1
                continue
            if run_count:
                self.record(run_start, run_count)
            run_index, run_start, run_count = index, now, 1
        if run_count:
            self.record(run_start, run_count)

    def count(self, now: float) -> int:
        """Events recorded in the window that ends at `now`."""
        current = math.floor(now / self._bucket_s)
        oldest = current - self._size
        return sum(
            count
            for index, count in zip(self._indices, self._counts)
            if oldest < index <= current
        )

    def rate(self, now: float) -> float:
        """Events per second in the window that ends at `now`.

        Divides by the time the buckets actually cover, not by `window_s`: the
        current bucket is partial, and a window that started receiving events
        only recently must not be diluted by the empty time before its first one.
        """
        events = self.count(now)
        if events == 0 or self._first is None:
            return 0.0
        current = math.floor(now / self._bucket_s)
        covered_from = max(current - self._size + 1, self._first) * self._bucket_s
        # At least one bucket, so one event at the very start is not a huge rate.
        span = max(self._bucket_s, now - covered_from)
        return events / span


@dataclass(frozen=True, slots=True)
class LatencySnapshot:
    """Latency over one window, in seconds; all zeros when nothing was recorded."""

    count: int = 0
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    max: float = 0.0


class LatencyWindow:
    """p50/p95/p99/max of durations (or any values) over the last `window_s` seconds.

    Memory is bounded by n buckets x `samples_per_bucket` floats whatever the
    load. `seed` makes the reservoir's choices, and so every estimate,
    reproducible.
    """

    __slots__ = (
        "_bucket_s", "_size", "_capacity", "_indices", "_seen", "_sums",
        "_maxima", "_samples", "_newest", "_newest_slot", "_random", "_sorted",
    )

    def __init__(
        self,
        window_s: float = 10.0,
        bucket_s: float = 1.0,
        samples_per_bucket: int = 256,
        seed: int = 0,
    ) -> None:
        self._size = _bucket_count(window_s, bucket_s)
        if samples_per_bucket < 1:
            raise ValueError(f"samples_per_bucket must be at least 1, got {samples_per_bucket!r}")
        self._bucket_s = float(bucket_s)
        self._capacity = samples_per_bucket
        self._indices = [_NO_BUCKET] * self._size
        self._seen = [0] * self._size  # values recorded, sampled or not
        self._sums = [0.0] * self._size
        self._maxima = [0.0] * self._size
        self._samples: list[list[float]] = [[] for _ in range(self._size)]
        # Per slot, (index, seen, the samples sorted) as of the last query: still valid while
        # the slot holds that bucket and has seen nothing since (a bucket stops changing once closed).
        self._sorted: list[tuple[int, int, list[float]] | None] = [None] * self._size
        self._newest = _NO_BUCKET  # as in RateWindow
        self._newest_slot = 0
        self._random = random.Random(seed).random

    @property
    def window_s(self) -> float:
        return self._size * self._bucket_s

    @property
    def samples_per_bucket(self) -> int:
        return self._capacity

    def record(self, now: float, value: float) -> None:
        """Record one value observed at time `now` (a batch goes cheaper through record_many)."""
        self._record_run(_floor(now / self._bucket_s), [value])

    def record_many(self, observations: list[tuple[float, float]]) -> None:
        """record(now, value) for each (now, value), in order, with the same result (the same reservoir draws too),
        at a fraction of the cost per value: the bucket is looked up once per run of values that fall in it."""
        bucket_s = self._bucket_s
        run_index, run = None, []
        for now, value in observations:
            index = _floor(now / bucket_s)
            if index != run_index:
                if run:
                    self._record_run(run_index, run)
                run_index, run = index, []
            run.append(value)
        if run:
            self._record_run(run_index, run)

    def _record_run(self, index: int, values: list[float]) -> None:
        """Values observed in bucket `index`, oldest first: counts, sums and maxima exact, the samples by Algorithm R
        (every value seen so far stays with equal probability), the bucket looked up once for the run."""
        if index == self._newest:
            slot = self._newest_slot
        else:
            if index <= self._newest - self._size:
                return  # older than the window; see RateWindow.record
            slot = index % self._size
            if self._indices[slot] != index:
                self._indices[slot] = index
                self._seen[slot] = 0
                self._sums[slot] = 0.0
                self._maxima[slot] = values[0]
                self._samples[slot].clear()
            if index > self._newest:
                self._newest, self._newest_slot = index, slot
        seen = self._seen[slot]
        self._seen[slot] = seen + len(values)
        self._sums[slot] += sum(values)
        largest = max(values)
        if largest > self._maxima[slot]:
            self._maxima[slot] = largest
        samples, capacity = self._samples[slot], self._capacity
        room = capacity - seen if seen < capacity else 0
        if room:
            samples.extend(values[:room])
            seen += min(room, len(values))
            values = values[room:]
        draw = self._random
        for value in values:  # Algorithm R, as in record
            seen += 1
            position = int(draw() * seen)
            if position < capacity:
                samples[position] = value

    def _live_slots(self, now: float) -> list[int]:
        current = math.floor(now / self._bucket_s)
        oldest = current - self._size
        return [slot for slot, index in enumerate(self._indices) if oldest < index <= current]

    def snapshot(self, now: float) -> LatencySnapshot:
        """Count, mean, p50, p95, p99 and max over the window that ends at `now`."""
        slots = self._live_slots(now)
        count = sum(self._seen[slot] for slot in slots)
        if count == 0:
            return LatencySnapshot()
        p50, p95, p99 = self._quantiles(slots, (0.50, 0.95, 0.99))
        return LatencySnapshot(
            count=count,
            mean=sum(self._sums[slot] for slot in slots) / count,
            p50=p50,
            p95=p95,
            p99=p99,
            max=max(self._maxima[slot] for slot in slots),
        )

    def quantile(self, now: float, q: float) -> float:
        """The q-quantile (0 <= q <= 1) over the window that ends at `now`; 0.0 when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q must be within [0, 1], got {q!r}")
        slots = self._live_slots(now)
        if not any(self._seen[slot] for slot in slots):
            return 0.0
        return self._quantiles(slots, (q,))[0]

    def _quantiles(self, slots: list[int], qs: tuple[float, ...]) -> list[float]:
        # Each sample stands for seen/len(samples) calls of its bucket, so a
        # bucket that overflowed its reservoir still counts for all its calls.
        # Values and weights go in parallel lists and are ordered by one sort of
        # indices keyed on the values (floats compare in C; tuples would not).
        values: list[float] = []
        weights: list[float] = []
        cache = self._sorted
        for slot in slots:
            samples = self._samples[slot]
            if samples:
                index, seen = self._indices[slot], self._seen[slot]
                cached = cache[slot]
                if cached is None or cached[0] != index or cached[1] != seen:
                    cached = cache[slot] = (index, seen, sorted(samples))
                size = len(samples)
                values += cached[2]
                weights += [seen / size] * size
        order = sorted(range(len(values)), key=values.__getitem__)
        cumulative = list(accumulate(map(weights.__getitem__, order)))
        total = cumulative[-1]
        # Nearest rank: the smallest value whose cumulative weight reaches
        # q x total (the tolerance absorbs float error in fractional weights).
        tolerance = total * 1e-12
        last = len(cumulative) - 1
        return [values[order[min(bisect_left(cumulative, q * total - tolerance), last)]] for q in qs]


class EwmaGauge:
    """An exponentially weighted moving average over irregularly timed samples.

    The weight of the past halves every `half_life_s` seconds of elapsed time,
    so a gauge sampled at an uneven rate (RSS polled when the loop has time,
    utilisation read every tick) smooths the same way in wall time. A sample
    taken at the same instant as the previous one carries no weight.
    """

    __slots__ = ("_half_life_s", "_value", "_updated_at")

    def __init__(self, half_life_s: float) -> None:
        if not (math.isfinite(half_life_s) and half_life_s > 0):
            raise ValueError(f"half_life_s must be a positive number, got {half_life_s!r}")
        self._half_life_s = float(half_life_s)
        self._value: float | None = None
        self._updated_at = 0.0

    @property
    def has_value(self) -> bool:
        return self._value is not None

    @property
    def value(self) -> float:
        """The smoothed value; 0.0 before the first sample."""
        return 0.0 if self._value is None else self._value

    def update(self, now: float, sample: float) -> float:
        """Fold in `sample` taken at `now`; returns the new smoothed value."""
        if self._value is None:
            self._value = sample
            self._updated_at = now
            return sample
        elapsed = now - self._updated_at
        if elapsed > 0:
            weight = 1.0 - 0.5 ** (elapsed / self._half_life_s)
            self._value += weight * (sample - self._value)
            self._updated_at = now
        return self._value
