"""Session store with a fake clock: creation, TTL, turns, LRU eviction, ids."""

from __future__ import annotations

import pytest

from dspy_pool.errors import InvalidArgument, NotFound, ResourceExhausted
from dspy_pool.server.sessions import SessionStore, Turn, check_session_id


def store(max_sessions: int = 10, ttl_s: float = 60.0, max_turns: int = 3, protect_s: float = 0.0) -> SessionStore:
    return SessionStore(max_sessions=max_sessions, ttl_s=ttl_s, max_turns=max_turns, protect_s=protect_s)


def test_created_on_first_use():
    """get_or_create makes a new empty session stamped with now."""
    s = store()
    session = s.get_or_create("s1", now=100.0)
    assert (session.session_id, session.created_at, session.last_used_at) == ("s1", 100.0, 100.0)
    assert list(session.turns) == []
    assert len(s) == 1


def test_second_use_returns_same_session_and_touches_it():
    """A later get_or_create returns the same session and updates last_used_at."""
    s = store()
    first = s.get_or_create("s1", now=100.0)
    again = s.get_or_create("s1", now=130.0)
    assert again is first
    assert again.last_used_at == 130.0


def test_get_unknown_not_found():
    """get() of a session never used raises NotFound."""
    with pytest.raises(NotFound):
        store().get("s1", now=0.0)


def test_ttl_expiry_on_get():
    """A session idle longer than ttl_s is gone for get()."""
    s = store(ttl_s=60.0)
    s.get_or_create("s1", now=0.0)
    assert s.get("s1", now=60.0).session_id == "s1"  # exactly ttl is still alive
    with pytest.raises(NotFound):
        s.get("s1", now=60.5)
    assert len(s) == 0


def test_expired_session_is_recreated_empty():
    """get_or_create after expiry starts a fresh session without the old turns."""
    s = store(ttl_s=60.0)
    old = s.get_or_create("s1", now=0.0)
    old.turns.append(Turn("qa", {"q": 1}, {"a": 2}))
    new = s.get_or_create("s1", now=100.0)
    assert new is not old
    assert list(new.turns) == []
    assert new.created_at == 100.0


def test_max_turns_keeps_last_n():
    """Only the last max_turns turns are kept."""
    session = store(max_turns=2).get_or_create("s1", now=0.0)
    for i in range(4):
        session.turns.append(Turn("qa", {"q": i}, {"a": i}))
    assert [t.inputs["q"] for t in session.turns] == [2, 3]


def test_max_sessions_evicts_least_recently_used():
    """When full, the least recently used session is evicted, not the oldest created."""
    s = store(max_sessions=2)
    s.get_or_create("a", now=0.0)
    s.get_or_create("b", now=1.0)
    s.get_or_create("a", now=2.0)  # a is now the most recent
    s.get_or_create("c", now=3.0)
    assert len(s) == 2
    assert s.evicted == 1
    with pytest.raises(NotFound):
        s.get("b", now=3.0)
    assert s.get("a", now=3.0).session_id == "a"


def test_close_removes_session():
    """close() returns the session and it is gone afterwards."""
    s = store()
    s.get_or_create("s1", now=0.0)
    assert s.close("s1").session_id == "s1"
    with pytest.raises(NotFound):
        s.get("s1", now=0.0)


def test_close_unknown_not_found():
    """close() of an unknown session raises NotFound."""
    with pytest.raises(NotFound, match="no session 'nope'"):
        store().close("nope")


@pytest.mark.parametrize("session_id", ["", "x" * 129, "has space", "tab\there", "slash/id"])
def test_bad_session_ids_rejected(session_id):
    """Empty, too long, or ids with spaces or other characters are InvalidArgument."""
    with pytest.raises(InvalidArgument, match="session_id must match"):
        store().get_or_create(session_id, now=0.0)


def test_good_session_ids_accepted():
    """Ids up to 128 characters from [A-Za-z0-9_.:-] are accepted."""
    for session_id in ["a", "x" * 128, "user:42.chat-1_b"]:
        check_session_id(session_id)


def test_session_id_with_trailing_newline_rejected():
    """An id ending in a newline is rejected."""
    with pytest.raises(InvalidArgument):
        check_session_id("s1\n")


def test_sweep_removes_only_expired():
    """sweep() drops expired sessions, keeps live ones, and returns the count."""
    s = store(ttl_s=10.0)
    s.get_or_create("old1", now=0.0)
    s.get_or_create("old2", now=1.0)
    s.get_or_create("fresh", now=8.0)
    assert s.sweep(now=15.0) == 2
    assert len(s) == 1
    assert s.get("fresh", now=15.0).session_id == "fresh"


def test_history_messages_merge_inputs_and_outputs():
    """history_messages gives one dict per turn with inputs and outputs merged, oldest first."""
    session = store().get_or_create("s1", now=0.0)
    session.turns.append(Turn("qa", {"question": "hi"}, {"answer": "hello"}))
    session.turns.append(Turn("qa", {"question": "2+2?"}, {"answer": "4"}))
    assert session.history_messages() == [
        {"question": "hi", "answer": "hello"},
        {"question": "2+2?", "answer": "4"},
    ]


def test_active_sessions_are_never_evicted_new_ones_refused():
    """At the cap, sessions used within protect_s stay; opening another is RESOURCE_EXHAUSTED with a retry hint."""
    s = store(max_sessions=2, ttl_s=3600.0, protect_s=60.0)
    s.get_or_create("a", now=0.0)
    s.get_or_create("b", now=10.0)
    with pytest.raises(ResourceExhausted) as caught:
        s.get_or_create("flood-1", now=30.0)
    assert int(caught.value.metadata["retry_after_ms"]) == 30_000  # a becomes evictable at 60 s
    assert (s.get("a", now=30.0).session_id, s.get("b", now=30.0).session_id) == ("a", "b")
    assert (s.evicted, s.refused) == (0, 1)


def test_idle_session_past_protection_is_evicted_and_its_id_says_so():
    """Past protect_s the LRU session goes; reopening its id yields a new session marked lost='evicted'."""
    s = store(max_sessions=2, ttl_s=3600.0, protect_s=60.0)
    s.get_or_create("a", now=0.0).turns.append(Turn("qa", {"q": 1}, {"a": 1}))
    s.get_or_create("b", now=100.0)
    s.get_or_create("c", now=100.0)  # a idle 100 s > 60 s: evicted
    with pytest.raises(NotFound, match="evicted"):
        s.get("a", now=100.0)
    s.close("b")
    reopened = s.get_or_create("a", now=101.0)
    assert (reopened.lost, list(reopened.turns), reopened.fresh) == ("evicted", [], True)


def test_expired_session_reopened_says_expired():
    """A session swept after its TTL, reopened by id, reports lost='expired'."""
    s = store(ttl_s=10.0)
    s.get_or_create("a", now=0.0)
    assert s.sweep(now=20.0) == 1
    assert s.get_or_create("a", now=21.0).lost == "expired"
    assert s.get_or_create("fresh-id", now=21.0).lost == ""


def test_a_session_in_flight_is_not_evicted():
    """A session with a call in flight is active however long it has been idle."""
    s = store(max_sessions=1, ttl_s=3600.0, protect_s=1.0)
    s.get_or_create("a", now=0.0).in_flight = 1
    with pytest.raises(ResourceExhausted):
        s.get_or_create("b", now=100.0)
