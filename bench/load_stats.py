"""Pure figures for bench/load.py and bench/scenarios: latency histograms, merging, schedules.

No I/O and no clocks here: callers pass values and times in. Latencies are kept
in a log-bucketed histogram (about 1% relative precision), so the results of
several client processes merge exactly by adding bucket counts, and a run of
millions of calls costs a few kilobytes rather than a list of floats.
"""

from __future__ import annotations

import ipaddress
import math
import statistics
from dataclasses import dataclass, field
from typing import Iterable

_GROWTH = 1.01                      # bucket width: 1% of the value
_LOG_GROWTH = math.log(_GROWTH)
QUANTILES = (50, 90, 95, 99)


def spread(values: list[float | None], digits: int = 3) -> dict:
    """Median, min and max of the measured values (None: not measured) rounded to `digits`, and how many there were."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100); the reference for the histogram."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def _bucket(value_ms: float) -> int:
    micros = value_ms * 1000.0
    return 0 if micros <= 1.0 else int(math.log(micros) / _LOG_GROWTH)


def _bucket_value_ms(index: int) -> float:
    return math.exp((index + 0.5) * _LOG_GROWTH) / 1000.0


@dataclass
class LatencyHistogram:
    """Latencies in milliseconds; mergeable; percentiles within about 0.5% of the exact value."""

    buckets: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total_ms: float = 0.0
    min_ms: float = math.inf
    max_ms: float = 0.0

    def record(self, value_ms: float) -> None:
        if value_ms < 0 or not math.isfinite(value_ms):
            raise ValueError(f"latency must be a finite value >= 0, not {value_ms}")
        index = _bucket(value_ms)
        self.buckets[index] = self.buckets.get(index, 0) + 1
        self.count += 1
        self.total_ms += value_ms
        self.min_ms = min(self.min_ms, value_ms)
        self.max_ms = max(self.max_ms, value_ms)

    def merge(self, other: "LatencyHistogram") -> "LatencyHistogram":
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n
        self.count += other.count
        self.total_ms += other.total_ms
        self.min_ms = min(self.min_ms, other.min_ms)
        self.max_ms = max(self.max_ms, other.max_ms)
        return self

    def percentile(self, q: float) -> float:
        if self.count == 0:
            raise ValueError("no values")
        if q >= 100:
            return self.max_ms
        rank = max(1, math.ceil(q / 100.0 * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                return min(self.max_ms, max(self.min_ms, _bucket_value_ms(index)))
        return self.max_ms

    def summary(self, digits: int = 3) -> dict:
        if self.count == 0:
            return {"count": 0}
        figures = {f"p{q}": round(self.percentile(q), digits) for q in QUANTILES}
        return {"count": self.count, "min": round(self.min_ms, digits), "mean": round(self.total_ms / self.count, digits),
                **figures, "max": round(self.max_ms, digits)}

    def to_dict(self) -> dict:
        return {"buckets": {str(k): v for k, v in self.buckets.items()}, "count": self.count, "total_ms": self.total_ms,
                "min_ms": self.min_ms if self.count else None, "max_ms": self.max_ms}

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyHistogram":
        return cls({int(k): v for k, v in data["buckets"].items()}, data["count"], data["total_ms"],
                   math.inf if data["min_ms"] is None else data["min_ms"], data["max_ms"])


@dataclass
class Timeline:
    """Outcomes counted per time bucket (absolute seconds in, so processes merge): ok and failed calls."""

    bucket_s: float = 0.25
    ok: dict[int, int] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)

    def record(self, at_s: float, ok: bool) -> None:
        index = int(at_s // self.bucket_s)
        target = self.ok if ok else self.failed
        target[index] = target.get(index, 0) + 1

    def merge(self, other: "Timeline") -> "Timeline":
        if other.bucket_s != self.bucket_s:
            raise ValueError("timelines with different bucket sizes")
        for mine, theirs in ((self.ok, other.ok), (self.failed, other.failed)):
            for index, n in theirs.items():
                mine[index] = mine.get(index, 0) + n
        return self

    def series(self) -> list[tuple[float, int, int]]:
        """(bucket start in seconds, ok, failed) for every bucket from the first to the last seen."""
        indexes = set(self.ok) | set(self.failed)
        if not indexes:
            return []
        return [(i * self.bucket_s, self.ok.get(i, 0), self.failed.get(i, 0)) for i in range(min(indexes), max(indexes) + 1)]

    def to_dict(self) -> dict:
        return {"bucket_s": self.bucket_s, "ok": {str(k): v for k, v in self.ok.items()}, "failed": {str(k): v for k, v in self.failed.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "Timeline":
        return cls(data["bucket_s"], {int(k): v for k, v in data["ok"].items()}, {int(k): v for k, v in data["failed"].items()})


def recovery_s(series: list[tuple[float, int, int]], since_s: float, max_failed_fraction: float = 0.05, stable_buckets: int = 2) -> float | None:
    """Seconds after `since_s` until `stable_buckets` buckets in a row have calls and at most that failed fraction.

    None when that never happens in the series. The time is the start of the
    first of those buckets (never negative).
    """
    run = 0
    first = None
    for start, ok, failed in series:
        if start + 1e-9 < since_s:
            continue
        total = ok + failed
        if total and failed / total <= max_failed_fraction:
            run += 1
            first = start if run == 1 else first
            if run >= stable_buckets:
                return max(0.0, first - since_s)
        else:
            run, first = 0, None
    return None


@dataclass(frozen=True)
class Step:
    rate: float     # calls per second
    seconds: float


def parse_schedule(text: str) -> list[Step]:
    """"100:5,200:5" -> 100 calls/s for 5 s, then 200 calls/s for 5 s."""
    steps = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        rate, sep, seconds = part.partition(":")
        try:
            step = Step(float(rate), float(seconds))
        except ValueError:
            raise ValueError(f"schedule step {part!r} is not RATE:SECONDS") from None
        if not sep or step.rate <= 0 or step.seconds <= 0 or not math.isfinite(step.rate * step.seconds):
            raise ValueError(f"schedule step {part!r} needs a rate > 0 and seconds > 0 (RATE:SECONDS)")
        steps.append(step)
    if not steps:
        raise ValueError("empty schedule")
    return steps


def scale_schedule(steps: list[Step], factor: float) -> list[Step]:
    """Each client process's share of the schedule (the rates divided among processes)."""
    return [Step(step.rate * factor, step.seconds) for step in steps]


def due_calls(steps: list[Step], elapsed_s: float) -> float:
    """How many calls the schedule has asked for by `elapsed_s` (piecewise-constant rates)."""
    due = 0.0
    for step in steps:
        if elapsed_s <= 0:
            break
        span = min(step.seconds, elapsed_s)
        due += step.rate * span
        elapsed_s -= span
    return due


def call_time_s(steps: list[Step], number: int) -> float | None:
    """When call `number` (0-based) is due, in seconds from the start; None when the schedule ends first."""
    offset = 0.0
    for step in steps:
        calls = step.rate * step.seconds
        if number < calls:
            return offset + number / step.rate
        number -= calls
        offset += step.seconds
    return None


def schedule_seconds(steps: list[Step]) -> float:
    return sum(step.seconds for step in steps)


def per_step(series: list[tuple[float, int, int]], started_s: float, steps: list[Step]) -> list[dict]:
    """Calls that ended within each step's window (by bucket start), and the rate achieved there."""
    figures, offset = [], started_s
    for step in steps:
        ok = sum(o for start, o, _ in series if offset <= start < offset + step.seconds)
        failed = sum(f for start, _, f in series if offset <= start < offset + step.seconds)
        figures.append({"rate": step.rate, "seconds": step.seconds, "ok": ok, "failed": failed,
                        "calls_per_s": round((ok + failed) / step.seconds, 1)})
        offset += step.seconds
    return figures


def split_evenly(total: int, parts: int) -> list[int]:
    """Split an integer among parts as evenly as possible, the larger shares first."""
    if parts < 1:
        raise ValueError("parts must be >= 1")
    base, extra = divmod(max(0, total), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def check_loopback(target: str) -> str:
    """Return the target when it is a loopback address (or a unix socket); raise ValueError otherwise.

    The load generator must never be pointed at someone else's server.
    """
    if target.startswith(("unix:", "unix-abstract:")):
        return target
    host = target
    if host.startswith("ipv4:") or host.startswith("ipv6:"):
        host = host.split(":", 1)[1]
    if host.startswith("["):
        host = host[1:host.index("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    if host == "localhost":
        return target
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"target {target!r}: only loopback addresses (127.0.0.0/8, ::1, localhost) or unix sockets are allowed") from None
    if not address.is_loopback:
        raise ValueError(f"target {target!r} is not a loopback address; refusing to send load there")
    return target


def add_counts(into: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n
    return into


def merge_error_samples(samples: Iterable[list[dict]], limit: int = 10) -> list[dict]:
    """Keep at most `limit` samples, one per distinct (code, message), in first-seen order."""
    seen, merged = set(), []
    for group in samples:
        for sample in group:
            key = (sample.get("code"), sample.get("message"))
            if key in seen:
                continue
            seen.add(key)
            merged.append(sample)
            if len(merged) >= limit:
                return merged
    return merged


def merge_client_results(results: list[dict]) -> dict:
    """Merge the per-process results of bench/load.py into one set of figures.

    Each result: started/ended (wall seconds), histogram, timeline, codes, errors, sent, dropped.
    calls/s is counted over the union of the processes' windows (first start to last end).
    """
    if not results:
        raise ValueError("no results")
    histogram = LatencyHistogram()
    timeline = Timeline(results[0]["timeline"]["bucket_s"])
    codes: dict[str, int] = {}
    for result in results:
        histogram.merge(LatencyHistogram.from_dict(result["histogram"]))
        timeline.merge(Timeline.from_dict(result["timeline"]))
        add_counts(codes, result["codes"])
    started = min(r["started"] for r in results)
    ended = max(r["ended"] for r in results)
    elapsed = max(ended - started, 1e-9)
    count = sum(codes.values())
    ok = codes.get("OK", 0)
    return {
        "count": count,
        "ok": ok,
        "elapsed_s": round(elapsed, 3),
        "calls_per_s": round(count / elapsed, 1),
        "ok_per_s": round(ok / elapsed, 1),
        "latency_ms": histogram.summary(),
        "status_codes": dict(sorted(codes.items(), key=lambda item: -item[1])),
        "sent": sum(r.get("sent", 0) for r in results),
        "dropped": sum(r.get("dropped", 0) for r in results),
        "errors": merge_error_samples(r.get("errors", []) for r in results),
        "_timeline": timeline,
        "_started": started,
    }
