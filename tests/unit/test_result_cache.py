"""Result cache: LRU order, TTL expiry, bounds, and key stability, with a fake clock."""

from __future__ import annotations

import pytest

from google.protobuf import struct_pb2

from dspy_pool.server.result_cache import ResultCache, cache_key


def canonical_inputs(values) -> bytes:
    """Inputs as the resilience path keys them: the Struct serialized deterministically."""
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct.SerializeToString(deterministic=True)


def test_get_returns_what_was_put_until_its_expiry():
    """A value put with an expiry is returned before it and gone at it."""
    cache = ResultCache(max_entries=4, max_bytes=1024)
    cache.put(b"k", b"answer", expires_at=10.0)
    assert cache.get(b"k", now=9.99) == b"answer"
    assert cache.get(b"k", now=10.0) is None
    assert cache.get(b"nope", now=0.0) is None


def test_evicts_least_recently_used_past_the_entry_bound():
    """Past max_entries the least recently used entry goes; a get makes an entry recent."""
    cache = ResultCache(max_entries=2, max_bytes=1024)
    cache.put("a", b"1", expires_at=100.0)
    cache.put("b", b"2", expires_at=100.0)
    cache.get("a", now=0.0)
    cache.put("c", b"3", expires_at=100.0)
    assert (cache.get("b", now=0.0), cache.get("a", now=0.0), cache.get("c", now=0.0)) == (None, b"1", b"3")


def test_bounded_in_bytes_not_just_entries():
    """Large values evict older ones to stay within max_bytes; one value over an eighth of it is not kept."""
    cache = ResultCache(max_entries=1000, max_bytes=800)
    for index in range(10):
        cache.put(index, b"x" * 100, expires_at=100.0)
    assert cache.stats().bytes <= 800 and len(cache) == 8
    assert cache.put("huge", b"y" * 101, expires_at=100.0) is False
    assert cache.get("huge", now=0.0) is None


def test_put_replaces_value_and_expiry():
    """A second put of a key replaces its value and expiry, and its bytes are counted once."""
    cache = ResultCache(max_entries=4, max_bytes=1024)
    cache.put("a", b"old", expires_at=5.0)
    cache.put("a", b"newer", expires_at=20.0)
    assert cache.get("a", now=15.0) == b"newer" and cache.stats().bytes == 5


def test_stats_count_hits_misses_evictions_and_expirations():
    """Hits, misses (expired ones too), evictions and expirations are counted."""
    cache = ResultCache(max_entries=1, max_bytes=1024)
    cache.put("a", b"1", expires_at=10.0)
    cache.get("a", now=1.0)
    cache.get("b", now=1.0)
    cache.put("c", b"3", expires_at=10.0)
    cache.get("c", now=20.0)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.expirations) == (1, 2, 1, 1)


def test_rejects_bad_bounds():
    """max_entries and max_bytes must be positive integers."""
    with pytest.raises(ValueError):
        ResultCache(max_entries=0, max_bytes=10)
    with pytest.raises(ValueError):
        ResultCache(max_entries=1, max_bytes=0)


def test_cache_policy_defaults_follow_the_fallback_chain():
    """No cache policy: fallback when the chain has a cache step, else off (nothing written); serve and ttl as given."""
    from dspy_pool.server.cache import Mode, policy_for
    from dspy_pool.v1 import dspy_pool_pb2 as pb

    assert policy_for(pb.ProgramSpec(), 60.0, chain_has_cache_step=False).mode is Mode.OFF
    assert policy_for(pb.ProgramSpec(), 60.0, chain_has_cache_step=True).mode is Mode.FALLBACK
    served = policy_for(pb.ProgramSpec(cache=pb.CachePolicy(mode="serve", ttl_s=5)), 60.0, chain_has_cache_step=False)
    assert (served.mode, served.ttl_s, served.writes) == (Mode.SERVE, 5.0, True)
    with pytest.raises(ValueError, match="cache.mode"):
        policy_for(pb.ProgramSpec(cache=pb.CachePolicy(mode="always")), 60.0, chain_has_cache_step=False)


@pytest.mark.parametrize("ttl_s", [-1.0, float("nan"), float("inf"), 1e12, 30 * 24 * 3600.0 + 1])
def test_a_cache_ttl_past_30_days_or_not_a_number_is_refused(ttl_s):
    """A client's ttl of 1e12 s kept its results in the store for good (20,000 rows that never expire); NaN slipped
    past the old `< 0` check."""
    from dspy_pool.server.cache import policy_for
    from dspy_pool.v1 import dspy_pool_pb2 as pb

    with pytest.raises(ValueError, match="cache.ttl_s must be within 0..2.592e\\+06"):
        policy_for(pb.ProgramSpec(cache=pb.CachePolicy(mode="serve", ttl_s=ttl_s)), 60.0, chain_has_cache_step=False)
    assert policy_for(pb.ProgramSpec(cache=pb.CachePolicy(mode="serve", ttl_s=30 * 24 * 3600.0)), 60.0, False).ttl_s == 2592000.0


def test_deterministic_inputs_ignore_key_order():
    """Equal inputs serialize to equal bytes whatever their key order (map keys are sorted)."""
    first = canonical_inputs({"question": "2+2?", "context": ["a", "b"], "n": {"y": 1, "x": 2}})
    second = canonical_inputs({"n": {"x": 2, "y": 1}, "context": ["a", "b"], "question": "2+2?"})
    assert first == second


def test_cache_key_stable_across_equal_inputs():
    """Equal program, version and inputs give the same key."""
    inputs = canonical_inputs({"question": "héllo"})
    assert cache_key("qa", 3, inputs) == cache_key("qa", 3, canonical_inputs({"question": "héllo"}))
    assert len(cache_key("qa", 3, inputs)) == 32


def test_cache_key_differs_by_version():
    """A new program version never reads the previous version's results."""
    inputs = canonical_inputs({"question": "q"})
    assert cache_key("qa", 1, inputs) != cache_key("qa", 2, inputs)


def test_cache_key_fields_cannot_bleed():
    """Moving bytes between the program name and the inputs changes the key."""
    assert cache_key("ab", 1, b"c") != cache_key("a", 1, b"bc")
