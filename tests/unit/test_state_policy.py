"""The state backends' shared decisions: session expiry, the session cap, cache warming."""

from __future__ import annotations

from dspy_pool.errors import ErrorKind
from dspy_pool.state.base import SessionLimits
from dspy_pool.state.policy import (
    Room, entry_bytes, is_expired, make_room, pick_top, programs_full, sessions_full, trim_from,
)

LIMITS = SessionLimits(ttl_s=100.0, max_turns=5, max_sessions=2, protect_s=60.0)


def test_idle_exactly_the_ttl_is_not_expired():
    """Expiry is strictly more idle than the TTL."""
    assert not is_expired(0.0, 100.0, 100.0)
    assert is_expired(0.0, 100.001, 100.0)


def test_trim_keeps_the_last_max_turns():
    """After turn 9 with max_turns 5, turns 5..9 remain; max_turns 0 keeps none."""
    assert trim_from(10, 5) == 5
    assert trim_from(10, 0) == 10
    assert trim_from(10, -1) == 10


def test_under_the_cap_nothing_goes():
    """Below max_sessions no session is touched and the LRU list is not read."""
    def lru():
        raise AssertionError("read")
        yield
    assert make_room(1, lru(), 0.0, LIMITS) == Room()


def test_expired_sessions_go_first_and_are_not_evictions():
    """At the cap, an expired oldest session makes room and is reported as expired."""
    room = make_room(2, iter([("old", 0.0), ("new", 150.0)]), 200.0, LIMITS)
    assert room == Room(expired=("old",))


def test_the_least_recently_used_idle_session_is_evicted():
    """At the cap, the oldest live session idle at least protect_s is evicted."""
    room = make_room(2, iter([("a", 100.0), ("b", 150.0)]), 160.0, LIMITS)
    assert room == Room(evicted=("a",))


def test_idle_exactly_protect_s_may_be_evicted():
    """protect_s protects sessions used less than protect_s ago, not exactly that long."""
    assert make_room(2, iter([("a", 100.0), ("b", 150.0)]), 160.0, LIMITS).evicted == ("a",)
    assert make_room(2, iter([("a", 100.1), ("b", 150.0)]), 160.0, LIMITS).retry_after_ms > 0


def test_an_active_oldest_session_refuses_with_time_until_evictable():
    """When the oldest session is active, refuse; retry when it will have been idle protect_s."""
    room = make_room(2, iter([("a", 100.0), ("b", 110.0)]), 130.0, LIMITS)
    assert room == Room(retry_after_ms=30_000)


def test_retry_hint_is_at_least_a_second():
    """A session about to become evictable still asks for a second, so clients do not spin."""
    assert make_room(2, iter([("a", 100.0), ("b", 110.0)]), 159.9, LIMITS).retry_after_ms == 1000


def test_over_the_cap_several_go():
    """With more sessions than the cap (lowered since), enough go to fit one more."""
    room = make_room(4, iter([("x", 0.0), ("a", 100.0), ("b", 120.0), ("c", 190.0)]), 200.0, LIMITS)
    assert room == Room(expired=("x",), evicted=("a", "b"))


def test_refusal_drops_what_it_would_have_removed():
    """If one more must go but cannot, nothing is removed: the refusal changes nothing."""
    room = make_room(3, iter([("x", 0.0), ("a", 190.0), ("b", 195.0)]), 200.0, LIMITS)
    assert room.expired == () and room.evicted == () and room.retry_after_ms == 50_000


def test_lru_is_read_only_as_far_as_needed():
    """The LRU iterator is consumed lazily: a backend may stream it from an index."""
    lru = iter([("a", 100.0), ("b", 150.0), ("c", 155.0)])
    make_room(2, lru, 170.0, LIMITS)
    assert next(lru) == ("b", 150.0)


def test_a_cap_of_zero_always_refuses():
    """max_sessions 0 refuses every new session instead of looping or crashing."""
    limits = SessionLimits(ttl_s=100.0, max_turns=5, max_sessions=0, protect_s=60.0)
    assert make_room(0, iter([]), 10.0, limits).retry_after_ms == 60_000


def test_sessions_full_carries_the_retry_hint():
    """The refusal is RESOURCE_EXHAUSTED with retry_after_ms in its metadata, as a string."""
    error = sessions_full(LIMITS, Room(retry_after_ms=1500))
    assert error.kind is ErrorKind.RESOURCE_EXHAUSTED
    assert error.metadata == {"retry_after_ms": "1500"}
    assert "2 sessions" in error.message


def _entries(*sizes: int) -> list[tuple[bytes, bytes, float]]:
    return [(b"k%d" % n, b"v" * (size - 2), 1.0) for n, size in enumerate(sizes)]


def test_pick_top_keeps_hit_order_up_to_the_limit():
    """The first `limit` entries come back in the order given."""
    entries = _entries(10, 10, 10)
    assert pick_top(entries, 2, 1000) == entries[:2]


def test_pick_top_skips_what_does_not_fit():
    """An entry bigger than what is left is skipped; later smaller ones still come."""
    entries = _entries(10, 100, 10)
    assert pick_top(entries, 10, 20) == [entries[0], entries[2]]


def test_pick_top_fills_the_budget_exactly():
    """Entries that fill max_bytes exactly all come back."""
    entries = _entries(10, 10)
    assert pick_top(entries, 10, 20) == entries
    assert sum(entry_bytes(k, v) for k, v, _ in entries) == 20


def test_pick_top_with_no_room_returns_nothing():
    """A limit or byte budget of zero warms nothing."""
    assert pick_top(_entries(10), 0, 1000) == []
    assert pick_top(_entries(10), 5, 0) == []


def test_programs_full_names_the_bound():
    """A version past max_programs is RESOURCE_EXHAUSTED and says what the bound is."""
    error = programs_full(7)
    assert error.kind is ErrorKind.RESOURCE_EXHAUSTED and "7 program versions" in error.message
