"""One call of a registered program on the pool, with its session: the seam the resilience path wraps.

    Execute ──> ResilientExecutor ──> Executor.execute(program, inputs, session?) ──> Pool.call(CallRequest)
                                                         |  session: history in, turn appended out
                                                         v
                                                     Served (CallResult + how it was served)

The session's turn is appended only after the call succeeded, so a failed or
retried call never leaves half a turn behind; it is committed to the state
store before Execute answers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import NamedTuple

from google.protobuf import struct_pb2

from dspy_pool import errors, structs
from dspy_pool.pool.api import CallRequest, CallResult, LMChoice, Pool
from dspy_pool.server.registry import ProgramVersion
from dspy_pool.server.sessions import LostReason, SessionStore, turn_record


# Small immutable values built on every call: tuples (NamedTuple), the cheapest to build.
class SessionNote(NamedTuple):
    """What the response tells the client about its session."""

    started: bool = False  # this call opened the session
    lost: str = ""  # why an earlier session with this id is gone ("evicted", "expired")


NO_SESSION = SessionNote()


class Served(NamedTuple):
    result: CallResult
    served_by: str = "primary"
    fallback_reason: str = ""
    session: SessionNote = NO_SESSION
    cache_level: str = ""  # which cache level answered ("memory", "store"), when one did


_new_tuple = tuple.__new__  # a named tuple's own __new__ is a Python function; Served and CallRequest are built per call


def primary(result: CallResult) -> Served:
    """Served(result): what the pool answered, with no session; every field given, so no defaults are filled in."""
    return _new_tuple(Served, (result, "primary", "", NO_SESSION, ""))


class Executor:
    """Runs one call of a registered program on the pool."""

    def __init__(self, pool: Pool, sessions: SessionStore, session_max_in_flight: int, history_max_bytes: int) -> None:
        self.pool = pool
        self.sessions = sessions
        self.session_max_in_flight = session_max_in_flight
        self.history_max_bytes = history_max_bytes

    def call(self, program: ProgramVersion, inputs: struct_pb2.Struct, request_id: str, deadline: float,
             lm: LMChoice | None = None) -> Awaitable[CallResult]:
        """A call outside any session: the pool's own awaitable, with no coroutine of ours around it (every call would pay one)."""
        return self.pool.call(_new_tuple(CallRequest, (program.ref, inputs, deadline, request_id, None, -1, lm)))

    async def execute(self, program: ProgramVersion, inputs: struct_pb2.Struct, session_id: str, request_id: str,
                      deadline: float, lm: LMChoice | None = None) -> Served:
        if not session_id:
            return primary(await self.call(program, inputs, request_id, deadline, lm))
        session = await self.sessions.open(session_id, time.time(), with_turns=program.takes_history)
        local = session.local
        if self.session_max_in_flight and local.in_flight >= self.session_max_in_flight:
            raise errors.ResourceExhausted(
                f"session {session_id!r} already has {local.in_flight} calls in flight (limit {self.session_max_in_flight})",
                metadata={"retry_after_ms": "200"},
            )
        history = tuple(session.history_messages(self.history_max_bytes)) if program.takes_history else None
        local.in_flight += 1
        try:
            result = await self.pool.call(CallRequest(program.ref, inputs, deadline, request_id, history, local.preferred_worker, lm))
        finally:
            local.in_flight -= 1
        if result.worker is not None:
            local.preferred_worker = result.worker.id
        if local.closed:  # CloseSession ran meanwhile: appending would make the session again
            return Served(result, session=SessionNote(session.started, LostReason.CLOSED))
        turn = turn_record(program.name, structs.struct_to_dict(inputs), structs.struct_to_dict(result.outputs))
        await self.sessions.record_turn(session_id, turn, time.time())
        return Served(result, session=SessionNote(session.started, session.lost))
