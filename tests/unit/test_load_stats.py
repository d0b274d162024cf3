"""bench/load_stats.py: histogram percentiles and merging, schedules, splitting, the loopback guard."""

import pathlib
import random
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))

import load_stats  # noqa: E402
from load_stats import LatencyHistogram, Step, Timeline, spread  # noqa: E402


def _values(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.lognormvariate(3.0, 0.8) for _ in range(n)]


def test_exact_percentile_is_nearest_rank():
    """percentile() is the nearest-rank percentile of a sorted list."""
    values = [float(v) for v in range(1, 101)]
    assert load_stats.percentile(values, 50) == 50.0
    assert load_stats.percentile(values, 99) == 99.0
    assert load_stats.percentile(values, 100) == 100.0
    assert load_stats.percentile([7.0], 90) == 7.0


def test_histogram_percentiles_are_within_one_percent_of_exact():
    """Log buckets keep every reported percentile within 1% of the exact value."""
    values = _values(20_000, seed=1)
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    ordered = sorted(values)
    for q in (50, 90, 95, 99, 99.9):
        exact = load_stats.percentile(ordered, q)
        assert histogram.percentile(q) == pytest.approx(exact, rel=0.01)
    assert histogram.percentile(100) == max(values) and histogram.max_ms == max(values)
    assert histogram.count == len(values) and histogram.min_ms == min(values)


def test_merging_histograms_equals_one_histogram_of_all_values():
    """Merging per-process histograms gives the same counts and figures as recording everything once."""
    first, second = _values(3000, seed=2), _values(5000, seed=3)
    a, b, whole = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for value in first:
        a.record(value)
        whole.record(value)
    for value in second:
        b.record(value)
        whole.record(value)
    merged = LatencyHistogram().merge(a).merge(b)
    assert merged.buckets == whole.buckets and merged.count == whole.count
    assert merged.summary() == whole.summary()


def test_histogram_round_trips_through_a_dict():
    """to_dict/from_dict (the form passed between processes) loses nothing, empty or not."""
    histogram = LatencyHistogram()
    assert LatencyHistogram.from_dict(histogram.to_dict()).count == 0
    for value in (0.0, 0.0005, 1.0, 250.0):
        histogram.record(value)
    copy = LatencyHistogram.from_dict(histogram.to_dict())
    assert copy == histogram and copy.summary()["p50"] == histogram.summary()["p50"]


def test_histogram_rejects_negative_and_nan():
    """A negative or NaN latency is a bug in the caller, not a figure."""
    histogram = LatencyHistogram()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            histogram.record(bad)


def test_empty_histogram_summary_has_count_zero():
    """An empty histogram reports count 0 rather than raising."""
    assert LatencyHistogram().summary() == {"count": 0}


def test_parse_schedule_reads_rate_seconds_steps():
    """"100:5,200:2.5" is two steps; malformed or non-positive steps are rejected."""
    assert load_stats.parse_schedule("100:5, 200:2.5") == [Step(100.0, 5.0), Step(200.0, 2.5)]
    for bad in ("", "100", "100:0", "-5:3", "a:b", "100:5,oops"):
        with pytest.raises(ValueError):
            load_stats.parse_schedule(bad)


def test_call_times_follow_the_schedule_steps():
    """Call k is due at k/rate within its step; the schedule's end returns None."""
    steps = [Step(10.0, 1.0), Step(100.0, 0.5)]
    assert load_stats.call_time_s(steps, 0) == 0.0
    assert load_stats.call_time_s(steps, 5) == pytest.approx(0.5)
    assert load_stats.call_time_s(steps, 10) == pytest.approx(1.0)
    assert load_stats.call_time_s(steps, 20) == pytest.approx(1.1)
    assert load_stats.call_time_s(steps, 60) is None
    assert load_stats.due_calls(steps, 1.25) == pytest.approx(35.0)
    assert load_stats.schedule_seconds(steps) == 1.5


def test_scaled_schedule_divides_rates_among_processes():
    """Each of N processes gets rate/N for the same seconds."""
    assert load_stats.scale_schedule([Step(300.0, 2.0)], 1 / 3) == [Step(pytest.approx(100.0), 2.0)]


def test_split_evenly_preserves_the_total():
    """Shares differ by at most one and add up to the total."""
    assert load_stats.split_evenly(10, 3) == [4, 3, 3]
    assert load_stats.split_evenly(2, 4) == [1, 1, 0, 0]
    with pytest.raises(ValueError):
        load_stats.split_evenly(5, 0)


@pytest.mark.parametrize("target", ["127.0.0.1:50051", "127.9.9.9:1", "localhost:50051", "[::1]:50051", "unix:///tmp/x.sock", "ipv4:127.0.0.1:5"])
def test_loopback_targets_are_accepted(target):
    """Loopback addresses and unix sockets are allowed targets."""
    assert load_stats.check_loopback(target) == target


@pytest.mark.parametrize("target", ["10.0.0.1:50051", "0.0.0.0:50051", "example.com:443", "[2001:db8::1]:50051", "192.168.1.2:80"])
def test_other_targets_are_refused(target):
    """Anything but loopback is refused before a single call is sent."""
    with pytest.raises(ValueError):
        load_stats.check_loopback(target)


def test_timeline_merges_and_finds_recovery():
    """Timelines from two processes merge; recovery is the first stable healthy bucket after an event."""
    a, b = Timeline(0.5), Timeline(0.5)
    for t in (0.1, 0.6, 3.1, 3.6, 4.1):
        a.record(100.0 + t, ok=True)
    for t in (1.1, 1.6, 2.1, 2.6):
        b.record(100.0 + t, ok=False)
    series = a.merge(b).series()
    assert [(ok, failed) for _, ok, failed in series] == [(1, 0), (1, 0), (0, 1), (0, 1), (0, 1), (0, 1), (1, 0), (1, 0), (1, 0)]
    assert load_stats.recovery_s(series, since_s=101.0) == pytest.approx(2.0)
    assert load_stats.recovery_s(series[:-2], since_s=101.0) is None


def test_merge_client_results_adds_counts_and_keeps_error_samples_distinct():
    """Merged figures add counts, span the union of windows and keep one sample per distinct error."""
    def result(start, end, values, codes, errors):
        histogram = LatencyHistogram()
        for value in values:
            histogram.record(value)
        return {"started": start, "ended": end, "histogram": histogram.to_dict(), "timeline": Timeline().to_dict(),
                "codes": codes, "errors": errors, "sent": sum(codes.values()), "dropped": 0}
    error = {"code": "UNAVAILABLE", "message": "no worker"}
    merged = load_stats.merge_client_results([
        result(10.0, 12.0, [1.0, 2.0], {"OK": 2, "UNAVAILABLE": 1}, [error]),
        result(10.5, 14.0, [3.0], {"OK": 1, "UNAVAILABLE": 2}, [error, {"code": "INTERNAL", "message": "x"}]),
    ])
    assert merged["count"] == 6 and merged["ok"] == 3 and merged["elapsed_s"] == 4.0
    assert merged["calls_per_s"] == 1.5 and merged["latency_ms"]["max"] == 3.0
    assert merged["status_codes"] == {"OK": 3, "UNAVAILABLE": 3}
    assert [e["code"] for e in merged["errors"]] == ["UNAVAILABLE", "INTERNAL"]


def test_per_step_counts_calls_in_each_window():
    """Calls are attributed to the schedule step whose window holds their bucket."""
    series = [(100.0, 10, 0), (100.5, 10, 1), (101.0, 30, 0), (101.5, 30, 0)]
    steps = load_stats.per_step(series, 100.0, [Step(20.0, 1.0), Step(60.0, 1.0)])
    assert [(s["ok"], s["failed"], s["calls_per_s"]) for s in steps] == [(20, 1, 21.0), (60, 0, 60.0)]


def test_spread_leaves_out_what_was_not_measured():
    assert spread([3.0, None, 1.0, 2.0], 1) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert spread([None]) == {"median": None, "min": None, "max": None, "n": 0}
