"""Sessions: conversation history kept in the front, so a worker crash loses nothing.

A session is created on first use by Execute, keeps its last `max_turns`
turns, expires after `ttl_s` idle, and remembers the worker that served it
last (affinity is a hint for the dispatcher, never a requirement). When the
store is full, expired sessions go first, then the least recently used one.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Any

from dspy_pool.errors import InvalidArgument, NotFound

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

    def history_messages(self) -> list[dict[str, Any]]:
        """Turns in the shape dspy.History expects: one dict of inputs and outputs per turn."""
        return [{**turn.inputs, **turn.outputs} for turn in self.turns]


def check_session_id(session_id: str) -> None:
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        raise InvalidArgument(f"session_id must match {SESSION_ID_PATTERN.pattern} (1-128 characters)")


class SessionStore:
    def __init__(self, max_sessions: int, ttl_s: float, max_turns: int) -> None:
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self.max_turns = max_turns
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.last_used_at > self.ttl_s

    def get(self, session_id: str, now: float) -> Session:
        session = self._sessions.get(session_id)
        if session is None or self._expired(session, now):
            if session is not None:
                del self._sessions[session_id]
            raise NotFound(f"no session {session_id!r} (closed, expired, or never used)")
        return session

    def get_or_create(self, session_id: str, now: float) -> Session:
        check_session_id(session_id)
        session = self._sessions.get(session_id)
        if session is not None and not self._expired(session, now):
            session.last_used_at = now
            self._sessions.move_to_end(session_id)
            return session
        self._sessions.pop(session_id, None)
        self._make_room(now)
        session = Session(session_id, created_at=now, last_used_at=now, turns=collections.deque(maxlen=self.max_turns))
        self._sessions[session_id] = session
        return session

    def _make_room(self, now: float) -> None:
        while len(self._sessions) >= self.max_sessions:
            oldest_id, oldest = next(iter(self._sessions.items()))
            del self._sessions[oldest_id]  # LRU order: the oldest is expired first if any is
            self.evicted += 1

    def close(self, session_id: str) -> Session:
        session = self._sessions.pop(session_id, None)
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        return session

    def sweep(self, now: float) -> int:
        expired = [sid for sid, s in self._sessions.items() if self._expired(s, now)]
        for sid in expired:
            del self._sessions[sid]
        return len(expired)
