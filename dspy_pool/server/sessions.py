"""Sessions: conversation history in the state store, so neither a worker crash nor a restart loses it.

A session is created on the first Execute that names it, keeps its last
`max_turns` turns, and expires after `ttl_s` idle: the store keeps all of
that (durable, and shared by replicas with Redis), so a turn may land on any
replica and the limits hold across restarts. Per call:

    open(session_id)  ──> store.open_session: the history the call sees (created here, under the cap)
    ... the call runs ...
    record_turn(...)  ──> store.append_turn: committed before Execute answers

A session closed while calls on it run (on this front) is closed for them
too: their turns are dropped, and they say session_lost "closed".

A call that wants no history, of a session this front appended to less than
the open slack ago (state.policy.open_needless), skips the open: the store
would only have answered "live, not started", and the append re-checks all
of that atomically. A busy session's call is then one store round trip.

When the store is full, expired sessions go first, then the least recently
used one, but only if it has been idle for at least `protect_s`: a session in
active use is never pushed out, so one client opening thousands of ids cannot
evict everyone's history; once only active sessions are left, opening another
is RESOURCE_EXHAUSTED (with a retry hint) until some go idle or are closed.

This front keeps only what is local to it: the calls it runs per session (a
per-session limit), the worker that served a session last (an affinity hint,
never a requirement), and a bounded memory of ids it saw vanish (evicted or
expired), so the call that reopens one can tell the client its history is
gone and why.
"""

from __future__ import annotations

import collections
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from dspy_pool.errors import InvalidArgument, NotFound, ResourceExhausted
from dspy_pool.state import SessionLimits, SessionRecord, StateStore, TurnRecord, policy
from dspy_pool.state.unreachable import unavailable_while_down

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


class LostReason:
    EVICTED = "evicted"
    EXPIRED = "expired"
    CLOSED = "closed"  # said by a call that ran while its session was closed: its turn is not kept


@dataclass
class LocalSession:
    """What this front alone knows of a session."""

    in_flight: int = 0
    preferred_worker: int = -1
    committed_at: float = 0.0  # when this front's last append of it committed (its clock); 0: none yet
    created_at: float = 0.0  # as that append returned it
    closed: bool = False  # CloseSession ended it while calls ran: their turns are dropped, not a new session made


@dataclass(frozen=True, slots=True)
class OpenedSession:
    session_id: str
    record: SessionRecord
    started: bool  # this call opened the session
    lost: str  # why an earlier session with this id is gone ("evicted", "expired"), or ""
    local: LocalSession

    def history_messages(self, max_bytes: int) -> list[dict[str, Any]]:
        """Turns in the shape dspy.History expects, one dict of inputs and outputs per turn: the newest turns whose
        JSON fits `max_bytes` (a long session's history would outgrow what a worker takes in one request)."""
        return [{**json.loads(turn.inputs_json), **json.loads(turn.outputs_json)} for turn in newest_turns(self.record.turns, max_bytes)]


def newest_turns(turns: Sequence[TurnRecord], max_bytes: int) -> Sequence[TurnRecord]:
    """The newest of `turns` (in their order) whose inputs and outputs JSON add up to at most `max_bytes`."""
    sizes = [policy.turn_bytes(turn.inputs_json, turn.outputs_json) for turn in turns]
    return turns[policy.first_kept_by_size(sizes, max_bytes, keep_newest=False):]


def check_session_id(session_id: str) -> None:
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise InvalidArgument(f"session_id must match {SESSION_ID_PATTERN.pattern} (1-128 characters)")


def turn_record(program: str, inputs: dict[str, Any], outputs: dict[str, Any]) -> TurnRecord:
    return TurnRecord(program, json.dumps(inputs, ensure_ascii=False), json.dumps(outputs, ensure_ascii=False))


def _store_errors():
    return unavailable_while_down("session calls are refused until it is back")


def _expired_here(local: LocalSession | None, now: float, limits: SessionLimits) -> str:
    """"expired" when this front's last turn of the session is older than the TTL: the store dropped it on this open
    (the sweep, every 30 s, had not yet), so no note of it was kept."""
    expired = local is not None and local.committed_at and policy.is_expired(local.committed_at, now, limits.ttl_s)
    return LostReason.EXPIRED if expired else ""


class SessionStore:
    def __init__(self, store: StateStore, limits: SessionLimits) -> None:
        self.store = store
        self.limits = limits
        self._local: collections.OrderedDict[str, LocalSession] = collections.OrderedDict()
        self._lost: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.evicted = 0
        self.refused = 0

    @property
    def max_turns(self) -> int:
        return self.limits.max_turns

    def local(self, session_id: str) -> LocalSession:
        """This front's view of a session (bounded: the least recently used idle ones are forgotten)."""
        local = self._local.get(session_id)
        if local is None:
            local = self._local[session_id] = LocalSession()
            while len(self._local) > self.limits.max_sessions:
                oldest_id, oldest = next(iter(self._local.items()))
                if oldest.in_flight:
                    break
                del self._local[oldest_id]
        self._local.move_to_end(session_id)
        return local

    def _forget(self, session_ids: tuple[str, ...] | list[str], reason: str) -> None:
        for session_id in session_ids:
            self._local.pop(session_id, None)
            self._lost[session_id] = reason
            self._lost.move_to_end(session_id)
        while len(self._lost) > self.limits.max_sessions:
            self._lost.popitem(last=False)

    def lost_reason(self, session_id: str) -> str:
        return self._lost.get(session_id, "")

    async def open(self, session_id: str, now: float, with_turns: bool = True) -> OpenedSession:
        """The session a call runs in: its history, created if new (RESOURCE_EXHAUSTED when the cap allows none)."""
        check_session_id(session_id)
        local = self._local.get(session_id)
        if not with_turns and local is not None and policy.open_needless(local.committed_at, now, self.limits):
            self._local.move_to_end(session_id)
            record = SessionRecord(session_id, local.created_at, local.committed_at)
            return OpenedSession(session_id, record, False, "", local)
        try:
            async with _store_errors():
                opened = await self.store.open_session(session_id, now, self.limits, with_turns=with_turns)
        except ResourceExhausted:
            self.refused += 1
            raise
        # Its own note first: the evictions that made room for it could push that out of the bounded memory.
        lost = (self._lost.pop(session_id, "") or _expired_here(local, now, self.limits)) if opened.started else ""
        self.evicted += len(opened.evicted)
        self._forget(opened.evicted, LostReason.EVICTED)
        return OpenedSession(session_id, opened.session, opened.started, lost, self.local(session_id))

    async def record_turn(self, session_id: str, turn: TurnRecord, now: float) -> None:
        """Append the call's turn; committed when this returns."""
        async with _store_errors():
            appended = await self.store.append_turn(session_id, turn, now, self.limits)
        local = self._local.get(session_id)
        if local is not None:
            local.committed_at, local.created_at = now, appended.session.created_at
        self.evicted += len(appended.evicted)
        self._forget(appended.evicted, LostReason.EVICTED)

    async def get(self, session_id: str, now: float) -> SessionRecord:
        check_session_id(session_id)
        async with _store_errors():
            record = await self.store.get_session(session_id, now, self.limits)
        if record is None:
            lost = self.lost_reason(session_id)
            raise NotFound(f"no session {session_id!r}" + (f": it was {lost}" if lost else " (closed, expired, or never used)"))
        return record

    async def close(self, session_id: str) -> SessionRecord:
        check_session_id(session_id)
        async with _store_errors():
            record = await self.store.delete_session(session_id)
        if record is None:
            raise NotFound(f"no session {session_id!r}")
        local = self._local.pop(session_id, None)
        if local is not None:
            local.closed = True  # calls still running on it must not append and so make it again
        self._lost.pop(session_id, None)
        return record

    async def sweep(self, now: float) -> int:
        async with _store_errors():
            expired = await self.store.expire_sessions(now, self.limits)
        self._forget(expired, LostReason.EXPIRED)
        return len(expired)

    async def count(self) -> int:
        async with _store_errors():
            return await self.store.count_sessions()
