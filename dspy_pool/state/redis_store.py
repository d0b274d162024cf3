"""The Redis backend: several replicas share one state through redis-py's asyncio client.

    replica A ──┐                                 ┌─ programs    (Lua: version, idempotence, cap, revision)
    replica B ──┼─ RedisStore ── connection pool ─┼─ sessions    (Lua: create/evict/append/trim/touch/expire)
    replica C ──┘   (bounded, no blind retries)   ├─ cache       (Lua: hit count, PEXPIREAT)
                                                  ├─ datasets    (Lua: append if unchanged since read)
                                                  ├─ jobs        (Lua: upsert with its indexes, lease)
                                                  └─ policies    (MULTI: policy and program_revision)

Every change that must be atomic across replicas is one Lua script (EVALSHA via
`register_script`, reloaded by redis-py when a restarted server has forgotten
it), so two replicas appending to one session at once both keep their turn and
two replicas registering one name get distinct versions.

Programs use versioned reads: every add and delete INCRs `program_revision`
in the same script, and a replica's registry polls `program_revision()` and
reloads `list_programs()` when it moves; nothing is pushed between replicas.

Key layout, all under the prefix (default ``dspy_pool:``; names and session
ids are embedded as given, behind a fixed-kind segment, so no two kinds collide):

    schema_version                  string   SCHEMA_VERSION of what wrote this database
    epoch                           string   a random id set when a replica first opens the database: read with
                                             program_revision, a changed (or lost) one tells a replica that the
                                             database was wiped (FLUSHALL, an empty restart), however far its
                                             revision has counted since
    program_revision                string   INCR on every add and delete of a program, and every put_policy
    programs                        set      "VERSION:NAME" of every stored version
    program:VERSION:NAME            hash     spec, content_hash, input_names, output_names, takes_history, created_at,
                                             meta (absent in what schema 1 wrote: b"")
    program_versions:NAME           zset     VERSION scored by itself (the latest is the highest)
    program_next:NAME               string   INCR per name, never deleted, so versions are never reused
    sessions                        zset     session id scored by last_used_at (count, LRU, expiry)
    session_meta:ID                 hash     created_at, last_used_at        (PEXPIRE ttl + grace on every touch)
    session_turns:ID                list     JSON [program, inputs_json, outputs_json] per turn (same PEXPIRE)
    cache:KEY                       hash     v (value), e (expires_at)       (PEXPIREAT expires_at)
    cache_hits                      zset     KEY scored by its hits (cache_top)
    cache_expiry                    zset     KEY scored by when Redis drops it (prunes the two zsets; evicts first)
    cache_sizes                     hash     KEY -> its bytes (state.policy.entry_bytes)
    stats:PROGRAM                   hash     VERSION\0ARM\0COUNT -> its sum (StatsCount's fields)
    stats_programs                  set      programs with a stats hash
    cache_bytes                     string   the sizes in all (cache_put holds it within the cache's bound)
    datasets                        set      every dataset name
    dataset:NAME                    hash     rev, total, hash, updated_at, count:SPLIT and head:SPLIT per split
    dataset_examples:N:SPLIT:NAME   list     JSON [inputs_json, outputs_json, source, created_at] per example
                                             (N: the split's length in bytes, so split and name cannot run together)
    dataset_revision                string   INCR per change of any dataset: `rev`, never reused (no ABA)
    job:ID                          hash     every JobRecord field but job_id
    jobs                            zset     job id scored by created_at (ZREVRANGE: newest first, then by id)
    jobs_by_program:NAME            zset     the same, of one program
    jobs_by_dedup:KEY               zset     the same, of one dedup key
    job_cancel:ID                   string   when a cancel was asked of the job (schema 3); expires after a week
    policies                        hash     program -> its execution policy

A dataset's content hash is sha256 (state.policy), which Lua cannot compute: add_examples reads the dataset,
computes the new heads and hash in Python, and a script applies them only if the dataset's `rev` is still
the one read (else it reads again): optimistic, and atomic all the same.

Times are the callers' wall-clock seconds, written as the exact text of the
float (repr) so they read back unchanged. Whether a session or an entry is
live is decided against the caller's `now` (state.policy, mirrored in the Lua);
Redis's own expiries only free memory, a grace period after that, so Redis
drops expired sessions by itself and `cache_expire` keeps the base default.

The session and cache hot path (open/append, cache get/put) goes through _Pipeliner: calls made while a
batch is in flight go out together as the next pipeline, one round trip for all of them. An open of a
session used within the last second (state.policy.open_touches) writes nothing, and without its turns
reads none. redis-py parses replies with hiredis when it is installed (the `redis[hiredis]` extra).

Connection failures raise StateUnavailable and are not retried here: a script
whose reply was lost may have run, and running it again would append a turn
twice. The pool checks a connection before lending it and reconnects, so the
first call after Redis comes back works without reopening the store.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import uuid
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import BusyLoadingError, MasterDownError, NoScriptError, OutOfMemoryError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dspy_pool.errors import ResourceExhausted
from dspy_pool.redact import mask_url
from dspy_pool.state import policy
from dspy_pool.state.base import (
    JOB_FINISHED_STATES, SCHEMA_VERSION, AddedProgram, AppendResult, DatasetInfo, ExampleRecord, JobRecord, NewProgram,
    ProgramRecord, Revision, SessionLimits, SessionRecord, StateError, StateStore, StateUnavailable, StatsCount, TurnRecord,
)

DEFAULT_PREFIX = "dspy_pool:"
# Redis's own expiries free memory; they must never decide liveness before the callers' clocks do (replicas'
# clocks differ a little): a session's keys outlive its TTL by this much, and a cache entry whose expiry is
# already past by Redis's clock (a skewed or fake clock) is kept this long.
_CLOCK_GRACE_MS = 60_000
_EXPIRE_BATCH = 500
_CACHE_SCAN_BATCH = 64
# Errors that say "Redis is not answering right now" rather than "this request is wrong":
# a replica promoted mid-failover answers READONLY until the new primary takes over.
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OSError)

_ADD_PROGRAM = """
-- KEYS: programs, program_versions:NAME, program_next:NAME, program_revision
-- ARGV: prefix, name, content_hash, max_programs, spec, input_names, output_names, takes_history, created_at, meta
-- A client's registration (no meta) is compared with the latest version a client registered; an optimization's
-- with the latest version.
for _, latest in ipairs(redis.call('ZREVRANGE', KEYS[2], 0, -1)) do
  local key = ARGV[1] .. 'program:' .. latest .. ':' .. ARGV[2]
  if ARGV[10] ~= '' or (redis.call('HGET', key, 'meta') or '') == '' then
    if redis.call('HGET', key, 'content_hash') == ARGV[3] then
      return {0, latest, redis.call('HGETALL', key)}
    end
    break
  end
end
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return {-1}
end
local version = tostring(redis.call('INCR', KEYS[3]))
redis.call('HSET', ARGV[1] .. 'program:' .. version .. ':' .. ARGV[2], 'spec', ARGV[5], 'content_hash', ARGV[3],
           'input_names', ARGV[6], 'output_names', ARGV[7], 'takes_history', ARGV[8], 'created_at', ARGV[9],
           'meta', ARGV[10])
redis.call('ZADD', KEYS[2], version, version)
redis.call('SADD', KEYS[1], version .. ':' .. ARGV[2])
redis.call('INCR', KEYS[4])
return {1, version}
"""

_DELETE_PROGRAMS = """
-- KEYS: programs, program_versions:NAME, program_revision, policies, stats:NAME, stats_programs
-- ARGV: prefix, name, version ('0': every version)
local versions = {}
if ARGV[3] == '0' then
  versions = redis.call('ZRANGE', KEYS[2], 0, -1)
elseif redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  versions = {ARGV[3]}
end
local gone = {}
for _, v in ipairs(versions) do
  redis.call('DEL', ARGV[1] .. 'program:' .. v .. ':' .. ARGV[2])
  redis.call('ZREM', KEYS[2], v)
  redis.call('SREM', KEYS[1], v .. ':' .. ARGV[2])
  gone[v] = true
end
if #versions > 0 then
  -- The deleted versions' statistics go with them; the policy and every statistic with the last version.
  if redis.call('ZCARD', KEYS[2]) == 0 then
    redis.call('HDEL', KEYS[4], ARGV[2])
    redis.call('DEL', KEYS[5])
    redis.call('SREM', KEYS[6], ARGV[2])
  else
    for _, field in ipairs(redis.call('HKEYS', KEYS[5])) do
      if gone[string.match(field, '^([^%z]*)')] then
        redis.call('HDEL', KEYS[5], field)
      end
    end
  end
  redis.call('INCR', KEYS[3])
end
return versions
"""

# Shared by the session scripts: drop one session's keys and its index entry; a session's turns as one JSON
# array (each turn is stored as JSON text), one reply to parse instead of one per turn.
_SESSION_HELPERS = """
local function drop(prefix, sessions, id)
  redis.call('DEL', prefix .. 'session_meta:' .. id, prefix .. 'session_turns:' .. id)
  redis.call('ZREM', sessions, id)
end
local function turns_json(key)
  return '[' .. table.concat(redis.call('LRANGE', key, 0, -1), ',') .. ']'
end
"""

_OPEN_SESSION = _SESSION_HELPERS + """
-- open_session and append_turn. KEYS: sessions, session_meta:ID, session_turns:ID
-- ARGV: prefix, id, turn, has_turn ('1' appends ARGV[3]), now, ttl_s, max_turns, max_sessions, protect_s, ttl_ms,
--       with_turns ('1': reply with the turns), touch_slack_s (state.policy.open_touch_slack_s)
local prefix, id, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[6])
local max_turns, cap, protect = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local started, evicted = 0, {}
local meta = redis.call('HMGET', KEYS[2], 'created_at', 'last_used_at')
local last = meta[2]
if last and ARGV[4] == '0' and now - tonumber(last) <= ttl and now - tonumber(last) < tonumber(ARGV[12]) then
  -- An open of a session used moments ago (state.policy.open_touches): a read; the append that follows touches it.
  return {0, evicted, meta[1], last, ARGV[11] == '1' and turns_json(KEYS[3]) or ''}
end
if not last or now - tonumber(last) > ttl then
  -- Expired, never used, or expired by Redis itself: whatever is left under this id is not this session.
  drop(prefix, KEYS[1], id)
  -- state.policy.make_room, step for step: walk the LRU index, decide, and delete only if the answer is yes.
  local count, doomed, rank = redis.call('ZCARD', KEYS[1]), {}, 0
  while count >= cap do
    local oldest = redis.call('ZRANGE', KEYS[1], rank, rank, 'WITHSCORES')
    if not oldest[1] then
      return {-1, ARGV[5]}
    end
    local used = tonumber(oldest[2])
    if now - used > ttl or redis.call('EXISTS', prefix .. 'session_meta:' .. oldest[1]) == 0 then
      doomed[#doomed + 1] = oldest[1]
    elseif now - used >= protect then
      doomed[#doomed + 1] = oldest[1]
      evicted[#evicted + 1] = oldest[1]
    else
      return {-1, oldest[2]}
    end
    count, rank = count - 1, rank + 1
  end
  for _, other in ipairs(doomed) do
    drop(prefix, KEYS[1], other)
  end
  redis.call('HSET', KEYS[2], 'created_at', ARGV[5])
  started = 1
end
if ARGV[4] == '1' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  if max_turns > 0 then
    redis.call('LTRIM', KEYS[3], -max_turns, -1)
  else
    redis.call('DEL', KEYS[3])
  end
  -- state.policy.first_kept_by_size: the newest turns that fit max_bytes, the newest always (a turn's size here is
  -- its stored form, a few bytes over its inputs and outputs).
  local max_bytes = tonumber(ARGV[13])
  if max_bytes > 0 then
    local held, total = redis.call('LRANGE', KEYS[3], 0, -1), 0
    for _, item in ipairs(held) do
      total = total + #item
    end
    local first = 1
    while total > max_bytes and first < #held do
      total, first = total - #held[first], first + 1
    end
    if first > 1 then
      redis.call('LTRIM', KEYS[3], first - 1, -1)
    end
  end
end
redis.call('HSET', KEYS[2], 'last_used_at', ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[5], id)
-- Redis drops what nobody touches for a TTL by itself; the test of liveness stays the callers' clock.
redis.call('PEXPIRE', KEYS[2], ARGV[10])
redis.call('PEXPIRE', KEYS[3], ARGV[10])
return {started, evicted, started == 1 and ARGV[5] or meta[1], ARGV[5], ARGV[11] == '1' and turns_json(KEYS[3]) or ''}
"""

_GET_SESSION = _SESSION_HELPERS + """
-- KEYS: sessions, session_meta:ID, session_turns:ID
-- ARGV: id, now, ttl_s
local meta = redis.call('HMGET', KEYS[2], 'created_at', 'last_used_at')
if meta[2] and tonumber(ARGV[2]) - tonumber(meta[2]) <= tonumber(ARGV[3]) then
  return {meta[1], meta[2], turns_json(KEYS[3])}
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
return false
"""

_EXPIRE_SESSIONS = _SESSION_HELPERS + """
-- KEYS: sessions
-- ARGV: prefix, now, ttl_s, batch
-- Candidates by score with a second of slack for rounding, then state.policy.is_expired exactly; the
-- index is in last_used_at order, so the first live one ends the sweep.
local now, ttl, batch = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now - ttl + 1), 'WITHSCORES',
                       'LIMIT', 0, batch)
local expired = {}
for i = 1, #ids, 2 do
  if not (now - tonumber(ids[i + 1]) > ttl) then
    return {0, expired}
  end
  drop(ARGV[1], KEYS[1], ids[i])
  expired[#expired + 1] = ids[i]
end
return {#ids == 2 * batch and 1 or 0, expired}
"""

_STATS_INTS = ("calls", "errors", "feedback_count", "feedback_examples")  # StatsCount's counts kept with HINCRBY
_STATS_BATCH_KEPT_S = 3600  # a batch is retried within seconds or minutes; its id is kept an hour

_ADD_STATS = """
-- KEYS: stats_batch:ID, stats_programs, then per count: stats:PROGRAM, program_versions:PROGRAM
-- ARGV: seconds to keep the batch id, then per count: program, version, arm, calls, errors, feedback_count,
--       feedback_sum, feedback_examples
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0  -- added already: a retry of a batch whose reply was lost
end
local names = {'calls', 'errors', 'feedback_count', 'feedback_sum', 'feedback_examples'}
for i = 1, (#KEYS - 2) / 2 do
  local stats, versions = KEYS[1 + 2 * i], KEYS[2 + 2 * i]
  local a = 2 + (i - 1) * 8
  local program, version, arm = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local held
  if version == '0' then held = redis.call('ZCARD', versions) > 0 else held = redis.call('ZSCORE', versions, version) end
  if held then  -- a deleted version's (or program's) late counts are dropped
    for j, name in ipairs(names) do
      local value = ARGV[a + 2 + j]
      if tonumber(value) ~= 0 then
        local field = version .. '\0' .. arm .. '\0' .. name
        if name == 'feedback_sum' then
          redis.call('HINCRBYFLOAT', stats, field, value)
        else
          redis.call('HINCRBY', stats, field, value)
        end
      end
    end
    redis.call('SADD', KEYS[2], program)
  end
end
return 1
"""

_CACHE_FORGET = """
-- An entry's hit count, expiry and size (its hash is gone, or deleted by the caller).
local function forget(key)
  redis.call('ZREM', KEYS[2], key)
  redis.call('ZREM', KEYS[3], key)
  local size = redis.call('HGET', KEYS[4], key)
  if size then
    redis.call('HDEL', KEYS[4], key)
    redis.call('DECRBY', KEYS[5], size)
  end
end
"""

_CACHE_PUT = _CACHE_FORGET + """
-- KEYS: cache:KEY, cache_hits, cache_expiry, cache_sizes, cache_bytes
-- ARGV: value, expires_at, KEY, grace_ms, size, max_bytes (0: none), the prefix of cache:KEY
local size, max = tonumber(ARGV[5]), tonumber(ARGV[6])
if max > 0 and size > max then return 0 end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = math.floor(tonumber(ARGV[2]) * 1000)
if at <= now_ms then at = now_ms + tonumber(ARGV[4]) end
local at_text = string.format('%d', at)
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'e', ARGV[2])
redis.call('PEXPIREAT', KEYS[1], at_text)
redis.call('ZADD', KEYS[2], 'NX', 0, ARGV[3])
redis.call('ZADD', KEYS[3], at_text, ARGV[3])
local old = tonumber(redis.call('HGET', KEYS[4], ARGV[3]) or '0')
redis.call('HSET', KEYS[4], ARGV[3], size)
local total = redis.call('INCRBY', KEYS[5], size - old)
-- Redis dropped these entries at their expiry; forget their hit counts too (a few per put keeps both zsets bounded).
local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. string.format('%d', now_ms), 'LIMIT', 0, 100)
for _, key in ipairs(gone) do
  forget(key)
end
-- Past max_bytes, the entries that expire soonest make room (never the one just put).
if max > 0 then
  total = tonumber(redis.call('GET', KEYS[5]))
  local skip = 0
  while total > max do
    local first = redis.call('ZRANGE', KEYS[3], skip, skip)
    if #first == 0 then break end
    if first[1] == ARGV[3] then
      skip = skip + 1
    else
      total = total - tonumber(redis.call('HGET', KEYS[4], first[1]) or '0')
      redis.call('DEL', ARGV[7] .. first[1])
      forget(first[1])
    end
  end
end
return 1
"""

_CACHE_GET = _CACHE_FORGET + """
-- KEYS: cache:KEY, cache_hits, cache_expiry, cache_sizes, cache_bytes
-- ARGV: now, KEY
local entry = redis.call('HMGET', KEYS[1], 'v', 'e')
if entry[1] and tonumber(ARGV[1]) < tonumber(entry[2]) then
  redis.call('ZINCRBY', KEYS[2], 1, ARGV[2])
  return entry[1]
end
redis.call('DEL', KEYS[1])
forget(ARGV[2])
return false
"""


_MIGRATE_SCHEMA = """
-- KEYS: schema_version. ARGV: from, to. Only if no other replica has written another version meanwhile.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

_ADD_EXAMPLES = """
-- KEYS: datasets, dataset:NAME, dataset_examples:N:SPLIT:NAME, dataset_revision
-- ARGV: rev read (or '' for none), name, split, total, count, head, hash, updated_at, example...
-- Applies what the caller computed from the dataset as it was at `rev`; 0 if it changed since (read again).
if (redis.call('HGET', KEYS[2], 'rev') or '') ~= ARGV[1] then
  return 0
end
for i = 9, #ARGV, 1000 do
  redis.call('RPUSH', KEYS[3], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
local fields = {'rev', redis.call('INCR', KEYS[4]), 'total', ARGV[4], 'hash', ARGV[7], 'updated_at', ARGV[8]}
if #ARGV >= 9 then
  table.insert(fields, 'count:' .. ARGV[3])
  table.insert(fields, ARGV[5])
  table.insert(fields, 'head:' .. ARGV[3])
  table.insert(fields, ARGV[6])
end
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('SADD', KEYS[1], ARGV[2])
return 1
"""

_DELETE_DATASET = """
-- KEYS: datasets, dataset:NAME. ARGV: prefix, name
local fields = redis.call('HKEYS', KEYS[2])
if #fields == 0 then
  return 0
end
for _, field in ipairs(fields) do
  if string.sub(field, 1, 6) == 'count:' then
    local split = string.sub(field, 7)
    redis.call('DEL', ARGV[1] .. 'dataset_examples:' .. #split .. ':' .. split .. ':' .. ARGV[2])
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[2])
return 1
"""

_PUT_JOB = """
-- KEYS: job:ID, jobs. ARGV: prefix, id, program, dedup_key, created_at, then the hash's field/value pairs
-- A job in a finished state (base.JOB_FINISHED_STATES) is final: kept, and 0 returned.
local old = redis.call('HMGET', KEYS[1], 'program', 'dedup_key', 'state')
if FINISHED then
  return 0
end
if old[1] then
  redis.call('ZREM', ARGV[1] .. 'jobs_by_program:' .. old[1], ARGV[2])
  redis.call('ZREM', ARGV[1] .. 'jobs_by_dedup:' .. old[2], ARGV[2])
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
redis.call('ZADD', ARGV[1] .. 'jobs_by_program:' .. ARGV[3], ARGV[5], ARGV[2])
redis.call('ZADD', ARGV[1] .. 'jobs_by_dedup:' .. ARGV[4], ARGV[5], ARGV[2])
return 1
""".replace("if FINISHED", "if " + " or ".join(f"old[3] == '{state}'" for state in JOB_FINISHED_STATES))

_CLAIM_JOB = """
-- KEYS: job:ID. ARGV: owner, now, lease_expires_at. state.policy.can_claim, mirrored.
local job = redis.call('HMGET', KEYS[1], 'owner', 'lease_expires_at')
if not job[2] then
  return 0
end
if job[1] == '' or job[1] == ARGV[1] or tonumber(ARGV[2]) >= tonumber(job[2]) then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'lease_expires_at', ARGV[3])
  return 1
end
return 0
"""

# A dataset changed by another caller between the read and the script: read again, at most this often.
_ADD_EXAMPLES_TRIES = 100
_JOB_SCAN_BATCH = 64
_JOB_CANCEL_TTL_S = 7 * 24 * 3600


_T = TypeVar("_T")


# Errors Redis answers while it cannot take a command for now: full under maxmemory (noeviction), loading its data
# after a restart, a script running past its time limit. Raised inside a script they arrive as a plain ResponseError
# with the words alone, so both are looked for.
_FULL = "used memory > 'maxmemory'"
_REFUSING_FOR_NOW = (_FULL, "LOADING", "MASTERDOWN", "BUSY")


def _refusing_for_now(exc: RedisError) -> bool:
    return isinstance(exc, (OutOfMemoryError, BusyLoadingError, MasterDownError)) or any(
        words in str(exc) for words in _REFUSING_FOR_NOW)


_FULL_HINT = ("; it is full (maxmemory with the noeviction policy): free memory (close sessions, lower "
              "--result-cache-store-max-bytes) or raise maxmemory")


def _translated(method: Callable[..., Awaitable[_T]]) -> Callable[..., Awaitable[_T]]:
    """Redis's errors as the store's: unreachable -> StateUnavailable, anything else Redis refused -> StateError."""

    @functools.wraps(method)
    async def wrapper(self: RedisStore, *args: Any, **kwargs: Any) -> _T:
        if self._client is None:
            raise StateError(f"redis store at {self.description} is not open")
        try:
            return await method(self, *args, **kwargs)
        except _UNAVAILABLE as exc:
            raise StateUnavailable(f"redis at {self.description} is unavailable ({method.__name__}): {exc}") from exc
        except RedisError as exc:
            if _refusing_for_now(exc):  # passes by itself (memory freed, loading done): not our fault
                full = isinstance(exc, OutOfMemoryError) or _FULL in str(exc)
                raise StateUnavailable(f"redis at {self.description} refuses writes for now ({method.__name__}): {exc}"
                                       + (_FULL_HINT if full else "")) from exc
            raise StateError(f"redis at {self.description}: {method.__name__} failed: {exc}") from exc

    return wrapper


def _text(value: float) -> str:
    """A float as text Redis and Lua read back to the same double."""
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number of seconds, got {value!r}")
    return repr(float(value))


def _program(name: str, version: int, fields: dict[bytes, bytes]) -> ProgramRecord:
    return ProgramRecord(
        name=name, version=version, spec=fields[b"spec"], content_hash=fields[b"content_hash"].decode(),
        input_names=tuple(json.loads(fields[b"input_names"])), output_names=tuple(json.loads(fields[b"output_names"])),
        takes_history=fields[b"takes_history"] == b"1", created_at=float(fields[b"created_at"]),
        meta=fields.get(b"meta", b""),
    )


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2]))


def _encode_turn(turn: TurnRecord) -> bytes:
    return json.dumps([turn.program, turn.inputs_json, turn.outputs_json], separators=(",", ":")).encode()


def _session(session_id: str, created_at: bytes | str, last_used_at: bytes | str, turns_json: bytes) -> SessionRecord:
    """A session from its times and its turns as one JSON array of [program, inputs_json, outputs_json] (b"": none)."""
    turns = tuple(TurnRecord(*turn) for turn in json.loads(turns_json)) if turns_json else ()
    return SessionRecord(session_id, float(created_at), float(last_used_at), turns)


def _encode_example(example: ExampleRecord) -> bytes:
    return json.dumps([example.inputs_json, example.outputs_json, example.source, example.created_at],
                      separators=(",", ":")).encode()


def _dataset(name: str, fields: dict[bytes, bytes]) -> DatasetInfo:
    counts = sorted((k[6:].decode(), int(v)) for k, v in fields.items() if k.startswith(b"count:") and int(v) > 0)
    return DatasetInfo(name, tuple(counts), fields[b"hash"].decode(), float(fields[b"updated_at"]))


def _job_fields(job: JobRecord) -> list[bytes | str]:
    return ["dedup_key", job.dedup_key, "program", job.program, "state", job.state, "priority", str(int(job.priority)),
            "created_at", _text(job.created_at), "updated_at", _text(job.updated_at), "request", job.request,
            "progress", job.progress, "result", job.result, "error", job.error, "owner", job.owner,
            "lease_expires_at", _text(job.lease_expires_at)]


def _job(job_id: str, fields: dict[bytes, bytes]) -> JobRecord:
    return JobRecord(job_id, fields[b"dedup_key"].decode(), fields[b"program"].decode(), fields[b"state"].decode(),
                     int(fields[b"priority"]), float(fields[b"created_at"]), float(fields[b"updated_at"]),
                     fields[b"request"], fields[b"progress"], fields[b"result"], fields[b"error"].decode(),
                     fields[b"owner"].decode(), float(fields[b"lease_expires_at"]))


class _Pipeliner:
    """Script calls made at about the same time share one round trip (the session and cache hot path).

        caller ──run(script, keys, args)──> pending ──> EVALSHAs packed into one write (at most WINDOW in flight) ──> futures

    Pending calls go out together on one connection as a pipeline (no MULTI: each script is still its own atomic
    unit, run in order): one write and one read for all of them instead of one each. At most WINDOW batches are
    in flight; calls made meanwhile wait for the next one (at most a round trip), which is what makes batches form
    under load: measured with bench/state.py on 2 cores, one batch in flight gave the largest batches and the least
    CPU per call (the front's loop and redis-server's) of 1, 2 or none. A lone call goes out as it would without this.
    With one batch in flight one connection is enough, so the pipeliner keeps one out of the pool and talks to it
    directly: redis-py's Pipeline and the pool's lend/return cost more per batch than the round trip's own work
    (measured: ~25 us of ~95 us for a lone call). Before each batch it is checked as the pool checks a connection
    it lends (a server restarted since is reconnected to, not failed on), and a failed one is dropped.
    A script the server has forgotten (it was restarted) answers NOSCRIPT without running: such a call goes
    again through redis-py's Script, which loads it. A connection that fails fails every call of its batch
    (StateUnavailable: each may have run; none is retried). A caller that stops waiting does not stop its call;
    its answer is dropped.
    """

    WINDOW = 1
    MAX_BATCH = 128

    def __init__(self) -> None:
        self._pending: list[tuple[Any, list, list, asyncio.Future]] = []
        self._sending: set[asyncio.Task] = set()
        self._scheduled = False
        self._conn: Any = None  # the connection taken from the pool, or None (none yet, or dropped)
        self._pool: Any = None

    async def run(self, script: Any, keys: list, args: list) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._pending and not self._scheduled and len(self._sending) < self.WINDOW:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if len(self._sending) >= self.WINDOW:
            return  # a batch in flight ends first and flushes again
        batch, self._pending = self._pending[:self.MAX_BATCH], self._pending[self.MAX_BATCH:]
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task) -> None:
        self._sending.discard(task)
        self._schedule()

    async def _connection(self, client: aioredis.Redis) -> Any:
        if self._conn is None:
            self._pool = client.connection_pool
            self._conn = await self._pool.get_connection()
        else:
            await self._pool.ensure_connection(self._conn)
        return self._conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()
            await self._pool.release(conn)

    async def _roundtrip(self, batch: list[tuple[Any, list, list, asyncio.Future]]) -> list[Any]:
        conn = await self._connection(batch[0][0].registered_client)
        await conn.send_packed_command(conn.pack_commands(
            [("EVALSHA", script.sha, len(keys), *keys, *args) for script, keys, args, _ in batch]), check_health=False)
        replies: list[Any] = []
        for _ in batch:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # that script's own error; the connection reads on
                replies.append(exc)
        return replies

    async def _send(self, batch: list[tuple[Any, list, list, asyncio.Future]]) -> None:
        replies: list[Any]
        try:
            replies = await self._roundtrip(batch)
        except asyncio.CancelledError:
            await asyncio.shield(self._drop())  # replies half read: the connection cannot be reused
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # the connection failed: every call of the batch
            await self._drop()
            replies = [exc] * len(batch)
        for (script, keys, args, future), reply in zip(batch, replies):
            if isinstance(reply, NoScriptError):  # not run: load the script and run the call now
                try:
                    reply = await script(keys=keys, args=args)
                except Exception as exc:
                    reply = exc
            if future.done():  # its caller stopped waiting
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def drain(self) -> None:
        """Wait until every call made so far has had its answer, then give the connection back (before the pool closes)."""
        while self._pending or self._sending:
            self._schedule()
            await asyncio.sleep(0)
            if self._sending:
                await asyncio.gather(*self._sending, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn)


class RedisStore(StateStore):
    """State shared by every replica pointed at one Redis (a db number and a key prefix)."""

    shared = True  # several replicas at once: job leases decide who runs what

    durable = True

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, max_connections: int = 64,
                 connect_timeout_s: float = 3.0, socket_timeout_s: float = 5.0, pool_timeout_s: float = 10.0) -> None:
        self._url = url
        self.description = mask_url(url)
        self._prefix = prefix.encode()
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._socket_timeout_s = socket_timeout_s
        self._pool_timeout_s = pool_timeout_s
        self._client: aioredis.Redis | None = None
        self._pipeliner = _Pipeliner()

    def _key(self, *parts: str | bytes) -> bytes:
        return self._prefix + b"".join(p if isinstance(p, bytes) else p.encode() for p in parts)

    # -- lifecycle -------------------------------------------------------------
    async def open(self) -> None:
        if self._client is not None:
            return
        try:
            # Bounded (DESIGN rule 7): at the cap, callers wait up to pool_timeout_s for a free connection.
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url, max_connections=self._max_connections, timeout=self._pool_timeout_s,
                socket_connect_timeout=self._connect_timeout_s, socket_timeout=self._socket_timeout_s,
                retry=Retry(NoBackoff(), 0), decode_responses=False,
            )
        except ValueError as exc:
            raise StateError(f"state {self.description}: not a usable redis URL: {exc}") from exc
        client = aioredis.Redis.from_pool(pool)
        try:
            await client.ping()
        except (*_UNAVAILABLE, RedisError) as exc:
            await client.aclose()
            raise StateError(f"cannot reach redis at {self.description}: {exc}") from exc
        try:
            await self._check_schema(client)
        except BaseException:
            await client.aclose()
            raise
        self._add_program = client.register_script(_ADD_PROGRAM)
        self._delete_programs = client.register_script(_DELETE_PROGRAMS)
        self._add_stats = client.register_script(_ADD_STATS)
        self._open_session = client.register_script(_OPEN_SESSION)
        self._get_session = client.register_script(_GET_SESSION)
        self._expire_sessions = client.register_script(_EXPIRE_SESSIONS)
        self._cache_put = client.register_script(_CACHE_PUT)
        self._cache_get = client.register_script(_CACHE_GET)
        self._add_examples = client.register_script(_ADD_EXAMPLES)
        self._delete_dataset = client.register_script(_DELETE_DATASET)
        self._put_job = client.register_script(_PUT_JOB)
        self._claim_job = client.register_script(_CLAIM_JOB)
        self._client = client

    async def _check_schema(self, client: aioredis.Redis) -> None:
        """Claim an empty database for this schema; refuse one a newer version wrote. Never overwrites."""
        key = self._key("schema_version")
        where = f"redis at {self.description} (key {key.decode(errors='replace')})"
        try:
            await client.set(key, SCHEMA_VERSION, nx=True)
            raw = await client.get(key)
        except _UNAVAILABLE as exc:
            raise StateError(f"cannot reach redis at {self.description}: {exc}") from exc
        except RedisError as exc:
            raise StateError(f"{where}: cannot read the schema version: {exc}") from exc
        try:
            stored = int(raw)
        except (TypeError, ValueError):
            raise StateError(f"{where} holds {raw!r}, not a schema version; left as it is") from None
        if stored > SCHEMA_VERSION:
            raise StateError(
                f"{where} holds schema version {stored}, written by a newer dspy-pool; this one reads up to "
                f"version {SCHEMA_VERSION}. Upgrade dspy-pool or use another database or prefix; nothing was changed."
            )
        if stored < 1:
            raise StateError(f"{where} holds schema version {stored}, which no dspy-pool writes; left as it is")
        if stored < SCHEMA_VERSION:
            # 1 -> 2 -> 3 rewrite nothing (a program hash without `meta` reads as b""; datasets, jobs, policies and
            # job cancels are new keys), so a replica still on an older version keeps working beside this one
            # (one on version 2 just never sees a cancel asked of a job it runs). Only the version moves.
            try:
                await client.eval(_MIGRATE_SCHEMA, 1, key, stored, SCHEMA_VERSION)
            except _UNAVAILABLE as exc:
                raise StateError(f"cannot reach redis at {self.description}: {exc}") from exc
            except RedisError as exc:
                raise StateError(f"{where}: cannot record schema version {SCHEMA_VERSION}: {exc}") from exc
        try:
            # Only into a database this version may use; the first opener's epoch stays (a database from before
            # epochs gets its own now).
            await client.set(self._key("epoch"), uuid.uuid4().hex, nx=True)
        except (*_UNAVAILABLE, RedisError) as exc:
            raise StateError(f"cannot record the epoch of redis at {self.description}: {exc}") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await self._pipeliner.drain()
            finally:
                await client.aclose()

    # -- programs -------------------------------------------------------------
    @_translated
    async def add_program(self, program: NewProgram, max_programs: int) -> AddedProgram:
        name = program.name
        reply = await self._add_program(
            keys=[self._key("programs"), self._key("program_versions:", name), self._key("program_next:", name),
                  self._key("program_revision")],
            args=[self._prefix, name, program.content_hash, max_programs, program.spec,
                  json.dumps(list(program.input_names)), json.dumps(list(program.output_names)),
                  "1" if program.takes_history else "0", _text(program.created_at), program.meta],
        )
        if reply[0] == -1:
            raise ResourceExhausted(f"the registry holds its maximum of {max_programs} program versions; delete some first")
        version = int(reply[1])
        if reply[0] == 0:
            return AddedProgram(_program(name, version, _pairs(reply[2])), created=False)
        record = ProgramRecord(name, version, program.spec, program.content_hash, tuple(program.input_names),
                               tuple(program.output_names), program.takes_history, program.created_at, program.meta)
        return AddedProgram(record, created=True)

    @_translated
    async def delete_programs(self, name: str, version: int = 0) -> list[int]:
        deleted = await self._delete_programs(
            keys=[self._key("programs"), self._key("program_versions:", name), self._key("program_revision"),
                  self._key("policies"), self._key("stats:", name), self._key("stats_programs")],
            args=[self._prefix, name, str(int(version))],
        )
        return sorted(int(v) for v in deleted)

    @_translated
    async def list_programs(self) -> list[ProgramRecord]:
        # Not one snapshot: a version deleted between the two steps is skipped, one added is missed until
        # the revision (bumped by that add) makes the replica list again.
        members = sorted(await self._client.smembers(self._key("programs")))
        records = []
        for start in range(0, len(members), 256):
            chunk = members[start:start + 256]
            async with self._client.pipeline(transaction=False) as pipe:
                for member in chunk:
                    pipe.hgetall(self._key("program:", member))
                replies = await pipe.execute()
            for member, fields in zip(chunk, replies):
                if fields:
                    version, name = member.decode().split(":", 1)
                    records.append(_program(name, int(version), fields))
        records.sort(key=lambda r: (r.name, r.version))
        return records

    @_translated
    async def revision(self) -> Revision:
        epoch, programs = await self._client.mget(self._key("epoch"), self._key("program_revision"))
        return Revision((epoch or b"").decode(), int(programs or 0))

    # -- sessions -------------------------------------------------------------
    def _session_keys(self, session_id: str) -> list[bytes]:
        return [self._key("sessions"), self._key("session_meta:", session_id), self._key("session_turns:", session_id)]

    @_translated
    async def get_session(self, session_id: str, now: float, limits: SessionLimits) -> SessionRecord | None:
        reply = await self._get_session(keys=self._session_keys(session_id),
                                        args=[session_id, _text(now), _text(limits.ttl_s)])
        return None if reply is None else _session(session_id, *reply)

    async def _open(self, session_id: str, turn: TurnRecord | None, now: float, limits: SessionLimits,
                    with_turns: bool) -> AppendResult:
        reply = await self._pipeliner.run(
            self._open_session, self._session_keys(session_id), [self._prefix, session_id, b"" if turn is None else _encode_turn(turn), "0" if turn is None else "1",
                  _text(now), _text(limits.ttl_s), limits.max_turns, limits.max_sessions, _text(limits.protect_s),
                  math.ceil(limits.ttl_s * 1000) + _CLOCK_GRACE_MS, "1" if with_turns else "0",
                  _text(policy.open_touch_slack_s(limits)), limits.max_bytes])
        if reply[0] == -1:
            raise policy.sessions_full(limits, policy.Room(retry_after_ms=policy.retry_after_ms(float(reply[1]), now, limits)))
        started, evicted, created_at, last_used_at, turns = reply
        return AppendResult(_session(session_id, created_at, last_used_at, turns), started=bool(started),
                            evicted=tuple(e.decode() for e in evicted))

    @_translated
    async def open_session(self, session_id: str, now: float, limits: SessionLimits,
                           with_turns: bool = True) -> AppendResult:
        return await self._open(session_id, None, now, limits, with_turns)

    @_translated
    async def append_turn(self, session_id: str, turn: TurnRecord, now: float, limits: SessionLimits,
                          with_turns: bool = False) -> AppendResult:
        return await self._open(session_id, turn, now, limits, with_turns)

    @_translated
    async def delete_session(self, session_id: str) -> SessionRecord | None:
        sessions, meta, turns = self._session_keys(session_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hmget(meta, "created_at", "last_used_at").lrange(turns, 0, -1).delete(meta, turns).zrem(sessions, session_id)
            (created_at, last_used_at), held, _, _ = await pipe.execute()
        return None if last_used_at is None else _session(session_id, created_at, last_used_at, b"[" + b",".join(held) + b"]")

    @_translated
    async def expire_sessions(self, now: float, limits: SessionLimits) -> list[str]:
        expired: list[str] = []
        more = True
        while more:  # in batches, so one sweep of many sessions never holds Redis for long
            more, ids = await self._expire_sessions(keys=[self._key("sessions")],
                                                    args=[self._prefix, _text(now), _text(limits.ttl_s), _EXPIRE_BATCH])
            expired.extend(i.decode() for i in ids)
        return expired

    @_translated
    async def count_sessions(self) -> int:
        return await self._client.zcard(self._key("sessions"))

    # -- result cache ---------------------------------------------------------
    def _cache_keys(self, key: bytes) -> list[bytes]:
        return [self._key("cache:", key), self._key("cache_hits"), self._key("cache_expiry"), self._key("cache_sizes"),
                self._key("cache_bytes")]

    @_translated
    async def cache_get(self, key: bytes, now: float) -> bytes | None:
        return await self._pipeliner.run(self._cache_get, self._cache_keys(key), [_text(now), key])

    @_translated
    async def cache_put(self, key: bytes, value: bytes, expires_at: float, max_bytes: int = 0) -> None:
        await self._pipeliner.run(self._cache_put, self._cache_keys(key),
                                  [value, _text(expires_at), key, _CLOCK_GRACE_MS, policy.entry_bytes(key, value), max_bytes,
                                   self._key("cache:")])

    @_translated
    async def cache_top(self, limit: int, max_bytes: int, now: float) -> list[tuple[bytes, bytes, float]]:
        # A read for warming, not a snapshot: most-hit first in batches, each through state.policy.pick_top
        # with what is left of the count and the byte budget (the same as one pass over them all).
        picked: list[tuple[bytes, bytes, float]] = []
        left = max_bytes
        if limit <= 0 or left <= 0:
            return picked
        read = lambda pipe, key: pipe.hmget(self._key("cache:", key), "v", "e")  # noqa: E731
        async for keys, entries in self._ranked(self._key("cache_hits"), _CACHE_SCAN_BATCH, read):
            live = [(key, value, float(expires_at)) for key, (value, expires_at) in zip(keys, entries)
                    if value is not None and now < float(expires_at)]
            for key, value, expires_at in policy.pick_top(live, limit - len(picked), left):
                picked.append((key, value, expires_at))
                left -= policy.entry_bytes(key, value)
            if len(picked) >= limit or left <= 0:
                break
        return picked

    async def _ranked(self, index: bytes, batch: int, read) -> AsyncIterator[tuple[list[bytes], list]]:
        """A sorted set's members, highest score first, `batch` at a time, each batch with `read(pipe, member)`'s
        replies from one pipelined round trip. Stop iterating to stop reading."""
        start = 0
        while True:
            members = await self._client.zrevrange(index, start, start + batch - 1)
            if not members:
                return
            start += len(members)
            async with self._client.pipeline(transaction=False) as pipe:
                for member in members:
                    read(pipe, member)
                replies = await pipe.execute()
            yield members, replies

    # -- datasets ---------------------------------------------------------------
    def _examples_key(self, dataset: str, split: str) -> bytes:
        return self._key("dataset_examples:", str(len(split.encode())), ":", split, ":", dataset)

    @_translated
    async def add_examples(self, dataset: str, split: str, examples: list[ExampleRecord],
                           max_examples: int) -> DatasetInfo:
        meta_key = self._key("dataset:", dataset)
        encoded = [_encode_example(e) for e in examples]
        for _ in range(_ADD_EXAMPLES_TRIES):
            fields = await self._client.hgetall(meta_key)
            stored = int(fields.get(b"total", 0))
            if not policy.examples_fit(stored, len(examples), max_examples):
                raise policy.examples_full(dataset, stored, len(examples), max_examples)
            if fields and not examples:
                return _dataset(dataset, fields)
            splits = {k[6:].decode(): (int(v), fields[b"head:" + k[6:]].decode())
                      for k, v in fields.items() if k.startswith(b"count:")}
            count, head = splits.get(split, (0, policy.EMPTY_HEAD))
            count, head = count + len(examples), policy.chain_examples(head, examples)
            if examples:
                splits[split] = count, head
            content_hash = policy.dataset_hash((name, c, h) for name, (c, h) in splits.items())
            updated_at = max([float(fields.get(b"updated_at", 0.0))] + [e.created_at for e in examples])
            applied = await self._add_examples(
                keys=[self._key("datasets"), meta_key, self._examples_key(dataset, split), self._key("dataset_revision")],
                args=[fields.get(b"rev", b""), dataset, split, stored + len(examples), count, head, content_hash,
                      _text(updated_at), *encoded],
            )
            if applied:
                counts = tuple(sorted((name, c) for name, (c, _) in splits.items() if c > 0))
                return DatasetInfo(dataset, counts, content_hash, updated_at)
        raise StateUnavailable(f"redis at {self.description}: dataset {dataset!r} kept changing under add_examples; "
                               "try again")

    @_translated
    async def get_dataset(self, dataset: str) -> DatasetInfo | None:
        fields = await self._client.hgetall(self._key("dataset:", dataset))
        return _dataset(dataset, fields) if fields else None

    @_translated
    async def list_datasets(self) -> list[DatasetInfo]:
        names, replies = await self._members_hashes("datasets", "dataset:")
        return [_dataset(name, fields) for name, fields in zip(names, replies) if fields]

    async def _members_hashes(self, index: str, prefix: str) -> tuple[list[str], list[dict]]:
        """A set's members, sorted, and the hash PREFIX+member of each (one pipelined round trip)."""
        members = sorted(member.decode() for member in await self._client.smembers(self._key(index)))
        async with self._client.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.hgetall(self._key(prefix, member))
            return members, await pipe.execute()

    @_translated
    async def load_examples(self, dataset: str, split: str) -> list[ExampleRecord]:
        rows = await self._client.lrange(self._examples_key(dataset, split), 0, -1)
        return [ExampleRecord(*json.loads(row)) for row in rows]

    @_translated
    async def delete_dataset(self, dataset: str) -> bool:
        return bool(await self._delete_dataset(keys=[self._key("datasets"), self._key("dataset:", dataset)],
                                               args=[self._prefix, dataset]))

    # -- jobs -------------------------------------------------------------------
    @_translated
    async def put_job(self, job: JobRecord) -> bool:
        return bool(await self._put_job(keys=[self._key("job:", job.job_id), self._key("jobs")],
                            args=[self._prefix, job.job_id, job.program, job.dedup_key, _text(job.created_at),
                                  *_job_fields(job)]))

    @_translated
    async def get_job(self, job_id: str) -> JobRecord | None:
        fields = await self._client.hgetall(self._key("job:", job_id))
        return _job(job_id, fields) if fields else None

    async def _newest_jobs(self, index: bytes, states: tuple[str, ...], limit: int) -> list[JobRecord]:
        """Jobs of a zset index, newest first, in `states` (any when empty), at most `limit`: read in batches."""
        found: list[JobRecord] = []
        if limit <= 0:
            return found
        read = lambda pipe, job_id: pipe.hgetall(self._key("job:", job_id))  # noqa: E731
        async for ids, replies in self._ranked(index, limit if not states else max(limit, _JOB_SCAN_BATCH), read):
            found.extend(job for job in (_job(i.decode(), f) for i, f in zip(ids, replies) if f)
                         if not states or job.state in states)
            if len(found) >= limit:
                break
        return found[:limit]

    @_translated
    async def list_jobs(self, program: str = "", states: tuple[str, ...] = (), limit: int = 100) -> list[JobRecord]:
        index = self._key("jobs_by_program:", program) if program else self._key("jobs")
        return await self._newest_jobs(index, tuple(states), limit)

    @_translated
    async def prune_jobs(self, keep: int) -> int:
        # Not one script: the finished jobs are read in batches, then each old one is removed with its index entries.
        # A job that is finished stays finished (put_job refuses to change it), so nothing read here changes meanwhile.
        read = lambda pipe, job_id: pipe.hgetall(self._key("job:", job_id))  # noqa: E731
        finished: list[JobRecord] = []
        async for ids, replies in self._ranked(self._key("jobs"), _JOB_SCAN_BATCH, read):  # newest first
            finished.extend(job for job in (_job(i.decode(), f) for i, f in zip(ids, replies) if f)
                            if job.state in JOB_FINISHED_STATES)
        gone = finished[max(0, keep):]
        async with self._client.pipeline(transaction=False) as pipe:
            for job in gone:
                pipe.zrem(self._key("jobs"), job.job_id)
                pipe.zrem(self._key("jobs_by_program:", job.program), job.job_id)
                pipe.zrem(self._key("jobs_by_dedup:", job.dedup_key), job.job_id)
                pipe.delete(self._key("job:", job.job_id), self._key("job_cancel:", job.job_id))
            await pipe.execute()
        return len(gone)

    @_translated
    async def find_job(self, dedup_key: str) -> JobRecord | None:
        found = await self._newest_jobs(self._key("jobs_by_dedup:", dedup_key), (), 1)
        return found[0] if found else None

    @_translated
    async def claim_job(self, job_id: str, owner: str, now: float, lease_s: float) -> bool:
        return bool(await self._claim_job(keys=[self._key("job:", job_id)],
                                          args=[owner, _text(now), _text(now + lease_s)]))

    @_translated
    async def request_job_cancel(self, job_id: str, now: float) -> None:
        # Kept a week: the runner reads it within a second, and a job's id is never reused.
        await self._client.set(self._key("job_cancel:", job_id), _text(now), ex=_JOB_CANCEL_TTL_S)

    @_translated
    async def job_cancel_requested(self, job_id: str) -> bool:
        return bool(await self._client.exists(self._key("job_cancel:", job_id)))

    # -- execution policies -------------------------------------------------------
    @_translated
    async def put_policy(self, program: str, policy: bytes) -> None:
        async with self._client.pipeline(transaction=True) as pipe:  # MULTI: the policy and the revision together
            await pipe.hset(self._key("policies"), program, policy).incr(self._key("program_revision")).execute()

    @_translated
    async def list_policies(self) -> dict[str, bytes]:
        return {k.decode(): v for k, v in (await self._client.hgetall(self._key("policies"))).items()}

    # -- program statistics -------------------------------------------------------
    @_translated
    async def add_stats(self, counts: list[StatsCount], batch_id: str) -> None:
        keys = [self._key("stats_batch:", batch_id), self._key("stats_programs")]
        args: list = [_STATS_BATCH_KEPT_S]
        for count in counts:
            keys += [self._key("stats:", count.program), self._key("program_versions:", count.program)]
            args += [count.program, count.version, count.arm, count.calls, count.errors, count.feedback_count,
                     _text(count.feedback_sum), count.feedback_examples]
        await self._add_stats(keys=keys, args=args)

    @_translated
    async def load_stats(self) -> list[StatsCount]:
        programs, hashes = await self._members_hashes("stats_programs", "stats:")
        counts: list[StatsCount] = []
        for program, fields in zip(programs, hashes):
            rows: dict[tuple[int, str], dict[str, float]] = {}
            for field, value in fields.items():
                version, arm, name = field.decode().split("\x00")
                rows.setdefault((int(version), arm), {})[name] = float(value)
            for (version, arm), values in sorted(rows.items()):
                counts.append(StatsCount(program, version, arm, **{name: int(values.get(name, 0)) for name in _STATS_INTS},
                                         feedback_sum=values.get("feedback_sum", 0.0)))
        return counts
