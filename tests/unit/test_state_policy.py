"""The state backends' shared decisions: session expiry, the session cap, cache warming."""

from __future__ import annotations

import dataclasses

from dspy_pool.errors import ErrorKind
from dspy_pool.state import policy
from dspy_pool.state.base import ExampleRecord, JobRecord, SessionLimits
from dspy_pool.state.policy import (
    EMPTY_HEAD, Room, can_claim, chain_examples, dataset_hash, entry_bytes, examples_fit, examples_full, is_expired,
    make_room, newest_first, open_needless, open_touch_slack_s, open_touches, pick_top, programs_full, sessions_full, trim_from,
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


def test_open_touches_a_session_not_used_within_the_slack():
    """An open writes last_used_at only when the last use is at least the slack (a second) ago."""
    limits = SessionLimits(ttl_s=3600.0, max_turns=5, max_sessions=2, protect_s=60.0)
    assert open_touch_slack_s(limits) == 1.0
    assert not open_touches(100.0, 100.5, limits)
    assert open_touches(100.0, 101.0, limits)


def test_touch_slack_is_a_tenth_of_small_limits():
    """Small TTLs or protect_s shrink the slack to a tenth of them, so an open can never skip the touch of a session
    about to expire or become evictable; protect_s 0 always touches."""
    assert open_touch_slack_s(SessionLimits(ttl_s=5.0, max_turns=5, max_sessions=2, protect_s=60.0)) == 0.5
    assert open_touch_slack_s(SessionLimits(ttl_s=100.0, max_turns=5, max_sessions=2, protect_s=2.0)) == 0.2
    never = SessionLimits(ttl_s=100.0, max_turns=5, max_sessions=2, protect_s=0.0)
    assert open_touches(100.0, 100.0, never)


def test_an_open_is_needless_only_within_the_slack_of_this_fronts_own_commit():
    """A session this front appended to within the slack needs no open; never appended, or longer ago, does."""
    limits = SessionLimits(ttl_s=3600.0, max_turns=5, max_sessions=2, protect_s=60.0)
    assert open_needless(100.0, 100.5, limits)
    assert not open_needless(100.0, 101.0, limits)
    assert not open_needless(0.0, 0.5, limits)
    assert not open_needless(100.0, 100.0, SessionLimits(ttl_s=100.0, max_turns=5, max_sessions=2, protect_s=0.0))


def _example(n: int, **changes) -> ExampleRecord:
    return dataclasses.replace(ExampleRecord(f'{{"q": {n}}}', f'{{"a": {n}}}'), **changes)


def test_chain_appends_equal_one_pass():
    """A split's head is the same whether its examples came in one batch or several."""
    examples = [_example(n) for n in range(5)]
    assert chain_examples(chain_examples(EMPTY_HEAD, examples[:2]), examples[2:]) == chain_examples(EMPTY_HEAD, examples)
    assert chain_examples(EMPTY_HEAD, []) == EMPTY_HEAD


def test_chain_covers_inputs_outputs_and_order_only():
    """Source and time do not change the head; order, inputs and outputs do."""
    head = chain_examples(EMPTY_HEAD, [_example(1), _example(2)])
    assert chain_examples(EMPTY_HEAD, [_example(1, source="feedback", created_at=9.0), _example(2)]) == head
    assert chain_examples(EMPTY_HEAD, [_example(2), _example(1)]) != head
    assert chain_examples(EMPTY_HEAD, [_example(1, outputs_json='{"a": 0}'), _example(2)]) != head
    # The encoding is unambiguous: moving text between inputs and outputs is a different example.
    assert chain_examples(EMPTY_HEAD, [ExampleRecord('{"q": 1', '}')]) != chain_examples(EMPTY_HEAD, [ExampleRecord('{"q": ', '1}')])


def test_dataset_hash_sorts_splits_and_ignores_empty_ones():
    """The dataset hash does not depend on the order splits are listed in, nor on splits with no examples."""
    train, dev = ("train", 2, "aa"), ("dev", 1, "bb")
    assert dataset_hash([train, dev]) == dataset_hash([dev, train]) == dataset_hash([dev, ("x", 0, ""), train])
    assert dataset_hash([train, dev]) != dataset_hash([train, ("test", 1, "bb")])
    assert len(dataset_hash([])) == 64


def test_examples_fit_the_whole_dataset():
    """max_examples bounds the dataset; adding none always fits, even past a lowered bound."""
    assert examples_fit(8, 2, 10) and not examples_fit(8, 3, 10) and examples_fit(12, 0, 10)
    error = examples_full("ds", 8, 3, 10)
    assert error.kind is ErrorKind.RESOURCE_EXHAUSTED and "'ds'" in error.message and "10" in error.message


def test_a_lease_is_held_while_now_is_before_its_expiry():
    """Free, expired or already the claimant's: granted; another owner's live lease: refused."""
    assert can_claim("", 200.0, "a", 100.0)
    assert can_claim("a", 200.0, "a", 100.0)
    assert not can_claim("b", 200.0, "a", 199.9)
    assert can_claim("b", 200.0, "a", 200.0)


def test_newest_first_orders_by_time_then_id():
    """Jobs sort by created_at, then job_id, both descending."""
    jobs = [JobRecord(i, "", "p", "queued", 0, at, at) for i, at in [("a", 1.0), ("c", 2.0), ("b", 2.0)]]
    assert [j.job_id for j in sorted(jobs, key=newest_first, reverse=True)] == ["c", "b", "a"]


def test_the_newest_turns_that_fit_are_kept_and_the_newest_always():
    from dspy_pool.state.policy import first_kept_by_size

    assert first_kept_by_size([3, 3, 3, 3], 10) == 1  # the last three fit
    assert first_kept_by_size([3, 3, 3, 3], 100) == 0
    assert first_kept_by_size([3, 3, 50], 10) == 2  # the newest alone, though it is over
    assert first_kept_by_size([3, 3, 3], 0) == 0  # no bound
    assert first_kept_by_size([], 10) == 0
    assert first_kept_by_size([3, 3, 50], 10, keep_newest=False) == 3  # what a program is sent: not even the newest


# -- giving a file's free pages back ------------------------------------------------------------------------------------


def test_few_free_pages_are_kept_for_the_file_to_grow_into():
    assert policy.pages_to_release(page_count=100_000, free_pages=policy.RELEASE_MIN_FREE_PAGES - 1) == 0


def test_under_a_quarter_of_the_file_free_is_kept():
    """A file whose sessions shrink and grow again is not cut and regrown every sweep."""
    assert policy.pages_to_release(page_count=100_000, free_pages=24_999) == 0
    assert policy.pages_to_release(page_count=100_000, free_pages=25_000) == policy.RELEASE_MAX_PAGES


def test_free_pages_are_given_back_a_bounded_amount_at_a_time():
    assert policy.pages_to_release(page_count=3_000, free_pages=2_000) == 2_000
    assert policy.pages_to_release(page_count=100_000, free_pages=90_000) == policy.RELEASE_MAX_PAGES
