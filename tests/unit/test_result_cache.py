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


def test_get_returns_what_was_put():
    """A fresh entry is returned as stored."""
    cache = ResultCache(max_entries=4, ttl_s=10.0)
    cache.put(b"k", {"answer": "4"}, now=0.0)
    assert cache.get(b"k", now=1.0) == {"answer": "4"}


def test_missing_key_returns_default():
    """A miss returns the default, None unless given."""
    cache = ResultCache(max_entries=4, ttl_s=10.0)
    assert cache.get(b"nope", now=0.0) is None
    assert cache.get(b"nope", now=0.0, default="x") == "x"


def test_evicts_least_recently_used():
    """Past max_entries the entry used least recently goes first, not the oldest put."""
    cache = ResultCache(max_entries=2, ttl_s=10.0)
    cache.put("a", 1, now=0.0)
    cache.put("b", 2, now=0.0)
    cache.get("a", now=0.0)  # "b" is now the least recently used
    cache.put("c", 3, now=0.0)
    assert cache.get("b", now=0.0) is None
    assert cache.get("a", now=0.0) == 1
    assert cache.get("c", now=0.0) == 3


def test_never_exceeds_max_entries():
    """However many puts, the cache holds at most max_entries."""
    cache = ResultCache(max_entries=3, ttl_s=10.0)
    for index in range(100):
        cache.put(index, index, now=0.0)
    assert len(cache) == 3
    assert cache.stats().evictions == 97


def test_entry_expires_after_ttl():
    """An entry is served until ttl_s after its put and dropped from then on."""
    cache = ResultCache(max_entries=4, ttl_s=10.0)
    cache.put("a", 1, now=5.0)
    assert cache.get("a", now=14.99) == 1
    assert cache.get("a", now=15.0) is None
    assert len(cache) == 0


def test_put_refreshes_ttl():
    """Putting a key again restarts its time to live."""
    cache = ResultCache(max_entries=4, ttl_s=10.0)
    cache.put("a", 1, now=0.0)
    cache.put("a", 2, now=8.0)
    assert cache.get("a", now=15.0) == 2


def test_get_does_not_extend_ttl():
    """Reading an entry keeps it recently used but does not make it live longer."""
    cache = ResultCache(max_entries=4, ttl_s=10.0)
    cache.put("a", 1, now=0.0)
    assert cache.get("a", now=9.0) == 1
    assert cache.get("a", now=10.0) is None


def test_stats_count_hits_misses_and_expirations():
    """stats() reports hits, misses and expirations."""
    cache = ResultCache(max_entries=4, ttl_s=10.0)
    cache.put("a", 1, now=0.0)
    cache.get("a", now=1.0)
    cache.get("b", now=1.0)
    cache.get("a", now=20.0)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.expirations, stats.entries) == (1, 2, 1, 0)


def test_rejects_bad_bounds():
    """A cache needs at least one entry and a positive TTL."""
    with pytest.raises(ValueError):
        ResultCache(max_entries=0, ttl_s=1.0)
    with pytest.raises(ValueError):
        ResultCache(max_entries=1, ttl_s=0.0)


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
