"""The last good result per (program, version, inputs): the memory level of the result cache.

`cache.TieredCache` puts the state store (SQLite on disk, or Redis shared by
replicas) behind this level with the same `cache_key`, so the key depends only
on what the caller sent: the program name, its version, and the inputs
serialized deterministically.

No clock is read here: `now` and expiries (wall-clock seconds, comparable with
the store's) are passed in.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

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
    bytes: int
    hits: int
    misses: int
    evictions: int  # dropped to make room
    expirations: int  # found past their expiry


class ResultCache:
    """The memory level: results (bytes) bounded in count and in total bytes, each usable until its own expiry.

    Bounded in bytes because outputs vary from a word to megabytes: a count
    bound alone would let a few large outputs hold gigabytes. A value larger
    than an eighth of the byte bound is not kept here at all (the store level
    may still hold it), so one output cannot flush everything else.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an integer >= 1, not {max_entries!r}")
        if not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be an integer >= 1, not {max_bytes!r}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[float, bytes]] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._expirations = 0

    def get(self, key: Hashable, now: float) -> bytes | None:
        """The value if present and not expired (and mark it recently used), else None."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        expires_at, value = entry
        if now >= expires_at:
            self._drop(key)
            self._expirations += 1
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return value

    def put(self, key: Hashable, value: bytes, expires_at: float) -> bool:
        """Keep `value` until `expires_at`, evicting the least recently used past the bounds; False if too large to keep."""
        if len(value) > self.max_bytes // 8:
            self._drop(key)
            return False
        self._drop(key)
        self._entries[key] = (expires_at, value)
        self._bytes += len(value)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self._evictions += 1
        return True

    def _drop(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> CacheStats:
        return CacheStats(entries=len(self._entries), bytes=self._bytes, hits=self._hits, misses=self._misses,
                          evictions=self._evictions, expirations=self._expirations)
