"""The decisions every state backend makes the same way: session expiry, the session cap, cache warming.

Pure functions: the backend reads what they need (inside its own transaction
or script), passes `now` in, and applies the answer. Keeping them here means
memory, SQLite and Redis cannot drift apart on what "expired", "idle enough
to evict" or "the most-hit entries within a byte budget" mean.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dspy_pool.errors import ResourceExhausted
from dspy_pool.state.base import SessionLimits


def is_expired(last_used_at: float, now: float, ttl_s: float) -> bool:
    """A session idle for longer than its TTL is gone (exactly ttl_s idle is still live)."""
    return now - last_used_at > ttl_s


def trim_from(next_seq: int, max_turns: int) -> int:
    """The lowest turn sequence number kept once turn `next_seq - 1` is the newest: the last `max_turns` survive."""
    return next_seq - max(0, max_turns)


@dataclass(frozen=True, slots=True)
class Room:
    """What to delete so that one more session fits, or why it cannot."""

    expired: tuple[str, ...] = ()  # past their TTL
    evicted: tuple[str, ...] = ()  # live but idle at least protect_s, least recently used first
    retry_after_ms: int = 0  # > 0: refuse; nothing may be deleted


def make_room(count: int, lru: Iterable[tuple[str, float]], now: float, limits: SessionLimits) -> Room:
    """Which sessions must go before a new one is created, given `count` stored and `lru` as (id, last_used_at).

    `lru` must be least recently used first; it is consumed lazily, only as far
    as needed, so a backend can stream it from an index. Expired sessions are
    the oldest and go first; then the oldest live one if it has been idle at
    least `protect_s`. A session in active use is never pushed out: once the
    oldest remaining one is active, refuse with how long until it becomes
    evictable.
    """
    expired: list[str] = []
    evicted: list[str] = []
    if count < limits.max_sessions:
        return Room()
    for session_id, last_used_at in lru:
        if is_expired(last_used_at, now, limits.ttl_s):
            expired.append(session_id)
        elif now - last_used_at >= limits.protect_s:
            evicted.append(session_id)
        else:
            return Room(retry_after_ms=retry_after_ms(last_used_at, now, limits))
        count -= 1
        if count < limits.max_sessions:
            return Room(tuple(expired), tuple(evicted))
    # max_sessions <= 0, or `count` overstated what `lru` holds: nothing left that could go.
    return Room(retry_after_ms=retry_after_ms(now, now, limits))


def retry_after_ms(oldest_last_used_at: float, now: float, limits: SessionLimits) -> int:
    """When the oldest active session becomes evictable; at least a second, so clients do not spin."""
    return int(max(1.0, limits.protect_s - (now - oldest_last_used_at)) * 1000)


def sessions_full(limits: SessionLimits, room: Room) -> ResourceExhausted:
    """The error for a refused session, the same text and retry hint on every backend."""
    return ResourceExhausted(
        f"all {limits.max_sessions} sessions are in active use; close finished sessions or retry later",
        metadata={"retry_after_ms": str(room.retry_after_ms)},
    )


def programs_full(max_programs: int) -> ResourceExhausted:
    """The error for a version past `max_programs`, the same text on every backend."""
    return ResourceExhausted(f"the registry holds its maximum of {max_programs} program versions; delete some first")


def entry_bytes(key: bytes, value: bytes) -> int:
    """What a cache entry costs when warmed into memory: its key and its value."""
    return len(key) + len(value)


def pick_top(
    by_hits: Iterable[tuple[bytes, bytes, float]], limit: int, max_bytes: int,
) -> list[tuple[bytes, bytes, float]]:
    """From live entries, most-hit first, the first `limit` that fit in `max_bytes` together.

    An entry too big for what is left is skipped, not a stop: one huge value
    must not keep every smaller popular one from being warmed.
    """
    picked: list[tuple[bytes, bytes, float]] = []
    left = max_bytes
    if limit <= 0:
        return picked
    for key, value, expires_at in by_hits:
        size = entry_bytes(key, value)
        if size > left:
            continue
        picked.append((key, value, expires_at))
        left -= size
        if len(picked) >= limit or left <= 0:
            break
    return picked
