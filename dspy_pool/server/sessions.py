"""Sessions: conversation history kept in the front, so a worker crash loses nothing.

A session is created on first use by Execute, keeps its last `max_turns`
turns, expires after `ttl_s` idle, and remembers the worker that served it
last (affinity is a hint for the dispatcher, never a requirement).

When the store is full, expired sessions go first, then the least recently
used one, but only if it has been idle for at least `protect_s`: a session in
active use is never pushed out, so one client opening thousands of ids cannot
evict everyone's history; once only active sessions are left, opening another
is RESOURCE_EXHAUSTED (with a retry hint) until some go idle or are closed.
A session that vanished (evicted or expired) leaves a bounded tombstone, so
the call that reopens it can tell the client its history was lost and why.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Any

from dspy_pool.errors import InvalidArgument, NotFound, ResourceExhausted

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


@dataclass
class Turn:
    program: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass
class Session:
    session_id: str
    created_at: float
    last_used_at: float
    turns: collections.deque = field(default_factory=collections.deque)
    preferred_worker: int = -1
    in_flight: int = 0
    lost: str = ""  # set on a new session whose id held an earlier one: "evicted" or "expired"
    fresh: bool = True  # no call has used it yet: the first response says the session started

    def history_messages(self) -> list[dict[str, Any]]:
        """Turns in the shape dspy.History expects: one dict of inputs and outputs per turn."""
        return [{**turn.inputs, **turn.outputs} for turn in self.turns]


def check_session_id(session_id: str) -> None:
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise InvalidArgument(f"session_id must match {SESSION_ID_PATTERN.pattern} (1-128 characters)")


class LostReason:
    EVICTED = "evicted"
    EXPIRED = "expired"


class SessionStore:
    def __init__(self, max_sessions: int, ttl_s: float, max_turns: int, protect_s: float = 60.0) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self.protect_s = protect_s
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        # id -> why it vanished; bounded like the store itself, oldest forgotten first.
        self._lost: collections.OrderedDict[str, str] = collections.OrderedDict()
        self.evicted = 0
        self.refused = 0

    def _forget(self, session_id: str, reason: str) -> None:
        self._sessions.pop(session_id, None)
        self._lost[session_id] = reason
        self._lost.move_to_end(session_id)
        while len(self._lost) > self.max_sessions:
            self._lost.popitem(last=False)

    def lost_reason(self, session_id: str) -> str:
        """Why a session id that is not live now went away ("evicted", "expired"), or "" if never seen."""
        return self._lost.get(session_id, "")

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_used_at > self.ttl_s

    def get(self, session_id: str, now: float) -> Session:
        session = self._sessions.get(session_id)
        if session is not None and self._expired(session, now):
            self._forget(session_id, LostReason.EXPIRED)
            session = None
        if session is None:
            lost = self.lost_reason(session_id)
            raise NotFound(f"no session {session_id!r}" + (f": it was {lost}" if lost else " (closed or never used)"))
        return session

    def get_or_create(self, session_id: str, now: float) -> Session:
        """The live session, or a new empty one; `Session.lost` says why an earlier one with this id is gone."""
        check_session_id(session_id)
        session = self._sessions.get(session_id)
        if session is not None and not self._expired(session, now):
            session.last_used_at = now
            self._sessions.move_to_end(session_id)
            return session
        if session is not None:
            self._forget(session_id, LostReason.EXPIRED)
        self._make_room(now)
        lost = self._lost.pop(session_id, "")
        session = Session(session_id, created_at=now, last_used_at=now, turns=collections.deque(maxlen=self.max_turns), lost=lost)
        self._sessions[session_id] = session
        return session

    def _make_room(self, now: float) -> None:
        while len(self._sessions) >= self.max_sessions:
            oldest_id, oldest = next(iter(self._sessions.items()))  # LRU order: expired ones come first
            if self._expired(oldest, now):
                self._forget(oldest_id, LostReason.EXPIRED)
            elif now - oldest.last_used_at >= self.protect_s and not oldest.in_flight:
                self._forget(oldest_id, LostReason.EVICTED)
                self.evicted += 1
            else:
                self.refused += 1
                raise ResourceExhausted(
                    f"all {self.max_sessions} sessions are in active use; close finished sessions or retry later",
                    metadata={"retry_after_ms": str(int(max(1.0, self.protect_s - (now - oldest.last_used_at)) * 1000))},
                )

    def close(self, session_id: str) -> Session:
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        self._lost.pop(session_id, None)
        return session

    def sweep(self, now: float) -> int:
        expired = [sid for sid, s in self._sessions.items() if self._expired(s, now)]
        for sid in expired:
            self._forget(sid, LostReason.EXPIRED)
        return len(expired)
