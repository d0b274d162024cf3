"""The contract every StateStore backend keeps, written once.

A backend's test module provides a function-scoped, opened `store` fixture
and imports these: `from .state_contract import *  # noqa: F403`.

Only the StateStore interface is used here, and time is always passed in as
`now` (no sleeps, no clock reads). Times sit near T0, far in the future, so a
backend that also sets native expiries from them (Redis PEXPIREAT) never sees
them fire on its own during a test: the store's comparison with `now` decides.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json

import pytest

from dspy_pool.errors import ResourceExhausted
from dspy_pool.state import NewProgram, SessionLimits, StatsCount, TurnRecord
from dspy_pool.state.base import ExampleRecord, JobRecord

T0 = 4_000_000_000.0  # the year 2096
LIMITS = SessionLimits(ttl_s=100.0, max_turns=50, max_sessions=10, protect_s=60.0)
MAX_PROGRAMS = 100


def _program(name: str = "qa", content: str = "v", created_at: float = T0) -> NewProgram:
    spec = f"{name}:{content}".encode()
    return NewProgram(name=name, spec=spec, content_hash=hashlib.sha256(spec).hexdigest(), input_names=("question",),
                      output_names=("answer", "reason"), takes_history=True, created_at=created_at)


def _turn(n: int) -> TurnRecord:
    return TurnRecord("qa", json.dumps({"question": f"q{n}"}), json.dumps({"answer": f"a{n}"}))


def _limits(**changes: float) -> SessionLimits:
    return dataclasses.replace(LIMITS, **changes)


# -- programs ----------------------------------------------------------------------------------------------------------

async def test_versions_are_assigned_one_two_three(store):
    """Each new content of a name gets the next version, starting at 1."""
    versions = [(await store.add_program(_program(content=c), MAX_PROGRAMS)).record.version for c in "abc"]
    assert versions == [1, 2, 3]


async def test_added_program_is_stored_as_given(store):
    """A version round-trips every field it was added with."""
    new = _program(created_at=T0 + 5)
    added = await store.add_program(new, MAX_PROGRAMS)
    [listed] = await store.list_programs()
    assert added.created and listed == added.record
    assert (listed.name, listed.spec, listed.content_hash) == (new.name, new.spec, new.content_hash)
    assert (listed.input_names, listed.output_names) == (("question",), ("answer", "reason"))
    assert listed.takes_history is True and listed.created_at == T0 + 5


async def test_identical_content_returns_the_existing_version(store):
    """Adding the latest version's content again returns that version with created=False."""
    first = await store.add_program(_program(content="a"), MAX_PROGRAMS)
    again = await store.add_program(_program(content="a", created_at=T0 + 1), MAX_PROGRAMS)
    assert again.created is False and again.record == first.record
    assert len(await store.list_programs()) == 1


async def test_content_of_an_older_version_is_a_new_version(store):
    """Idempotence compares with the latest version only: going back to older content adds a version."""
    await store.add_program(_program(content="a"), MAX_PROGRAMS)
    await store.add_program(_program(content="b"), MAX_PROGRAMS)
    back = await store.add_program(_program(content="a"), MAX_PROGRAMS)
    assert back.created and back.record.version == 3


async def test_a_clients_content_again_after_an_optimization_returns_the_clients_version(store):
    """An optimization's versions since do not count: the client's latest version with the same content comes back
    unchanged (a programs file read at every start made a new version after each optimization); an optimization's
    result is compared with the latest version."""
    first = await store.add_program(_program(content="a"), MAX_PROGRAMS)
    optimized = dataclasses.replace(_program(content="a-optimized"), meta=b"job-1")
    assert (await store.add_program(optimized, MAX_PROGRAMS)).record.version == 2
    again = await store.add_program(_program(content="a", created_at=T0 + 1), MAX_PROGRAMS)
    assert again.created is False and again.record == first.record
    same_result = await store.add_program(dataclasses.replace(optimized, created_at=T0 + 2), MAX_PROGRAMS)
    assert same_result.created is False and same_result.record.version == 2
    assert len(await store.list_programs()) == 2


async def test_versions_are_counted_per_name(store):
    """Two names each start at version 1."""
    a = await store.add_program(_program("a"), MAX_PROGRAMS)
    b = await store.add_program(_program("b"), MAX_PROGRAMS)
    assert (a.record.version, b.record.version) == (1, 1)


async def test_versions_are_never_reused_after_delete(store):
    """Deleting the latest version, or all of them, never frees a number."""
    for content in "ab":
        await store.add_program(_program(content=content), MAX_PROGRAMS)
    assert await store.delete_programs("qa", 2) == [2]
    assert (await store.add_program(_program(content="c"), MAX_PROGRAMS)).record.version == 3
    assert await store.delete_programs("qa") == [1, 3]
    assert (await store.add_program(_program(content="a"), MAX_PROGRAMS)).record.version == 4


async def test_delete_one_version(store):
    """Deleting one version leaves the others."""
    for content in "abc":
        await store.add_program(_program(content=content), MAX_PROGRAMS)
    assert await store.delete_programs("qa", 2) == [2]
    assert [p.version for p in await store.list_programs()] == [1, 3]


async def test_delete_all_versions(store):
    """Version 0 deletes every version of the name, and only that name."""
    for content in "ab":
        await store.add_program(_program(content=content), MAX_PROGRAMS)
    await store.add_program(_program("other"), MAX_PROGRAMS)
    assert await store.delete_programs("qa", 0) == [1, 2]
    assert [(p.name, p.version) for p in await store.list_programs()] == [("other", 1)]


async def test_delete_of_nothing_returns_nothing(store):
    """Deleting an unknown name or version returns []."""
    await store.add_program(_program(), MAX_PROGRAMS)
    assert await store.delete_programs("missing") == []
    assert await store.delete_programs("qa", 7) == []


async def test_list_orders_by_name_then_version(store):
    """list_programs sorts by name, then version."""
    for name, content in [("b", "1"), ("a", "1"), ("b", "2"), ("a", "2")]:
        await store.add_program(_program(name, content), MAX_PROGRAMS)
    assert [(p.name, p.version) for p in await store.list_programs()] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]


async def test_revision_moves_on_add_and_delete(store):
    """Every add and every delete increases program_revision."""
    seen = [await store.program_revision()]
    await store.add_program(_program(content="a"), MAX_PROGRAMS)
    seen.append(await store.program_revision())
    await store.add_program(_program(content="b"), MAX_PROGRAMS)
    seen.append(await store.program_revision())
    await store.delete_programs("qa", 1)
    seen.append(await store.program_revision())
    await store.delete_programs("qa")
    seen.append(await store.program_revision())
    assert seen == sorted(set(seen))


async def test_revision_stays_when_nothing_changes(store):
    """An add that returns the existing version, or a delete of nothing, leaves the revision."""
    await store.add_program(_program(), MAX_PROGRAMS)
    before = await store.program_revision()
    await store.add_program(_program(), MAX_PROGRAMS)
    await store.delete_programs("missing")
    assert await store.program_revision() == before


async def test_revision_reads_a_lasting_epoch_with_the_program_revision(store):
    """revision() is the store's epoch (set, and the same on every read) and program_revision, read together."""
    first = await store.revision()
    await store.add_program(_program(), MAX_PROGRAMS)
    second = await store.revision()
    assert first.epoch and second.epoch == first.epoch
    assert second.programs > first.programs and second.programs == await store.program_revision()


async def test_max_programs_refuses_a_new_version(store):
    """At max_programs versions in all, adding another raises ResourceExhausted and stores nothing."""
    await store.add_program(_program("a"), 2)
    await store.add_program(_program("b"), 2)
    with pytest.raises(ResourceExhausted):
        await store.add_program(_program("c"), 2)
    assert [p.name for p in await store.list_programs()] == ["a", "b"]


async def test_max_programs_still_returns_the_existing_version(store):
    """At the bound, re-adding the latest content is not refused: nothing new is stored."""
    await store.add_program(_program("a"), 1)
    again = await store.add_program(_program("a"), 1)
    assert again.created is False


async def test_meta_round_trips(store):
    """A version's meta bytes come back as given, from add_program and list_programs; none is b""."""
    meta = bytes(range(256))  # every byte value, NUL included
    added = await store.add_program(dataclasses.replace(_program("a"), meta=meta), MAX_PROGRAMS)
    plain = await store.add_program(_program("b"), MAX_PROGRAMS)
    assert added.record.meta == meta and plain.record.meta == b""
    assert [p.meta for p in await store.list_programs()] == [meta, b""]
    again = await store.add_program(dataclasses.replace(_program("a"), meta=b"other"), MAX_PROGRAMS)
    assert again.created is False and again.record.meta == meta  # the existing version, as stored


async def test_max_programs_counts_after_delete(store):
    """A deleted version frees its place under max_programs."""
    await store.add_program(_program("a"), 1)
    await store.delete_programs("a")
    assert (await store.add_program(_program("b"), 1)).created


# -- sessions ----------------------------------------------------------------------------------------------------------

async def test_unknown_session_is_none(store):
    """A session id never used has no session."""
    assert await store.get_session("nobody", T0, LIMITS) is None


async def test_first_append_starts_the_session(store):
    """The first append creates the session (started=True) holding that turn."""
    result = await store.append_turn("s1", _turn(1), T0, LIMITS, with_turns=True)
    assert result.started and result.evicted == ()
    assert result.session.session_id == "s1"
    assert (result.session.created_at, result.session.last_used_at) == (T0, T0)
    assert result.session.turns == (_turn(1),)


async def test_later_appends_continue_the_session(store):
    """Appending to a live session keeps earlier turns, in order, with started=False."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    result = await store.append_turn("s1", _turn(2), T0 + 1, LIMITS, with_turns=True)
    assert not result.started
    assert result.session.turns == (_turn(1), _turn(2))
    assert await store.get_session("s1", T0 + 1, LIMITS) == result.session


async def test_append_trims_to_max_turns(store):
    """Only the last max_turns turns are kept, oldest dropped first."""
    limits = _limits(max_turns=3)
    for n in range(5):
        result = await store.append_turn("s1", _turn(n), T0 + n, limits, with_turns=True)
    assert result.session.turns == (_turn(2), _turn(3), _turn(4))
    assert (await store.get_session("s1", T0 + 5, limits)).turns == result.session.turns


async def test_append_touches_the_session(store):
    """An append sets last_used_at to its `now` and keeps created_at."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    result = await store.append_turn("s1", _turn(2), T0 + 40, LIMITS)
    assert (result.session.created_at, result.session.last_used_at) == (T0, T0 + 40)


async def test_get_does_not_touch_the_session(store):
    """Reading a session leaves last_used_at, so reads alone do not keep it alive."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    assert (await store.get_session("s1", T0 + 90, LIMITS)).last_used_at == T0
    assert await store.get_session("s1", T0 + 101, LIMITS) is None


async def test_open_session_starts_an_empty_session(store):
    """open_session on a new id creates it with no turns (started=True)."""
    result = await store.open_session("s1", T0, LIMITS)
    assert result.started and result.session.turns == ()
    assert await store.count_sessions() == 1
    assert (await store.get_session("s1", T0, LIMITS)).turns == ()


async def test_open_session_touches_and_returns_the_history(store):
    """open_session on a live session touches it and returns its turns (started=False)."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    result = await store.open_session("s1", T0 + 30, LIMITS)
    assert not result.started
    assert result.session.turns == (_turn(1),) and result.session.last_used_at == T0 + 30
    assert (await store.get_session("s1", T0 + 30, LIMITS)).last_used_at == T0 + 30


async def test_append_returns_no_turns_by_default(store):
    """append_turn answers without the session's turns unless asked: the hot path only needs started/evicted."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    result = await store.append_turn("s1", _turn(2), T0 + 1, LIMITS)
    assert not result.started and result.session.turns == ()
    assert (result.session.created_at, result.session.last_used_at) == (T0, T0 + 1)
    assert (await store.get_session("s1", T0 + 1, LIMITS)).turns == (_turn(1), _turn(2))


async def test_open_session_without_turns_reads_none(store):
    """open_session(with_turns=False) returns the live session without its history, and keeps the history."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    result = await store.open_session("s1", T0 + 30, LIMITS, with_turns=False)
    assert not result.started and result.session.turns == ()
    assert (result.session.created_at, result.session.last_used_at) == (T0, T0 + 30)
    assert (await store.get_session("s1", T0 + 30, LIMITS)).turns == (_turn(1),)


async def test_open_session_without_turns_starts_and_caps_alike(store):
    """With or without turns, open_session creates a new session under the same cap."""
    limits = _limits(max_sessions=1)
    assert (await store.open_session("a", T0, limits, with_turns=False)).started
    with pytest.raises(ResourceExhausted):
        await store.open_session("b", T0 + 1, limits, with_turns=False)
    result = await store.open_session("b", T0 + 60, limits, with_turns=False)
    assert result.started and result.evicted == ("a",)


async def test_open_right_after_a_use_leaves_the_touch_to_the_append(store):
    """An open within a moment (policy.open_touches) of the last use does not write; the append then touches."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    for with_turns in (False, True):
        opened = await store.open_session("s1", T0 + 0.25, LIMITS, with_turns=with_turns)
        assert not opened.started and opened.session.last_used_at == T0
    assert (await store.open_session("s1", T0 + 0.25, LIMITS)).session.turns == (_turn(1),)
    assert (await store.get_session("s1", T0 + 0.25, LIMITS)).last_used_at == T0
    appended = await store.append_turn("s1", _turn(2), T0 + 0.5, LIMITS)
    assert appended.session.last_used_at == T0 + 0.5
    # The TTL counts from the append: live exactly ttl_s after it, gone a moment later.
    assert (await store.get_session("s1", T0 + 100.5, LIMITS)).turns == (_turn(1), _turn(2))
    assert await store.get_session("s1", T0 + 100.75, LIMITS) is None


async def test_session_idle_exactly_its_ttl_is_live(store):
    """Idle for exactly ttl_s is still live; a moment longer is expired."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    assert await store.get_session("s1", T0 + 100, LIMITS) is not None
    assert await store.get_session("s1", T0 + 100.5, LIMITS) is None


async def test_get_deletes_an_expired_session(store):
    """Reading an expired session returns None and deletes it."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    assert await store.get_session("s1", T0 + 101, LIMITS) is None
    assert await store.count_sessions() == 0
    assert await store.delete_session("s1") is None


async def test_append_to_an_expired_session_starts_afresh(store):
    """An append to an expired session starts a new one without the old turns."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    result = await store.append_turn("s1", _turn(2), T0 + 101, LIMITS, with_turns=True)
    assert result.started and result.session.created_at == T0 + 101
    assert result.session.turns == (_turn(2),)


async def test_expire_sessions_deletes_the_idle_ones(store):
    """expire_sessions deletes exactly the sessions idle past the TTL and returns their ids."""
    await store.append_turn("old", _turn(1), T0, LIMITS)
    await store.append_turn("older", _turn(1), T0 - 10, LIMITS)
    await store.append_turn("fresh", _turn(1), T0 + 50, LIMITS)
    assert sorted(await store.expire_sessions(T0 + 120, LIMITS)) == ["old", "older"]
    assert await store.count_sessions() == 1
    assert await store.get_session("fresh", T0 + 120, LIMITS) is not None
    assert await store.expire_sessions(T0 + 120, LIMITS) == []


async def test_count_sessions(store):
    """count_sessions counts stored sessions, created and deleted."""
    for sid in ("a", "b", "c"):
        await store.open_session(sid, T0, LIMITS)
    await store.delete_session("b")
    assert await store.count_sessions() == 2


async def test_cap_evicts_the_least_recently_used_idle_session(store):
    """At max_sessions, a new session pushes out the least recently used one idle at least protect_s."""
    limits = _limits(max_sessions=2)
    await store.append_turn("a", _turn(1), T0, limits)
    await store.append_turn("b", _turn(1), T0 + 1, limits)
    await store.append_turn("a", _turn(2), T0 + 2, limits)  # now b is the least recently used
    result = await store.append_turn("c", _turn(1), T0 + 70, limits)
    assert result.started and result.evicted == ("b",)
    assert await store.get_session("b", T0 + 70, limits) is None
    assert await store.get_session("a", T0 + 70, limits) is not None
    assert await store.count_sessions() == 2


async def test_cap_removes_expired_sessions_before_evicting(store):
    """At max_sessions, an expired session makes room first and is not reported as evicted."""
    limits = _limits(max_sessions=2)
    await store.append_turn("old", _turn(1), T0, limits)
    await store.append_turn("idle", _turn(1), T0 + 50, limits)
    result = await store.append_turn("new", _turn(1), T0 + 120, limits)
    assert result.started and result.evicted == ()
    assert await store.get_session("idle", T0 + 120, limits) is not None
    assert await store.get_session("old", T0 + 120, limits) is None


async def test_cap_refuses_when_every_session_is_active(store):
    """At max_sessions with every session used within protect_s: ResourceExhausted, a retry hint, nothing changed."""
    limits = _limits(max_sessions=2)
    await store.append_turn("a", _turn(1), T0, limits)
    await store.append_turn("b", _turn(1), T0 + 10, limits)
    with pytest.raises(ResourceExhausted) as refused:
        await store.append_turn("c", _turn(1), T0 + 30, limits)
    assert refused.value.metadata["retry_after_ms"] == "30000"  # a becomes evictable at T0 + 60
    assert await store.count_sessions() == 2
    assert await store.get_session("c", T0 + 30, limits) is None
    assert (await store.get_session("a", T0 + 30, limits)).turns == (_turn(1),)


async def test_open_session_at_the_cap_is_refused_too(store):
    """open_session applies the same cap, before any call runs."""
    limits = _limits(max_sessions=1)
    await store.open_session("a", T0, limits)
    with pytest.raises(ResourceExhausted) as refused:
        await store.open_session("b", T0 + 1, limits)
    assert int(refused.value.metadata["retry_after_ms"]) == 59_000


async def test_open_session_at_the_cap_evicts_an_idle_session(store):
    """open_session evicts an idle session at the cap and reports it."""
    limits = _limits(max_sessions=1)
    await store.open_session("a", T0, limits)
    result = await store.open_session("b", T0 + 60, limits)
    assert result.started and result.evicted == ("a",)


async def test_cap_does_not_stop_a_live_session(store):
    """A session already open keeps working at the cap: only creating one is refused."""
    limits = _limits(max_sessions=1)
    await store.append_turn("a", _turn(1), T0, limits)
    result = await store.append_turn("a", _turn(2), T0 + 1, limits, with_turns=True)
    assert not result.started and len(result.session.turns) == 2


async def test_delete_session_returns_what_it_held(store):
    """delete_session removes the session and returns it with its turns."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    await store.append_turn("s1", _turn(2), T0 + 1, LIMITS)
    gone = await store.delete_session("s1")
    assert (gone.session_id, gone.created_at, gone.last_used_at) == ("s1", T0, T0 + 1)
    assert gone.turns == (_turn(1), _turn(2))
    assert await store.get_session("s1", T0 + 1, LIMITS) is None
    assert await store.count_sessions() == 0


async def test_delete_unknown_session_is_none(store):
    """Deleting a session that does not exist returns None."""
    assert await store.delete_session("nobody") is None


async def test_a_deleted_session_starts_afresh(store):
    """An append after delete starts a new session with no old turns."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    await store.delete_session("s1")
    result = await store.append_turn("s1", _turn(2), T0 + 1, LIMITS, with_turns=True)
    assert result.started and result.session.turns == (_turn(2),)


async def test_concurrent_appends_to_one_session_keep_every_turn(store):
    """50 appends to one session at once all land (max_turns >= 50), exactly one of them starting it."""
    results = await asyncio.gather(*(store.append_turn("s1", _turn(n), T0 + n / 1000, LIMITS) for n in range(50)))
    assert sum(r.started for r in results) == 1
    session = await store.get_session("s1", T0 + 1, LIMITS)
    assert sorted(t.inputs_json for t in session.turns) == sorted(_turn(n).inputs_json for n in range(50))


async def test_calls_at_once_each_get_their_own_answer(store):
    """Calls made together (batched by a backend or not) each get their own result or error."""
    limits = _limits(max_sessions=1)
    await store.append_turn("a", _turn(1), T0, limits)
    await store.cache_put(b"k", b"v", T0 + 10)
    results = await asyncio.gather(
        store.open_session("b", T0 + 1, limits), store.append_turn("a", _turn(2), T0 + 2, limits, with_turns=True),
        store.cache_get(b"k", T0), store.cache_get(b"missing", T0), store.open_session("a", T0 + 3, limits),
        return_exceptions=True)
    refused, appended, hit, miss, opened = results
    assert isinstance(refused, ResourceExhausted)
    assert appended.session.turns == (_turn(1), _turn(2))
    assert (hit, miss) == (b"v", None)
    assert not opened.started and opened.session.turns == (_turn(1), _turn(2))


# -- result cache ------------------------------------------------------------------------------------------------------

async def test_cache_miss_is_none(store):
    """A key never put is a miss."""
    assert await store.cache_get(b"k" * 32, T0) is None


async def test_cache_returns_what_was_put(store):
    """A value put is returned until its expiry."""
    await store.cache_put(b"k1", b"v1", T0 + 10)
    assert await store.cache_get(b"k1", T0) == b"v1"
    assert await store.cache_get(b"k1", T0 + 9.5) == b"v1"


async def test_cache_put_replaces(store):
    """Putting a key again replaces its value and expiry."""
    await store.cache_put(b"k1", b"old", T0 + 10)
    await store.cache_put(b"k1", b"new", T0 + 20)
    assert await store.cache_get(b"k1", T0 + 15) == b"new"


async def test_cache_entry_expires_at_its_expiry(store):
    """At expires_at the entry is a miss."""
    await store.cache_put(b"k1", b"v1", T0 + 10)
    assert await store.cache_get(b"k1", T0 + 10) is None


async def test_cache_expire_keeps_live_entries(store):
    """cache_expire removes no live entry, and an expired one stays a miss."""
    await store.cache_put(b"old", b"v", T0 + 1)
    await store.cache_put(b"live", b"v", T0 + 100)
    await store.cache_expire(T0 + 50)
    assert await store.cache_get(b"old", T0 + 50) is None
    assert await store.cache_get(b"live", T0 + 50) == b"v"


async def _live_keys(store, keys: list[bytes], now: float = T0) -> list[bytes]:
    return [key for key in keys if await store.cache_get(key, now) is not None]


async def test_cache_put_keeps_the_cache_within_max_bytes_dropping_what_expires_soonest(store):
    """With max_bytes, the entries that expire soonest make room (each costs its key and value); the one just put
    stays even when it expires soonest of all. A busy program's unique inputs must not fill the disk or the Redis
    that sessions and programs need."""
    keys = [f"k{i}".encode() for i in range(8)]  # 2-byte keys, 98-byte values: 100 bytes an entry
    for i, key in enumerate(keys):
        await store.cache_put(key, b"v" * 98, T0 + 100 + i, max_bytes=500)
    assert await _live_keys(store, keys) == keys[3:]  # k0..k2 expired soonest
    await store.cache_put(b"k9", b"v" * 98, T0 + 50, max_bytes=500)  # expires soonest of all, yet stays
    assert await _live_keys(store, keys + [b"k9"]) == keys[4:] + [b"k9"]


async def test_cache_put_counts_a_replaced_entrys_new_size(store):
    """A key put again with a larger value is counted at its new size (no stale bytes, no double count)."""
    await store.cache_put(b"a1", b"v" * 98, T0 + 100, max_bytes=300)
    await store.cache_put(b"b1", b"v" * 98, T0 + 101, max_bytes=300)
    await store.cache_put(b"a1", b"v" * 198, T0 + 102, max_bytes=300)  # 200 + 100: fits exactly
    assert await _live_keys(store, [b"a1", b"b1"]) == [b"a1", b"b1"]
    await store.cache_put(b"b1", b"v" * 8, T0 + 103, max_bytes=300)  # smaller now: room for another of 90
    await store.cache_put(b"c1", b"v" * 88, T0 + 104, max_bytes=300)
    assert await _live_keys(store, [b"a1", b"b1", b"c1"]) == [b"a1", b"b1", b"c1"]


async def test_cache_put_does_not_store_an_entry_larger_than_max_bytes(store):
    """An entry that alone passes max_bytes is not stored, and pushes nothing out."""
    await store.cache_put(b"small", b"v" * 10, T0 + 100, max_bytes=100)
    await store.cache_put(b"huge", b"v" * 200, T0 + 200, max_bytes=100)
    assert await _live_keys(store, [b"small", b"huge"]) == [b"small"]


async def test_cache_entries_read_as_expired_free_their_bytes(store):
    """An entry dropped because it expired (read after its expiry, or swept) no longer counts against max_bytes."""
    await store.cache_put(b"old", b"v" * 398, T0 + 10, max_bytes=500)
    assert await store.cache_get(b"old", T0 + 20) is None
    await store.cache_expire(T0 + 20)
    await store.cache_put(b"n1", b"v" * 198, T0 + 100, max_bytes=500)
    await store.cache_put(b"n2", b"v" * 198, T0 + 101, max_bytes=500)
    assert await _live_keys(store, [b"n1", b"n2"], T0 + 20) == [b"n1", b"n2"]


async def _put_with_hits(store, hits: dict[bytes, int], value_size: int = 8, expires_at: float = T0 + 100) -> None:
    for key, count in hits.items():
        await store.cache_put(key, b"v" * value_size, expires_at)
        for _ in range(count):
            assert await store.cache_get(key, T0) is not None


async def test_cache_top_orders_by_hits(store):
    """cache_top returns live entries most-hit first, with their values and expiries."""
    await _put_with_hits(store, {b"one": 1, b"three": 3, b"two": 2, b"none": 0})
    top = await store.cache_top(10, 10_000, T0)
    assert [key for key, _, _ in top] == [b"three", b"two", b"one", b"none"]
    assert top[0] == (b"three", b"v" * 8, T0 + 100)


async def test_cache_top_respects_the_limit(store):
    """cache_top returns at most `limit` entries, the most hit."""
    await _put_with_hits(store, {b"one": 1, b"three": 3, b"two": 2})
    assert [key for key, _, _ in await store.cache_top(2, 10_000, T0)] == [b"three", b"two"]


async def test_cache_top_respects_the_byte_bound(store):
    """Entries cost len(key) + len(value); one that does not fit is skipped and smaller ones after it still come."""
    await store.cache_put(b"aa", b"x" * 8, T0 + 100)  # 10 bytes
    await store.cache_put(b"bb", b"x" * 98, T0 + 100)  # 100 bytes
    await store.cache_put(b"cc", b"x" * 8, T0 + 100)  # 10 bytes
    for key, hits in [(b"aa", 3), (b"bb", 2), (b"cc", 1)]:
        for _ in range(hits):
            await store.cache_get(key, T0)
    top = await store.cache_top(10, 20, T0)
    assert [key for key, _, _ in top] == [b"aa", b"cc"]
    assert sum(len(k) + len(v) for k, v, _ in top) <= 20


async def test_cache_top_leaves_out_expired_entries(store):
    """Entries past their expiry are never warmed, however popular."""
    await _put_with_hits(store, {b"popular": 5}, expires_at=T0 + 10)
    await _put_with_hits(store, {b"quiet": 0})
    assert [key for key, _, _ in await store.cache_top(10, 10_000, T0 + 20)] == [b"quiet"]


# -- datasets ----------------------------------------------------------------------------------------------------------

def _example(n: int, at: float = T0) -> ExampleRecord:
    return ExampleRecord(json.dumps({"question": f"q{n}"}), json.dumps({"answer": f"a{n}"}), "client", at)


async def test_examples_round_trip_in_order_per_split(store):
    """Examples come back as added, in insertion order, each split on its own; counts are per split, sorted."""
    await store.add_examples("ds", "train", [_example(1), _example(2)], 100)
    await store.add_examples("ds", "dev", [_example(10)], 100)
    feedback = dataclasses.replace(_example(3, T0 + 5), source="feedback")
    info = await store.add_examples("ds", "train", [feedback], 100)
    assert await store.load_examples("ds", "train") == [_example(1), _example(2), feedback]
    assert await store.load_examples("ds", "dev") == [_example(10)]
    assert info.name == "ds" and info.counts == (("dev", 1), ("train", 3)) and info.updated_at == T0 + 5
    assert await store.get_dataset("ds") == info


async def test_unknown_dataset_or_split_is_empty(store):
    """An unknown dataset has no info and no examples; an unknown split of a known one has no examples."""
    assert await store.get_dataset("nope") is None
    assert await store.load_examples("nope", "train") == []
    await store.add_examples("ds", "train", [_example(1)], 100)
    assert await store.load_examples("ds", "dev") == []


async def test_content_hash_is_equal_for_equal_content(store):
    """Two datasets given the same examples per split, in the same order, have the same hash (times and sources aside)."""
    await store.add_examples("a", "train", [_example(1), _example(2)], 100)
    await store.add_examples("a", "dev", [_example(3)], 100)
    await store.add_examples("b", "dev", [dataclasses.replace(_example(3), source="feedback")], 100)
    await store.add_examples("b", "train", [_example(1, T0 + 9)], 100)
    await store.add_examples("b", "train", [_example(2)], 100)
    a, b = await store.get_dataset("a"), await store.get_dataset("b")
    assert a.content_hash == b.content_hash and len(a.content_hash) == 64


async def test_content_hash_changes_with_content(store):
    """Every append changes the hash, and so do order and split: equal only for equal content."""
    seen = set()
    for n in range(3):
        seen.add((await store.add_examples("ds", "train", [_example(n)], 100)).content_hash)
    await store.add_examples("swapped", "train", [_example(1), _example(0), _example(2)], 100)
    await store.add_examples("other_split", "dev", [_example(0), _example(1), _example(2)], 100)
    seen.add((await store.get_dataset("swapped")).content_hash)
    seen.add((await store.get_dataset("other_split")).content_hash)
    assert len(seen) == 5


async def test_max_examples_refuses_atomically(store):
    """A batch that would pass max_examples in the whole dataset raises ResourceExhausted and adds none of it."""
    await store.add_examples("ds", "train", [_example(1), _example(2)], 4)
    before = await store.add_examples("ds", "dev", [_example(3)], 4)
    with pytest.raises(ResourceExhausted):
        await store.add_examples("ds", "train", [_example(4), _example(5)], 4)
    assert await store.get_dataset("ds") == before
    assert await store.load_examples("ds", "train") == [_example(1), _example(2)]
    assert (await store.add_examples("ds", "train", [_example(4)], 4)).counts == (("dev", 1), ("train", 3))


async def test_list_datasets_by_name(store):
    """list_datasets returns every dataset, by name, as get_dataset describes it."""
    for name in ("b", "a", "c"):
        await store.add_examples(name, "train", [_example(1)], 100)
    listed = await store.list_datasets()
    assert [d.name for d in listed] == ["a", "b", "c"]
    assert listed == [await store.get_dataset(name) for name in ("a", "b", "c")]


async def test_delete_dataset(store):
    """delete_dataset removes the dataset and its examples of every split; a new one of that name starts empty."""
    await store.add_examples("ds", "train", [_example(1)], 100)
    await store.add_examples("ds", "dev", [_example(2)], 100)
    await store.add_examples("kept", "train", [_example(1)], 100)
    assert await store.delete_dataset("ds") is True
    assert await store.delete_dataset("ds") is False
    assert await store.get_dataset("ds") is None and await store.load_examples("ds", "dev") == []
    assert [d.name for d in await store.list_datasets()] == ["kept"]
    again = await store.add_examples("ds", "train", [_example(5)], 100)
    assert again.counts == (("train", 1),) and await store.load_examples("ds", "train") == [_example(5)]


async def test_concurrent_adds_to_one_dataset_keep_every_example(store):
    """20 adds to one split at once all land, and the hash is that of the order they landed in."""
    await asyncio.gather(*(store.add_examples("ds", "train", [_example(n)], 100) for n in range(20)))
    landed = await store.load_examples("ds", "train")
    assert sorted(e.inputs_json for e in landed) == sorted(_example(n).inputs_json for n in range(20))
    await store.add_examples("copy", "train", landed, 100)
    assert (await store.get_dataset("copy")).content_hash == (await store.get_dataset("ds")).content_hash


# -- jobs ----------------------------------------------------------------------------------------------------------------

def _job(job_id: str, created_at: float = T0, **changes) -> JobRecord:
    job = JobRecord(job_id=job_id, dedup_key=f"key-{job_id}", program="qa", state="queued", priority=0,
                    created_at=created_at, updated_at=created_at, request=b"\x00req" + job_id.encode())
    return dataclasses.replace(job, **changes)


async def test_job_round_trips(store):
    """put_job stores every field, get_job returns it as given; an unknown id is None."""
    job = _job("j1", progress=b"\x01p", result=b"\x02r", error="boom", owner="replica-a", lease_expires_at=T0 + 30,
               state="running", priority=-3, updated_at=T0 + 1.5)
    await store.put_job(job)
    assert await store.get_job("j1") == job
    assert await store.get_job("nobody") is None


async def test_put_job_replaces_by_id(store):
    """A second put_job of an id replaces the job, in get_job and in every listing (no duplicate)."""
    await store.put_job(_job("j1"))
    done = _job("j1", state="succeeded", updated_at=T0 + 9, result=b"best")
    await store.put_job(done)
    assert await store.get_job("j1") == done
    assert await store.list_jobs() == [done]
    assert await store.list_jobs(states=("queued",)) == []


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled", "interrupted"])
async def test_a_finished_job_is_final(store, final):
    """put_job of a job stored finished keeps it as it is and returns False; a job not finished yet is written (True)."""
    assert await store.put_job(_job("j1", state="running", owner="a")) is True
    done = _job("j1", state=final, updated_at=T0 + 1, error="why")
    assert await store.put_job(done) is True
    assert await store.put_job(_job("j1", state="succeeded", updated_at=T0 + 2, result=b"late")) is False
    assert await store.put_job(_job("j1", state="running", updated_at=T0 + 3, progress=b"p")) is False
    assert await store.get_job("j1") == done
    assert await store.list_jobs(states=(final,)) == [done]


async def test_a_session_keeps_its_newest_turns_within_max_bytes_and_always_the_newest(store):
    """With max_bytes, an append drops the oldest turns until the rest fit (10,000 sessions of 50 turns of 4 MiB could
    fill a disk: only what a program can receive is worth keeping); a turn larger than the bound still stays alone."""
    limits = dataclasses.replace(LIMITS, max_bytes=10_000)
    big = lambda n, size: TurnRecord("p", '{"q": "' + str(n) + "x" * size + '"}', "{}")  # noqa: E731
    for n in range(5):
        await store.append_turn("s1", big(n, 3_000), T0 + n, limits)
    kept = (await store.get_session("s1", T0 + 5, limits)).turns
    assert [json.loads(turn.inputs_json)["q"][0] for turn in kept] == ["2", "3", "4"]  # 3 x ~3 KB fit 10,000 bytes
    await store.append_turn("s1", big(9, 20_000), T0 + 6, limits)
    assert [json.loads(t.inputs_json)["q"][0] for t in (await store.get_session("s1", T0 + 7, limits)).turns] == ["9"]


async def test_pruning_keeps_the_newest_finished_jobs_and_every_active_one(store):
    """prune_jobs(keep) deletes the finished jobs past the newest `keep` (with their cancel requests) from every
    listing; queued and running jobs stay, however old (jobs started and cancelled in a loop grew without end)."""
    for n, state in enumerate(["cancelled", "running", "failed", "queued", "succeeded", "interrupted", "cancelled"]):
        await store.put_job(_job(f"j{n}", T0 + n, state=state, program="qa" if n % 2 else "other", dedup_key=f"k{n}"))
    await store.request_job_cancel("j0", T0)
    assert await store.prune_jobs(keep=2) == 3  # finished: j6, j5 kept; j4, j2, j0 go
    assert [j.job_id for j in await store.list_jobs()] == ["j6", "j5", "j3", "j1"]
    assert [j.job_id for j in await store.list_jobs(program="other")] == ["j6"]
    assert await store.get_job("j0") is None and await store.find_job("k4") is None and await store.find_job("k5") is not None
    assert not await store.job_cancel_requested("j0")
    assert await store.prune_jobs(keep=2) == 0


async def test_list_jobs_newest_first_with_filters(store):
    """list_jobs orders by created_at newest first (ties by job_id, descending), filters by program and states,
    and stops at limit."""
    await store.put_job(_job("a", T0 + 1))
    await store.put_job(_job("b", T0 + 3, state="running"))
    await store.put_job(_job("c", T0 + 2, program="other"))
    await store.put_job(_job("d", T0 + 3, state="failed"))
    assert [j.job_id for j in await store.list_jobs()] == ["d", "b", "c", "a"]
    assert [j.job_id for j in await store.list_jobs(program="qa")] == ["d", "b", "a"]
    assert [j.job_id for j in await store.list_jobs(states=("queued", "running"))] == ["b", "c", "a"]
    assert [j.job_id for j in await store.list_jobs(program="qa", states=("queued",))] == ["a"]
    assert [j.job_id for j in await store.list_jobs(limit=2)] == ["d", "b"]
    assert await store.list_jobs(program="nothing") == []


async def test_list_jobs_finds_old_jobs_behind_many_newer_ones(store):
    """A state filter finds the jobs in it however many newer jobs in other states come first."""
    await store.put_job(_job("old", T0))
    for n in range(150):
        await store.put_job(_job(f"done{n:03}", T0 + 1 + n, state="succeeded"))
    assert [j.job_id for j in await store.list_jobs(states=("queued",))] == ["old"]
    assert [j.job_id for j in await store.list_jobs(program="qa", states=("queued",), limit=1)] == ["old"]
    assert len(await store.list_jobs(limit=1000)) == 151


async def test_list_jobs_follows_a_changed_program(store):
    """A job put again under another program is listed under the new one only."""
    await store.put_job(_job("j1"))
    await store.put_job(_job("j1", program="other"))
    assert await store.list_jobs(program="qa") == []
    assert [j.job_id for j in await store.list_jobs(program="other")] == ["j1"]


async def test_find_job_returns_the_newest_with_the_key(store):
    """find_job returns the newest job with a dedup key, None when there is none."""
    await store.put_job(_job("old", T0, dedup_key="k"))
    await store.put_job(_job("new", T0 + 5, dedup_key="k"))
    await store.put_job(_job("else", T0 + 9, dedup_key="other"))
    assert (await store.find_job("k")).job_id == "new"
    assert await store.find_job("missing") is None
    await store.put_job(_job("new", T0 + 5, dedup_key="changed"))
    assert (await store.find_job("k")).job_id == "old"


async def test_claim_job_one_owner_until_the_lease_expires(store):
    """Two owners claiming one job: exactly one wins, the owner renews, the other wins only after expiry."""
    await store.put_job(_job("j1"))
    won = await asyncio.gather(store.claim_job("j1", "a", T0, 30), store.claim_job("j1", "b", T0, 30))
    assert sorted(won) == [False, True]
    winner, loser = ("a", "b") if won[0] else ("b", "a")
    job = await store.get_job("j1")
    assert (job.owner, job.lease_expires_at) == (winner, T0 + 30)
    assert await store.claim_job("j1", loser, T0 + 29.5, 30) is False
    assert await store.claim_job("j1", winner, T0 + 20, 30) is True  # a renewal moves the lease
    assert (await store.get_job("j1")).lease_expires_at == T0 + 50
    assert await store.claim_job("j1", loser, T0 + 49.5, 30) is False
    assert await store.claim_job("j1", loser, T0 + 50, 30) is True  # held while now < lease_expires_at
    assert (await store.get_job("j1")).owner == loser
    assert await store.claim_job("j1", winner, T0 + 51, 30) is False


async def test_claim_job_takes_a_free_job_and_not_a_missing_one(store):
    """A job whose owner is "" is free whatever its lease says; an unknown job cannot be claimed."""
    await store.put_job(_job("j1", owner="", lease_expires_at=T0 + 1000))
    assert await store.claim_job("j1", "a", T0, 30) is True
    assert await store.claim_job("nobody", "a", T0, 30) is False
    assert await store.get_job("nobody") is None


async def test_claim_job_keeps_the_rest_of_the_job(store):
    """A claim changes only the owner and the lease."""
    job = _job("j1", state="running", progress=b"half")
    await store.put_job(job)
    await store.claim_job("j1", "a", T0, 30)
    assert await store.get_job("j1") == dataclasses.replace(job, owner="a", lease_expires_at=T0 + 30)


async def test_a_cancel_asked_of_a_job_is_seen_by_every_reader(store):
    """request_job_cancel is durable and idempotent; it marks only that job (another replica polls for it)."""
    await store.put_job(_job("j1", state="running", owner="a"))
    assert await store.job_cancel_requested("j1") is False
    await store.request_job_cancel("j1", T0)
    await store.request_job_cancel("j1", T0 + 1)
    assert await store.job_cancel_requested("j1") is True
    assert await store.job_cancel_requested("j2") is False
    assert (await store.get_job("j1")).state == "running"  # the job itself is the runner's to change


# -- execution policies -----------------------------------------------------------------------------------------------

async def test_policies_round_trip_and_move_the_revision(store):
    """put_policy stores or replaces a program's policy bytes, and every put moves program_revision."""
    assert await store.list_policies() == {}
    before = await store.program_revision()
    await store.put_policy("qa", b"\x00mode=optimized")
    first = await store.program_revision()
    await store.put_policy("other", b"x")
    await store.put_policy("qa", b"mode=hybrid")
    assert before < first < await store.program_revision()
    assert await store.list_policies() == {"qa": b"mode=hybrid", "other": b"x"}


# -- program statistics -------------------------------------------------------------------------------------------------

def _by_key(counts) -> dict:
    return {(c.program, c.version, c.arm): c for c in counts}


async def _programs(store, *names_versions) -> None:
    """Register each (name, versions) so that statistics for those versions are kept."""
    for name, versions in names_versions:
        for number in range(versions):
            await store.add_program(_program(name=name, content=f"v{number}"), MAX_PROGRAMS)


async def test_stats_are_added_up_per_program_version_and_arm(store):
    """Counts added by several fronts (or replicas), in several batches, are summed per (program, version, arm)."""
    await _programs(store, ("qa", 2), ("other", 1))
    await store.add_stats([StatsCount("qa", 1, "base", calls=3, errors=1), StatsCount("qa", 2, "optimized", calls=2),
                           StatsCount("qa", 1, "", feedback_count=2, feedback_sum=1.5), StatsCount("qa", 0, "", feedback_examples=4)],
                          "b1")
    await store.add_stats([StatsCount("qa", 1, "base", calls=4), StatsCount("qa", 1, "", feedback_count=1, feedback_sum=0.25),
                           StatsCount("other", 1, "base", calls=1, errors=1)], "b2")
    assert _by_key(await store.load_stats()) == {
        ("qa", 1, "base"): StatsCount("qa", 1, "base", calls=7, errors=1),
        ("qa", 2, "optimized"): StatsCount("qa", 2, "optimized", calls=2),
        ("qa", 1, ""): StatsCount("qa", 1, "", feedback_count=3, feedback_sum=1.75),
        ("qa", 0, ""): StatsCount("qa", 0, "", feedback_examples=4),
        ("other", 1, "base"): StatsCount("other", 1, "base", calls=1, errors=1),
    }


async def test_a_batch_added_again_under_its_id_is_added_once(store):
    """A batch retried because its outcome was unknown (Redis timed out after it had the commands) counts once: a
    sweep with Redis paused found every replica's figures 40 calls too high."""
    await _programs(store, ("qa", 1))
    for _ in range(3):
        await store.add_stats([StatsCount("qa", 1, "base", calls=5)], "same-batch")
    await store.add_stats([StatsCount("qa", 1, "base", calls=1)], "another-batch")
    assert _by_key(await store.load_stats())[("qa", 1, "base")].calls == 6


async def test_counts_for_versions_the_store_no_longer_holds_are_dropped(store):
    """Calls that finished after a delete (on this front or another replica) do not bring its figures back."""
    await _programs(store, ("qa", 2))
    await store.delete_programs("qa", 1)
    await store.add_stats([StatsCount("qa", 1, "base", calls=5), StatsCount("qa", 2, "base", calls=2),
                           StatsCount("gone", 1, "base", calls=9), StatsCount("gone", 0, "", feedback_examples=1),
                           StatsCount("qa", 0, "", feedback_examples=1)], "late")
    assert set(_by_key(await store.load_stats())) == {("qa", 2, "base"), ("qa", 0, "")}


async def test_concurrent_stat_adds_lose_nothing(store):
    """Fronts adding at the same moment: every count is added."""
    await _programs(store, ("qa", 1))
    await asyncio.gather(*(store.add_stats([StatsCount("qa", 1, "base", calls=1, errors=i % 2)], f"b{i}") for i in range(20)))
    assert _by_key(await store.load_stats())[("qa", 1, "base")] == StatsCount("qa", 1, "base", calls=20, errors=10)


async def test_deleting_versions_deletes_their_stats_and_the_last_one_the_policy_too(store):
    """A deleted version's statistics go with it; the program's policy and every statistic go with its last version
    (a default policy written instead was left behind for every program ever deleted)."""
    await _programs(store, ("qa", 2))
    await store.put_policy("qa", b"policy")
    await store.add_stats([StatsCount("qa", 1, "base", calls=1), StatsCount("qa", 2, "base", calls=2),
                           StatsCount("qa", 1, "", feedback_count=1, feedback_sum=1.0), StatsCount("qa", 0, "", feedback_examples=1)],
                          "b1")
    assert await store.delete_programs("qa", 1) == [1]
    assert set(_by_key(await store.load_stats())) == {("qa", 2, "base"), ("qa", 0, "")}
    assert await store.list_policies() == {"qa": b"policy"}
    assert await store.delete_programs("qa", 0) == [2]
    assert await store.load_stats() == [] and await store.list_policies() == {}
