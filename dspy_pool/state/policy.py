"""The decisions every state backend makes the same way: session expiry, the session cap, cache warming,
a dataset's content hash, the job lease.

Pure functions: the backend reads what they need (inside its own transaction
or script), passes `now` in, and applies the answer. Keeping them here means
memory, SQLite and Redis cannot drift apart on what "expired", "idle enough
to evict", "the most-hit entries within a byte budget", "equal content" or
"a free lease" mean.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dspy_pool.errors import ResourceExhausted
from dspy_pool.state.base import ExampleRecord, JobRecord, SessionLimits, StatsCount

# open_session leaves a session used less than this long ago as it is (see open_touches).
OPEN_TOUCH_SLACK_S = 1.0


def is_expired(last_used_at: float, now: float, ttl_s: float) -> bool:
    """A session idle for longer than its TTL is gone (exactly ttl_s idle is still live)."""
    return now - last_used_at > ttl_s


def open_touches(last_used_at: float, now: float, limits: SessionLimits) -> bool:
    """Whether open_session must write `now` as a live session's last_used_at.

    Not for a session used within the slack (a second, less for tiny limits): the append that ends the
    call touches it anyway, and a busy session's open is then a read, not a write. Everything that counts
    from the last use (the TTL, protect_s at the cap) counts from at most that slack earlier meanwhile.
    """
    return now - last_used_at >= open_touch_slack_s(limits)


def open_touch_slack_s(limits: SessionLimits) -> float:
    """How recent a use spares an open its write (a tenth of the TTL or protect_s when that is less than a second)."""
    return min(OPEN_TOUCH_SLACK_S, limits.ttl_s / 10, limits.protect_s / 10)


def open_needless(committed_at: float, now: float, limits: SessionLimits) -> bool:
    """Whether a call may skip open_session (history not wanted) because this front committed a turn of the
    session at `committed_at` (its clock; 0: never).

    Within the open slack the store's open would be a pure read answering "live, not started" (open_touches
    is false and the TTL cannot have run out), so skipping it changes nothing the store holds: the append that
    ends the call is still one atomic step that re-checks liveness and the cap, and creates the session again
    if another process closed it meanwhile, exactly as when that close lands between an open and its append.
    """
    return committed_at > 0 and not open_touches(committed_at, now, limits)


def trim_from(next_seq: int, max_turns: int) -> int:
    """The lowest turn sequence number kept once turn `next_seq - 1` is the newest: the last `max_turns` survive."""
    return next_seq - max(0, max_turns)


def first_kept_by_size(sizes: Sequence[int], max_bytes: int, keep_newest: bool = True) -> int:
    """Of turns of these sizes (oldest first), the index of the oldest kept: the newest whose sizes add up to at most
    `max_bytes`, and with keep_newest the newest turn always (a session never loses the turn just made; what a
    program is sent has no such exception). 0 keeps all; so does max_bytes 0."""
    if max_bytes <= 0:
        return 0
    total, first = 0, len(sizes)
    while first > 0:
        total += sizes[first - 1]
        if total > max_bytes and (first < len(sizes) or not keep_newest):
            break
        first -= 1
    return first


def turn_bytes(inputs_json: str, outputs_json: str) -> int:
    return len(inputs_json.encode()) + len(outputs_json.encode())


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


RELEASE_MIN_FREE_PAGES = 1024  # 4 MiB of SQLite's 4 KiB pages
RELEASE_MAX_PAGES = 4096  # at once: the write lock is held while they are given back


def pages_to_release(page_count: int, free_pages: int) -> int:
    """How many of a file's free pages to give back now: none while fewer than RELEASE_MIN_FREE_PAGES or under a
    quarter of the file are free (a file whose sessions shrink and grow again is not cut and regrown each time),
    else all of them, RELEASE_MAX_PAGES at a time."""
    if free_pages < RELEASE_MIN_FREE_PAGES or free_pages * 4 < page_count:
        return 0
    return min(free_pages, RELEASE_MAX_PAGES)


def first_to_drop(by_expiry: Iterable[tuple[bytes, int]], excess: int) -> list[bytes]:
    """From (key, bytes) soonest-expiring first, the first keys whose bytes add up to at least `excess`."""
    gone: list[bytes] = []
    freed = 0
    for key, size in by_expiry:
        if freed >= excess:
            break
        gone.append(bytes(key))
        freed += size
    return gone


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


# -- datasets -----------------------------------------------------------------------------------------------------------
#
# The content hash covers each example's inputs and outputs (not its source or time: the same examples added
# again are the same training data), split by split, in the order they were added. Each split keeps a running
# head, sha256(previous head + example), so an append hashes only what it adds; the dataset's hash is the sha256
# of its splits' (name, count, head), sorted by name. Equal content, equal hash, on every backend.

EMPTY_HEAD = ""  # a split with no examples yet


def example_bytes(example: ExampleRecord) -> bytes:
    """What of an example the content hash covers, unambiguously encoded."""
    return json.dumps([example.inputs_json, example.outputs_json], ensure_ascii=False, separators=(",", ":")).encode()


def chain_examples(head: str, examples: Iterable[ExampleRecord]) -> str:
    """A split's head after appending `examples` to a split whose head was `head`."""
    for example in examples:
        head = hashlib.sha256(bytes.fromhex(head) + example_bytes(example)).hexdigest()
    return head


def dataset_hash(splits: Iterable[tuple[str, int, str]]) -> str:
    """The content hash of a dataset from its splits' (name, count, head), in any order."""
    ordered = sorted([split, count, head] for split, count, head in splits if count > 0)
    return hashlib.sha256(json.dumps(ordered, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()


def examples_fit(stored: int, adding: int, max_examples: int) -> bool:
    """Whether `adding` more fit a dataset holding `stored` (adding none always does)."""
    return adding == 0 or stored + adding <= max_examples


def examples_full(dataset: str, stored: int, adding: int, max_examples: int) -> ResourceExhausted:
    """The error for examples past `max_examples`, the same text on every backend."""
    return ResourceExhausted(f"dataset {dataset!r} holds {stored} examples; {adding} more would pass its maximum of "
                             f"{max_examples}: nothing was added")


# -- jobs -----------------------------------------------------------------------------------------------------------------

def can_claim(owner: str, lease_expires_at: float, claimant: str, now: float) -> bool:
    """A job's lease can be taken when nobody holds it, it has run out (held while now < lease_expires_at), or
    `claimant` holds it already (a renewal)."""
    return not owner or owner == claimant or now >= lease_expires_at


def newest_first(job: JobRecord) -> tuple[float, str]:
    """Sort key (with reverse=True) of every job listing: created_at, then job_id, both descending."""
    return job.created_at, job.job_id


def versions_to_delete(held: Iterable[int], version: int) -> list[int]:
    """What delete_programs(name, version) removes of the versions `held`: all for 0, else that one if held."""
    held = sorted(held)
    return held if version == 0 else [version] if version in held else []


def add_counts(total: StatsCount | None, more: StatsCount) -> StatsCount:
    """`more` added to `total` (None: nothing yet), field by field."""
    if total is None:
        return more
    return StatsCount(total.program, total.version, total.arm, total.calls + more.calls, total.errors + more.errors,
                      total.feedback_count + more.feedback_count, total.feedback_sum + more.feedback_sum,
                      total.feedback_examples + more.feedback_examples)


def forgotten(key: tuple[str, int, str], program: str, versions: list[int] | None) -> bool:
    """Whether the figures kept under `key` (program, version, arm) go with `versions` of `program` (None: all of it)."""
    return key[0] == program and (versions is None or key[1] in versions)
