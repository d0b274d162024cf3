"""The last good result per (program, version, inputs): a bounded LRU with a TTL, in the front.

This is the memory level of the fallback chain's `cache` step; later levels
(disk, Redis shared across replicas) sit behind the same `get`/`put` with the
same `cache_key`, so the key must depend only on what the caller sent: the
program name, its version, and the inputs serialized deterministically.

No clock is read here: `now` (monotonic seconds) is passed in.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

# Bumped whenever the key layout changes, so old entries in a shared cache are never misread.
_KEY_DOMAIN = b"dspy-pool/result/v1\x00"


def cache_key(program: str, version: int, inputs_bytes: bytes) -> bytes:
    """A sha256 digest of (program, version, inputs); fields are length-prefixed so none can bleed into another."""
    program_bytes = program.encode("utf-8")
    digest = hashlib.sha256(_KEY_DOMAIN)
    digest.update(len(program_bytes).to_bytes(8, "big"))
    digest.update(program_bytes)
    digest.update(int(version).to_bytes(8, "big", signed=True))
    digest.update(len(inputs_bytes).to_bytes(8, "big"))
    digest.update(inputs_bytes)
    return digest.digest()


@dataclass(frozen=True)
class CacheStats:
    entries: int
    max_entries: int
    hits: int
    misses: int
    evictions: int  # dropped to make room
    expirations: int  # found past their TTL


class ResultCache:
    """At most `max_entries` results, each good for `ttl_s` seconds after it was put."""

    def __init__(self, max_entries: int, ttl_s: float) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, not {max_entries!r}")
        if not (ttl_s > 0 and not math.isnan(ttl_s)):
            raise ValueError(f"ttl_s must be > 0, not {ttl_s!r}")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        # Least recently used first; values are (expires_at, value).
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expirations = 0

    def get(self, key: Hashable, now: float, default: Any = None) -> Any:
        """The value if present and fresh (and mark it recently used), else `default`."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return default
        expires_at, value = entry
        if now >= expires_at:
            del self._entries[key]
            self._expirations += 1
            self._misses += 1
            return default
        self._entries.move_to_end(key)
        self._hits += 1
        return value

    def put(self, key: Hashable, value: Any, now: float) -> None:
        """Store or refresh `value`, evicting the least recently used entries beyond the bound."""
        self._entries[key] = (now + self.ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1

    def discard(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> CacheStats:
        return CacheStats(
            entries=len(self._entries),
            max_entries=self.max_entries,
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            expirations=self._expirations,
        )
