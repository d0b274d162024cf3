"""A store that lost its programs (FLUSHALL, an empty Redis restarted): replicas keep serving what they knew.

The replicas' registries compare the store's epoch with its revision (ProgramRegistry.refresh): a wiped store
that has since counted past the old revision is still told apart from one that moved on.
"""

from __future__ import annotations

import contextlib
import uuid

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from dspy_pool.errors import NotFound
from dspy_pool.server.registry import ProgramRegistry
from dspy_pool.state.redis_store import RedisStore
from dspy_pool.v1 import dspy_pool_pb2 as pb

pytestmark = pytest.mark.timeout(60)


def _spec(name: str, signature: str = "question -> answer") -> pb.ProgramSpec:
    return pb.ProgramSpec(name=name, signature=signature)


async def _register(registry: ProgramRegistry, name: str, signature: str = "question -> answer"):
    return await registry.add(_spec(name, signature), ["question"], ["answer"], takes_history=False)


async def _wipe(url: str, prefix: str) -> None:
    """What FLUSHALL does, to this test's keys only (the redis-server is shared by the session's tests)."""
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def _opened(url: str, prefix: str) -> RedisStore:
    store = RedisStore(url, prefix=prefix)
    await store.open()
    return store


@contextlib.asynccontextmanager
async def _replica(url: str):
    """A replica's store on a prefix of its own, and `wipe_and_reopen()`: the database wiped, then opened again as a
    restarted pod would (it claims the empty database: a new epoch). Every store is closed at the end."""
    prefix = f"test:{uuid.uuid4().hex}:"
    stores = [await _opened(url, prefix)]

    async def wipe_and_reopen() -> RedisStore:
        await _wipe(url, prefix)
        stores.append(await _opened(url, prefix))
        return stores[-1]

    try:
        yield stores[0], wipe_and_reopen
    finally:
        for store in stores:
            await store.close()


async def test_a_wiped_redis_that_counts_past_the_old_revision_keeps_the_snapshot(redis_server):
    """21 programs, a wipe, then 25 registrations by a restarted pod (a larger revision than before): the replica
    still serves the 21 beside the 25 new ones, and logs state_store_reset_detected once."""
    async with _replica(redis_server.url) as (replica, wipe_and_reopen):
        registry = ProgramRegistry(replica, max_programs=100)
        await registry.load()
        # Registered through this registry and wiped before any poll: the snapshot's revision is the empty store's.
        for name in ["qa", *(f"p{n}" for n in range(20))]:
            await _register(registry, name)
        other = ProgramRegistry(await wipe_and_reopen(), max_programs=100)
        await other.load()
        for n in range(25):
            await _register(other, f"new{n}")
        with capture_logs() as logs:
            assert await registry.refresh() is True
            assert await registry.refresh() is False
        assert registry.get("qa").version == 1 and registry.get("p19").version == 1
        assert registry.get("new24").version == 1
        assert [entry["event"] for entry in logs] == ["state_store_reset_detected"]
        assert logs[0]["log_level"] == "error"


async def test_a_kept_program_registered_again_is_the_stores_from_then_on(redis_server):
    """After a reset, registering a kept name again makes the store's versions of it the ones served."""
    async with _replica(redis_server.url) as (replica, wipe_and_reopen):
        registry = ProgramRegistry(replica, max_programs=100)
        await registry.load()
        await _register(registry, "qa")
        await _register(registry, "qa", "question -> answer, reason")
        other = ProgramRegistry(await wipe_and_reopen(), max_programs=100)
        await other.load()
        await _register(other, "qa", "question -> reply")
        await registry.refresh()
        assert registry.get("qa").version == 1 and registry.get("qa").program.spec.signature == "question -> reply"
        await other.delete("qa")
        await registry.refresh()
        assert registry.known_base("qa") is None  # not the old snapshot's again


async def test_a_kept_program_can_be_deleted_on_the_replica_that_keeps_it(redis_server):
    """After a reset the replica still serves what the store lost; a client can delete it there (it was NOT_FOUND
    until the replica restarted), one version or all, and a refresh does not bring it back."""
    async with _replica(redis_server.url) as (replica, wipe_and_reopen):
        registry = ProgramRegistry(replica, max_programs=100)
        await registry.load()
        await _register(registry, "qa")
        await _register(registry, "qa", "question -> answer, reason")
        await _register(registry, "kept", "question -> answer")
        other = ProgramRegistry(await wipe_and_reopen(), max_programs=100)
        await other.load()
        await _register(other, "fresh")  # the store counts on from its reset
        await registry.refresh()
        assert registry.get("qa").version == 2 and registry.get("kept").version == 1
        assert await registry.delete("qa", 2) == [2]
        assert registry.get("qa").version == 1
        assert await registry.delete("qa") == [1]
        with pytest.raises(NotFound):
            registry.get("qa")
        await _register(other, "fresh2")
        await registry.refresh()
        with pytest.raises(NotFound):
            registry.get("qa")
        assert registry.get("kept").version == 1  # the other kept program is still served
