"""The front's sessions over a state store: open, record, get, close, and what a client is told when history is gone.

The cap, TTL and trimming policies themselves are the store's (the backend
contract tests in tests/integration/state_contract.py cover them for every backend).
"""

from __future__ import annotations

import pytest

from dspy_pool.errors import InvalidArgument, NotFound, ResourceExhausted
from dspy_pool.server.sessions import SessionStore, check_session_id, turn_record
from dspy_pool.state import SessionLimits
from dspy_pool.state.memory import MemoryStore


def sessions(max_sessions: int = 10, ttl_s: float = 60.0, max_turns: int = 3, protect_s: float = 0.0) -> SessionStore:
    return SessionStore(MemoryStore(), SessionLimits(ttl_s=ttl_s, max_turns=max_turns, max_sessions=max_sessions, protect_s=protect_s))


async def test_first_open_starts_an_empty_session_and_later_opens_see_its_turns():
    """open() of a new id is started with no history; after a recorded turn the next open sees it as history."""
    store = sessions()
    first = await store.open("s1", now=100.0)
    assert (first.started, first.lost, first.record.turns) == (True, "", ())
    await store.record_turn("s1", turn_record("qa", {"q": 1}, {"a": 2}), now=101.0)
    again = await store.open("s1", now=102.0)
    assert again.started is False
    assert again.history_messages(1 << 20) == [{"q": 1, "a": 2}]


async def test_turns_are_trimmed_to_max_turns():
    """Only the last max_turns turns are kept."""
    store = sessions(max_turns=2)
    await store.open("s1", now=0.0)
    for number in range(4):
        await store.record_turn("s1", turn_record("qa", {"q": number}, {"a": number}), now=float(number))
    record = await store.get("s1", now=5.0)
    assert [turn.inputs_json for turn in record.turns] == ['{"q": 2}', '{"q": 3}']


async def test_get_of_an_unknown_or_expired_session_is_not_found():
    """get() of an id never used, or idle past the TTL, raises NotFound."""
    store = sessions(ttl_s=60.0)
    with pytest.raises(NotFound):
        await store.get("nope", now=0.0)
    await store.open("s1", now=0.0)
    await store.record_turn("s1", turn_record("qa", {}, {}), now=0.0)
    with pytest.raises(NotFound):
        await store.get("s1", now=61.0)


async def test_at_the_cap_active_sessions_stay_and_a_new_one_is_refused_and_counted():
    """Sessions used within protect_s are never evicted: opening another is RESOURCE_EXHAUSTED, counted as refused."""
    store = sessions(max_sessions=2, ttl_s=3600.0, protect_s=60.0)
    await store.open("a", now=0.0)
    await store.open("b", now=10.0)
    with pytest.raises(ResourceExhausted) as caught:
        await store.open("flood", now=30.0)
    assert int(caught.value.metadata["retry_after_ms"]) > 0
    assert (store.refused, store.evicted) == (1, 0)
    assert (await store.open("a", now=31.0)).started is False


async def test_an_evicted_session_reopened_says_evicted():
    """Past protect_s the least recently used session goes; reopening its id says lost='evicted' once."""
    store = sessions(max_sessions=2, ttl_s=3600.0, protect_s=60.0)
    await store.open("a", now=0.0)
    await store.open("b", now=100.0)
    await store.open("c", now=100.0)  # a idle 100 s > 60 s: evicted
    assert store.evicted == 1
    with pytest.raises(NotFound, match="evicted"):
        await store.get("a", now=100.0)
    await store.close("b")
    reopened = await store.open("a", now=101.0)
    assert (reopened.started, reopened.lost) == (True, "evicted")
    assert (await store.open("a", now=102.0)).lost == ""


async def test_an_expired_session_swept_then_reopened_says_expired():
    """sweep() removes expired sessions; reopening one says lost='expired'."""
    store = sessions(ttl_s=10.0)
    await store.open("a", now=0.0)
    assert await store.sweep(now=20.0) == 1
    assert (await store.open("a", now=21.0)).lost == "expired"
    assert (await store.open("fresh", now=21.0)).lost == ""


async def test_close_returns_the_turns_and_forgets_the_session():
    """close() returns what the session held; a second close is NotFound."""
    store = sessions()
    await store.open("s1", now=0.0)
    await store.record_turn("s1", turn_record("qa", {"q": 1}, {"a": 1}), now=0.0)
    assert len((await store.close("s1")).turns) == 1
    with pytest.raises(NotFound):
        await store.close("s1")


@pytest.mark.parametrize("session_id", ["", "x" * 129, "has space", "slash/id"])
def test_bad_session_ids_rejected(session_id):
    """Ids outside [A-Za-z0-9_.:-]{1,128} are INVALID_ARGUMENT."""
    with pytest.raises(InvalidArgument):
        check_session_id(session_id)


class CountingStore(MemoryStore):
    """A MemoryStore that counts open_session calls (the round trip a busy session's call may skip)."""

    def __init__(self) -> None:
        super().__init__()
        self.opens = 0

    async def open_session(self, *args, **kwargs):
        self.opens += 1
        return await super().open_session(*args, **kwargs)


def counted(**limits) -> tuple[SessionStore, CountingStore]:
    store = CountingStore()
    defaults = {"ttl_s": 60.0, "max_turns": 3, "max_sessions": 10, "protect_s": 30.0}
    return SessionStore(store, SessionLimits(**{**defaults, **limits})), store


async def test_an_open_without_history_right_after_this_fronts_append_skips_the_store():
    """Within the open slack of this front's last append, open(with_turns=False) reads nothing; the turn still lands."""
    sessions_, store = counted()
    await sessions_.open("s1", now=100.0, with_turns=False)
    await sessions_.record_turn("s1", turn_record("qa", {"q": 1}, {"a": 1}), now=100.0)
    again = await sessions_.open("s1", now=100.5, with_turns=False)
    assert (again.started, again.lost, again.record.created_at, store.opens) == (False, "", 100.0, 1)
    await sessions_.record_turn("s1", turn_record("qa", {"q": 2}, {"a": 2}), now=100.5)
    assert len((await sessions_.get("s1", now=101.0)).turns) == 2


async def test_an_open_that_wants_history_or_comes_after_the_slack_asks_the_store():
    """History is always read from the store (other fronts append too), and so is a session idle past the slack."""
    sessions_, store = counted()
    await sessions_.open("s1", now=100.0, with_turns=False)
    await sessions_.record_turn("s1", turn_record("qa", {"q": 1}, {"a": 1}), now=100.0)
    assert (await sessions_.open("s1", now=100.5)).history_messages(1 << 20) == [{"q": 1, "a": 1}]
    await sessions_.open("s1", now=102.0, with_turns=False)
    assert store.opens == 3


async def test_a_session_closed_elsewhere_is_started_again_by_the_append():
    """Closed by another front after this one's append: the skipped open's call still keeps its turn, in a new session."""
    sessions_, store = counted()
    await sessions_.open("s1", now=100.0, with_turns=False)
    await sessions_.record_turn("s1", turn_record("qa", {"q": 1}, {"a": 1}), now=100.0)
    await store.delete_session("s1")  # another front's CloseSession, straight on the shared store
    await sessions_.open("s1", now=100.2, with_turns=False)
    await sessions_.record_turn("s1", turn_record("qa", {"q": 2}, {"a": 2}), now=100.2)
    record = await sessions_.get("s1", now=100.3)
    assert (record.created_at, [t.inputs_json for t in record.turns]) == (100.2, ['{"q": 2}'])


async def test_a_session_this_front_closed_is_opened_from_the_store():
    """After close(), the next open asks the store and says started, even within the slack."""
    sessions_, store = counted()
    await sessions_.open("s1", now=100.0, with_turns=False)
    await sessions_.record_turn("s1", turn_record("qa", {"q": 1}, {"a": 1}), now=100.0)
    await sessions_.close("s1")
    assert (await sessions_.open("s1", now=100.1, with_turns=False)).started is True
    assert store.opens == 2


def test_newest_turns_keeps_the_latest_that_fit_in_order():
    from dspy_pool.server.sessions import newest_turns
    from dspy_pool.state import TurnRecord

    turns = [TurnRecord("p", '{"q": "' + "x" * size + '"}', "{}") for size in (10, 20, 30)]  # 21, 31, 41 bytes
    assert newest_turns(turns, 1000) == turns
    assert newest_turns(turns, 72) == turns[1:] and newest_turns(turns, 71) == turns[2:]
    assert list(newest_turns(turns, 40)) == []
    assert newest_turns([TurnRecord("p", '{"q": "é"}', "{}")], 12) == []  # 13 bytes, 12 characters
