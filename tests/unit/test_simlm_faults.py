"""Fault configuration and the per-request draw of outcome and latency."""

import random
from collections import Counter

import pytest

from dspy_pool.simlm.faults import FaultConfig, LatencySpec, Outcome, decide, sample_latency_s


def outcomes(config, n=2000, seed=7):
    rng = random.Random(seed)
    return Counter(decide(config, rng) for _ in range(n))


def test_default_config_always_ok():
    """With no faults every request succeeds."""
    assert outcomes(FaultConfig()) == Counter({Outcome.OK: 2000})


@pytest.mark.parametrize(
    "field, outcome",
    [
        ("error_rate", Outcome.ERROR_500),
        ("rate_limit_rate", Outcome.RATE_LIMIT_429),
        ("hang_rate", Outcome.HANG),
        ("malformed_rate", Outcome.MALFORMED),
        ("disconnect_rate", Outcome.DISCONNECT),
        ("auth_error_rate", Outcome.AUTH_401),
        ("bad_request_rate", Outcome.BAD_REQUEST_400),
    ],
)
def test_rate_one_always_gives_its_outcome(field, outcome):
    """A rate of 1 turns every request into that fault."""
    assert outcomes(FaultConfig(**{field: 1.0}), n=50) == Counter({outcome: 50})


def test_rates_split_requests_roughly_in_proportion():
    """Mixed rates give each outcome about its share."""
    counts = outcomes(FaultConfig(error_rate=0.25, rate_limit_rate=0.25), n=4000)
    assert 800 < counts[Outcome.ERROR_500] < 1200
    assert 800 < counts[Outcome.RATE_LIMIT_429] < 1200


def test_same_seed_same_sequence():
    """Decisions and latencies are reproducible from the seed."""
    config = FaultConfig(error_rate=0.3, latency="lognormal:20:0.5")

    def run(seed):
        rng = random.Random(seed)
        return [(decide(config, rng), sample_latency_s(config, rng)) for _ in range(100)]

    assert run(3) == run(3)
    assert run(3) != run(4)


@pytest.mark.parametrize(
    "spec, low, high",
    [("fixed:20", 0.020, 0.020), ("25", 0.025, 0.025), ("uniform:10:30", 0.010, 0.030), ("exp:0", 0.0, 0.0)],
)
def test_latency_within_spec_bounds(spec, low, high):
    """Latency samples stay inside the bounds of their distribution, in seconds."""
    config = FaultConfig(latency=spec)
    rng = random.Random(1)
    samples = [sample_latency_s(config, rng) for _ in range(200)]
    assert all(low <= s <= high for s in samples)


def test_lognormal_median_near_spec():
    """lognormal:MEDIAN:SIGMA is centred on MEDIAN milliseconds."""
    rng = random.Random(2)
    samples = sorted(sample_latency_s(FaultConfig(latency="lognormal:20:0.5"), rng) for _ in range(2001))
    assert 0.017 < samples[1000] < 0.023


def test_exp_mean_near_spec():
    """exp:MEAN has about MEAN milliseconds on average."""
    rng = random.Random(3)
    samples = [sample_latency_s(FaultConfig(latency="exp:20"), rng) for _ in range(4000)]
    assert 0.018 < sum(samples) / len(samples) < 0.022


def test_numeric_latency_normalised_to_fixed_spec():
    """A bare number of milliseconds becomes a fixed spec in to_dict."""
    assert FaultConfig.from_dict({"latency": 20}).to_dict()["latency"] == "fixed:20"


def test_round_trip_through_dict():
    """to_dict and from_dict are inverses."""
    config = FaultConfig(error_rate=0.1, hang_rate=0.2, latency="uniform:1:5", retry_after_s=3)
    assert FaultConfig.from_dict(config.to_dict()) == config


def test_merged_replaces_only_given_keys():
    """A partial patch (what /admin/faults receives) keeps the other settings."""
    config = FaultConfig(error_rate=0.1, latency="fixed:5").merged({"hang_rate": 0.5})
    assert (config.error_rate, config.hang_rate, config.latency) == (0.1, 0.5, "fixed:5")


@pytest.mark.parametrize(
    "data, message",
    [
        ({"error_rate": 1.5}, "error_rate must be a number between 0 and 1"),
        ({"hang_rate": "high"}, "hang_rate must be a number"),
        ({"error_rate": 0.6, "malformed_rate": 0.6}, "must sum to at most 1"),
        ({"latency": "gauss:1"}, "latency kind must be one of"),
        ({"latency": "uniform:5"}, "takes 2 parameter"),
        ({"latency": "uniform:9:1"}, "low <= high"),
        ({"latency": "fixed:-1"}, ">= 0"),
        ({"latency": "fixed:abc"}, "must be numbers"),
        ({"retry_after_s": -1}, "retry_after_s"),
        ({"eror_rate": 0.1}, "unknown fault config keys ['eror_rate']"),
    ],
)
def test_invalid_config_names_the_problem(data, message):
    """Validation raises ValueError with a message that says what is wrong."""
    with pytest.raises(ValueError) as info:
        FaultConfig.from_dict(data)
    assert message in str(info.value)


def test_from_dict_rejects_non_object():
    """A JSON array or string is not a config."""
    with pytest.raises(ValueError, match="JSON object"):
        FaultConfig.from_dict([1, 2])


def test_latency_spec_prints_canonically():
    """Specs print in the same form they are written."""
    assert str(LatencySpec.parse("lognormal:20:0.5")) == "lognormal:20:0.5"
