"""Sliding-window statistics, driven by a fake clock (plain float `now` values)."""

from __future__ import annotations

import random

import pytest

from dspy_pool.pool.windows import EwmaGauge, LatencySnapshot, LatencyWindow, RateWindow

# ---------------------------------------------------------------- RateWindow


def test_rate_window_counts_events_inside_the_window():
    """Every event recorded within the window is counted."""
    window = RateWindow(window_s=10.0, bucket_s=1.0)
    for second in range(5):
        window.record(100.0 + second, 3)
    assert window.count(104.5) == 15


def test_rate_window_forgets_events_older_than_the_window():
    """Buckets that have left the window no longer count."""
    window = RateWindow(window_s=10.0, bucket_s=1.0)
    window.record(100.0, 7)
    window.record(105.0, 2)
    assert window.count(110.5) == 2
    assert window.count(116.0) == 0


def test_rate_window_reuses_slots_after_wrapping():
    """A slot reused one lap later starts from zero, not from the old count."""
    window = RateWindow(window_s=3.0, bucket_s=1.0)
    window.record(0.5, 100)
    window.record(3.5, 1)  # same slot as 0.5, three buckets later
    assert window.count(3.5) == 1


def test_rate_is_events_per_second_in_steady_state():
    """A steady 50 events/s reads as 50/s once the window is full."""
    window = RateWindow(window_s=10.0, bucket_s=1.0)
    now = 0.0
    while now < 30.0:
        window.record(now)
        now += 0.02
    assert window.rate(now) == pytest.approx(50.0, rel=0.03)


def test_rate_is_not_diluted_by_time_before_the_first_event():
    """A window that just began receiving events divides by the time it covers."""
    window = RateWindow(window_s=60.0, bucket_s=1.0)
    for tick in range(40):
        window.record(1000.0 + tick * 0.1)
    assert window.rate(1004.0) == pytest.approx(10.0, rel=0.05)


def test_rate_is_zero_when_empty():
    """No events reads as a rate of zero."""
    assert RateWindow().rate(5.0) == 0.0


def test_rate_window_drops_events_older_than_the_window():
    """A late event for a bucket already out of the window is ignored."""
    window = RateWindow(window_s=5.0, bucket_s=1.0)
    window.record(20.0, 4)
    window.record(10.0, 99)
    assert window.count(20.0) == 4


@pytest.mark.parametrize(("window_s", "bucket_s"), [(10.0, 0.0), (0.5, 1.0), (float("nan"), 1.0)])
def test_rate_window_rejects_bad_geometry(window_s, bucket_s):
    """A bucket must be positive and no longer than the window."""
    with pytest.raises(ValueError):
        RateWindow(window_s=window_s, bucket_s=bucket_s)


# ------------------------------------------------------------- LatencyWindow


def test_latency_percentiles_are_exact_for_a_small_sample():
    """Below the reservoir size, percentiles are the nearest-rank values."""
    window = LatencyWindow(window_s=10.0, bucket_s=1.0)
    for value in range(1, 101):
        window.record(50.0 + value / 100, float(value))  # spread over two buckets
    snapshot = window.snapshot(51.0)
    assert snapshot == LatencySnapshot(count=100, mean=50.5, p50=50.0, p95=95.0, p99=99.0, max=100.0)


def test_latency_snapshot_is_all_zeros_when_empty():
    """An empty window reads as zeros, which never trigger scaling."""
    window = LatencyWindow()
    window.record(1.0, 5.0)
    assert window.snapshot(100.0) == LatencySnapshot()


def test_latency_window_forgets_old_samples():
    """Samples recorded before the window do not affect its percentiles."""
    window = LatencyWindow(window_s=5.0, bucket_s=1.0)
    for _ in range(50):
        window.record(0.0, 10.0)
    for _ in range(50):
        window.record(6.0, 0.1)
    snapshot = window.snapshot(6.5)
    assert (snapshot.count, snapshot.max, snapshot.p99) == (50, 0.1, 0.1)


def test_latency_window_memory_is_bounded_per_bucket():
    """However many values arrive, a bucket keeps at most samples_per_bucket of them."""
    window = LatencyWindow(window_s=2.0, bucket_s=1.0, samples_per_bucket=32)
    for index in range(20_000):
        window.record(index * 0.0001, float(index))
    assert all(len(samples) <= 32 for samples in window._samples)
    assert window.snapshot(1.999).count == 20_000


def test_latency_max_and_mean_are_exact_beyond_the_reservoir():
    """Max and mean count every value, sampled or not."""
    window = LatencyWindow(window_s=1.0, bucket_s=1.0, samples_per_bucket=4)
    for index in range(1000):
        window.record(0.5, float(index))
    snapshot = window.snapshot(0.5)
    assert (snapshot.max, snapshot.mean) == (999.0, 499.5)


def test_latency_busy_bucket_outweighs_quiet_bucket():
    """Samples are weighted by the calls they stand for, so a busy second dominates."""
    window = LatencyWindow(window_s=10.0, bucket_s=1.0, samples_per_bucket=50)
    for _ in range(10_000):
        window.record(1.0, 0.01)  # busy second, fast calls (reservoir full)
    for _ in range(50):
        window.record(2.0, 5.0)  # quiet second, slow calls
    snapshot = window.snapshot(2.5)
    assert snapshot.p50 == 0.01
    assert snapshot.p99 == 0.01  # 50 slow calls are 0.5% of 10,050
    assert snapshot.max == 5.0


def test_latency_reservoir_is_reproducible_with_a_seed():
    """The same seed and inputs give the same estimates."""

    def run() -> LatencySnapshot:
        window = LatencyWindow(window_s=1.0, bucket_s=1.0, samples_per_bucket=8, seed=7)
        for index in range(500):
            window.record(0.0, float(index % 97))
        return window.snapshot(0.0)

    assert run() == run()


def _observations(seed: int, count: int) -> list[tuple[float, float]]:
    """`count` (time, value) pairs over ~6 s, times non-decreasing, values spread over three orders of magnitude."""
    rng = random.Random(seed)
    now, out = 100.0, []
    for _ in range(count):
        now += rng.expovariate(count / 6.0)
        out.append((now, rng.lognormvariate(-4.0, 1.0)))
    return out


@pytest.mark.parametrize("count", [1, 7, 300, 5000])
def test_latency_record_many_equals_recording_one_at_a_time(count):
    """A batch folded with record_many leaves the window as record() would, reservoir draws included."""
    one, many = (LatencyWindow(window_s=4.0, bucket_s=0.5, samples_per_bucket=16, seed=3) for _ in range(2))
    observations = _observations(count, count)
    for now, value in observations:
        one.record(now, value)
    many.record_many(observations[: count // 2])  # two batches: the second continues the first's buckets
    many.record_many(observations[count // 2:])
    end = observations[-1][0]
    for now in (end, end + 1.0, end + 3.9):
        a, b = one.snapshot(now), many.snapshot(now)
        assert (a.count, a.p50, a.p95, a.p99, a.max) == (b.count, b.p50, b.p95, b.p99, b.max)
        assert a.mean == pytest.approx(b.mean)


def test_latency_record_many_drops_values_older_than_the_window():
    window = LatencyWindow(window_s=2.0, bucket_s=1.0)
    window.record(10.0, 0.5)
    window.record_many([(5.0, 9.0), (10.5, 0.25)])
    assert window.snapshot(10.9).count == 2
    assert window.snapshot(10.9).max == 0.5


def test_rate_record_many_equals_recording_one_at_a_time():
    one, many = RateWindow(window_s=3.0, bucket_s=0.5), RateWindow(window_s=3.0, bucket_s=0.5)
    times = [now for now, _ in _observations(11, 2000)]
    for now in times:
        one.record(now)
    many.record_many(times)
    end = times[-1]
    for now in (end, end + 1.0, end + 2.9):
        assert one.count(now) == many.count(now)
        assert one.rate(now) == many.rate(now)


def test_latency_quantile_reads_any_q():
    """quantile() gives an arbitrary nearest-rank quantile."""
    window = LatencyWindow()
    for value in range(1, 11):
        window.record(3.0, float(value))
    assert (window.quantile(3.0, 0.0), window.quantile(3.0, 0.3), window.quantile(3.0, 1.0)) == (1.0, 3.0, 10.0)


def test_latency_quantile_rejects_q_outside_unit_interval():
    """q must be a fraction."""
    with pytest.raises(ValueError):
        LatencyWindow().quantile(0.0, 95)


# ---------------------------------------------------------------- EwmaGauge


def test_ewma_first_sample_is_the_value():
    """The first sample sets the gauge, with no ramp from zero."""
    gauge = EwmaGauge(half_life_s=10.0)
    assert (gauge.has_value, gauge.value) == (False, 0.0)
    assert gauge.update(5.0, 300.0) == 300.0


def test_ewma_moves_halfway_in_one_half_life():
    """After one half-life the gauge has covered half the distance to a new level."""
    gauge = EwmaGauge(half_life_s=10.0)
    gauge.update(0.0, 100.0)
    assert gauge.update(10.0, 200.0) == pytest.approx(150.0)


def test_ewma_weighs_by_elapsed_time_not_sample_count():
    """Many samples over one half-life smooth the same as one sample at its end."""
    gauge = EwmaGauge(half_life_s=10.0)
    gauge.update(0.0, 0.0)
    for tick in range(1, 101):
        gauge.update(tick * 0.1, 100.0)
    assert gauge.value == pytest.approx(50.0)


def test_ewma_ignores_a_sample_at_the_same_instant():
    """A zero-duration sample carries no weight."""
    gauge = EwmaGauge(half_life_s=1.0)
    gauge.update(1.0, 10.0)
    assert gauge.update(1.0, 1000.0) == 10.0
