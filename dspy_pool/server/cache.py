"""The result cache: one mechanism, two levels, a policy per program.

    get: memory (this front, bounded in bytes) ──miss──> store (SQLite on disk, or Redis shared by replicas)
                                                          └─hit──> promoted into memory
    put: memory now; store in the background (bounded), so a call never waits on the cache

Each level is bounded in bytes: memory by --result-cache-max-bytes, the store by
--result-cache-store-max-bytes (the entries that expire soonest make room), so a
busy program's unique inputs never fill the disk or the Redis that sessions need.

Per program (`ProgramSpec.cache`): `off` writes nothing (the default, unless
the fallback chain has a `cache` step, which makes it `fallback`), `fallback`
keeps results for the chain's `cache` step, `serve` also answers an identical
call (same program version, same inputs) before the pool. Only programs whose
policy uses the cache pay for serializing and hashing their outputs.

At start-up `warm()` loads the store's most-hit live entries into memory.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

import structlog

from dspy_pool.server.result_cache import CacheStats, ResultCache
from dspy_pool.state import StateError, StateStore, StateUnavailable
from dspy_pool.v1 import dspy_pool_pb2 as pb

log = structlog.get_logger("dspy_pool.cache")

MEMORY, STORE = "memory", "store"
_MAX_PENDING_WRITES = 256  # store writes in flight; past it new ones are dropped (the cache is best effort)


class Mode(enum.StrEnum):
    OFF = "off"
    FALLBACK = "fallback"
    SERVE = "serve"


@dataclass(frozen=True, slots=True)
class Policy:
    mode: Mode
    ttl_s: float

    @property
    def writes(self) -> bool:
        return self.mode is not Mode.OFF


MAX_TTL_S = 30 * 24 * 3600.0


def policy_for(spec: pb.ProgramSpec, default_ttl_s: float, chain_has_cache_step: bool) -> Policy:
    """The program's cache policy; ValueError naming the field when the spec's is invalid."""
    mode_name = spec.cache.mode or (Mode.FALLBACK if chain_has_cache_step else Mode.OFF)
    try:
        mode = Mode(mode_name)
    except ValueError:
        raise ValueError(f"cache.mode {spec.cache.mode!r} must be off, fallback or serve") from None
    if not 0 <= spec.cache.ttl_s <= MAX_TTL_S:  # NaN too: a result kept for ever would never leave the store
        raise ValueError(f"cache.ttl_s must be within 0..{MAX_TTL_S:g} s (30 days; 0: the server's default), not {spec.cache.ttl_s}")
    return Policy(mode, spec.cache.ttl_s or default_ttl_s)


@dataclass(frozen=True, slots=True)
class Hit:
    value: bytes
    level: str


@dataclass
class _StoreCounters:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    dropped_writes: int = 0


class TieredCache:
    def __init__(self, memory: ResultCache, store: StateStore | None, store_max_bytes: int = 0) -> None:
        self.memory = memory
        self.store = store if store is not None and store.durable else None  # a memory store adds no level
        self.store_max_bytes = store_max_bytes  # 0: unbounded (the store's own limits apply)
        self._store = _StoreCounters()
        self._pending: set[asyncio.Task] = set()

    async def get(self, key: bytes, now: float) -> Hit | None:
        value = self.memory.get(key, now)
        if value is not None:
            return Hit(value, MEMORY)
        if self.store is None:
            return None
        try:
            value = await self.store.cache_get(key, now)
        except StateError:  # a cache level that cannot answer is a miss, never a failed call
            self._store.errors += 1
            return None
        if value is None:
            self._store.misses += 1
            return None
        self._store.hits += 1
        return Hit(value, STORE)

    def put(self, key: bytes, value: bytes, now: float, ttl_s: float) -> None:
        """Keep a result: in memory at once, in the store in the background."""
        expires_at = now + ttl_s
        self.memory.put(key, value, expires_at)
        if self.store is None:
            return
        if len(self._pending) >= _MAX_PENDING_WRITES:
            self._store.dropped_writes += 1
            return
        task = asyncio.get_running_loop().create_task(self._write(key, value, expires_at))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _write(self, key: bytes, value: bytes, expires_at: float) -> None:
        try:
            await self.store.cache_put(key, value, expires_at, self.store_max_bytes)
        except StateError as exc:  # unreachable, or refused (a full Redis under noeviction): the cache is best effort
            self._store.errors += 1
            if self._store.errors == 1 or self._store.errors % 1000 == 0:
                log.warning("cache_store_write_failed", store=self.store.description, error=str(exc)[:300], failures=self._store.errors)

    async def warm(self, now: float, limit: int) -> int:
        """Load the store's most-hit live entries into memory (within its byte bound); how many."""
        if self.store is None or limit <= 0:
            return 0
        try:
            entries = await self.store.cache_top(limit, self.memory.max_bytes, now)
        except StateUnavailable:
            return 0
        kept = sum(1 for key, value, expires_at in entries if self.memory.put(key, value, expires_at))
        log.info("cache_warmed", entries=kept, store=self.store.description)
        return kept

    async def flush(self) -> None:
        """Wait for background store writes (shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    def levels(self) -> list[tuple[str, CacheStats]]:
        levels = [(MEMORY, self.memory.stats())]
        if self.store is not None:
            counters = self._store
            levels.append((STORE, CacheStats(entries=-1, bytes=-1, hits=counters.hits, misses=counters.misses,
                                             evictions=counters.dropped_writes, expirations=0)))
        return levels
