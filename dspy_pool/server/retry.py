"""Retry decisions (pure): which failures are worth retrying, how long to back off, and whether
the budget allows another retry.

The caller owns the loop and the deadline:

    for attempt in itertools.count():
        try: return await call()
        except PoolError as error:
            if not is_transient(error.kind) or not budget.try_spend(clock()):
                raise
            delay = backoff_delay(attempt, base_s, max_s, rng)
            if delay >= deadline - clock():
                raise
            await asyncio.sleep(delay)

`budget.record_call(now)` is called once per original call, never per retry:
retries must not earn budget for further retries, or a failing provider would
fund its own retry storm.
"""

from __future__ import annotations

import math
import random
from collections import deque

from dspy_pool import errors

# 2**63 times any sane base is beyond any max: stop growing before floats overflow.
_MAX_EXPONENT = 63


def is_transient(error_kind: str) -> bool:
    """True when the same call may succeed if simply tried again (the error table's `transient`).

    Never true for a kind that may have run (hard rule 10): the table refuses such a row.
    """
    return errors.meaning(error_kind).transient


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(max_s, base_s * 2**attempt)).

    `attempt` is 0 before the first retry. Full jitter spreads retries of calls
    that failed together, so they do not hit the recovering provider in lockstep.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, not {attempt}")
    if not (base_s >= 0 and max_s >= 0):
        raise ValueError(f"base_s and max_s must be >= 0, not {base_s} and {max_s}")
    ceiling = min(max_s, base_s * 2.0 ** min(attempt, _MAX_EXPONENT))
    return rng.random() * ceiling


class _BucketCounter:
    """Events of the last `window_s` seconds, counted in buckets of `bucket_s` that expire by `now`.

    Expiry depends only on the bucket `now` falls in, so it runs once per bucket, not once per event:
    an event within the newest bucket is one increment.
    """

    def __init__(self, window_s: float, bucket_s: float) -> None:
        self._bucket_s = bucket_s
        self._bucket_count = max(1, math.ceil(window_s / bucket_s - 1e-9))
        self._buckets: deque[list[int]] = deque()  # [bucket index, count]
        self._total = 0
        self._expired_at: int | None = None  # the bucket index of the last expiry
        # The newest bucket and the times it covers: an event inside it (nearly every one) is two increments.
        self._newest: list[int] = [0, 0]
        self._newest_from = self._newest_until = 0.0

    def add(self, now: float) -> None:
        if self._newest_from <= now < self._newest_until:
            self._newest[1] += 1
            self._total += 1
            return
        index = math.floor(now / self._bucket_s)
        if index != self._expired_at:
            self._expire(index)
        buckets = self._buckets
        if not buckets or buckets[-1][0] < index:
            buckets.append([index, 0])
        buckets[-1][1] += 1
        self._total += 1
        if buckets[-1][0] == index:  # `now` is in the newest bucket (not an older, late event)
            self._newest = buckets[-1]
            self._newest_from, self._newest_until = index * self._bucket_s, (index + 1) * self._bucket_s

    def total(self, now: float) -> int:
        index = math.floor(now / self._bucket_s)
        if index != self._expired_at:
            self._expire(index)
        return self._total

    def _expire(self, index: int) -> None:
        oldest_kept = index - self._bucket_count + 1
        while self._buckets and self._buckets[0][0] < oldest_kept:
            self._total -= self._buckets.popleft()[1]
        if not self._buckets or self._buckets[-1] is not self._newest:  # the newest went too: no fast path into it
            self._newest_from = self._newest_until = 0.0
        self._expired_at = index


class RetryBudget:
    """Allows retries worth at most `ratio` of recent calls, plus a small floor (Finagle/Envoy style).

    Over the last `window_s` seconds: retries <= ratio * calls + min_retries_per_s * window_s.
    The floor lets a quiet service still retry its rare failures; the ratio
    keeps a busy one from multiplying its load on a failing provider.
    """

    def __init__(
        self,
        ratio: float = 0.2,
        window_s: float = 10.0,
        min_retries_per_s: float = 1.0,
        bucket_s: float = 1.0,
    ) -> None:
        if not (ratio >= 0 and math.isfinite(ratio)):
            raise ValueError(f"ratio must be a finite number >= 0, not {ratio}")
        if not (window_s > 0 and math.isfinite(window_s)):
            raise ValueError(f"window_s must be a finite number > 0, not {window_s}")
        if not (min_retries_per_s >= 0 and math.isfinite(min_retries_per_s)):
            raise ValueError(f"min_retries_per_s must be a finite number >= 0, not {min_retries_per_s}")
        if not (0 < bucket_s <= window_s):
            raise ValueError(f"bucket_s must be > 0 and <= window_s, not {bucket_s}")
        self.ratio = ratio
        self.window_s = window_s
        self.min_retries_per_s = min_retries_per_s
        self._calls = _BucketCounter(window_s, bucket_s)
        self._retries = _BucketCounter(window_s, bucket_s)
        self.record_call = self._calls.add  # record_call(now): count one original call (not a retry); no call in between

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget if there is one left."""
        # A hair of slack so that 0.2 * 100 calls allows exactly 20 retries despite float rounding.
        if self.available(now) + 1e-9 < 1:
            return False
        self._retries.add(now)
        return True

    def available(self, now: float) -> float:
        """Retries still allowed right now (may be fractional)."""
        allowance = self.ratio * self._calls.total(now) + self.min_retries_per_s * self.window_s
        return allowance - self._retries.total(now)
