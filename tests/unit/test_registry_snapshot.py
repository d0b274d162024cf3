"""server/registry.py: a snapshot load that overlaps a write made here never puts back what the write changed.

Reproduced by a soak: 28 of 400 GetProgram calls made right after a DeleteProgram returned OK found the deleted
program (the watcher's load had read the store just before the delete, and replaced the snapshot just after), and
a program just registered was sometimes "not found" by the next call.
"""

from __future__ import annotations

import asyncio

import pytest

from dspy_pool.errors import NotFound
from dspy_pool.server.registry import ProgramRegistry
from dspy_pool.state.memory import MemoryStore
from dspy_pool.v1 import dspy_pool_pb2 as pb


class _SlowListing(MemoryStore):
    """list_programs waits at a gate the test opens: a load in flight, held between its reads."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.listing = asyncio.Event()

    async def list_programs(self):
        records = await super().list_programs()
        if self.gate is not None:
            gate, self.gate = self.gate, None
            self.listing.set()
            await gate.wait()
        return records


async def _registry() -> tuple[_SlowListing, ProgramRegistry]:
    store = _SlowListing()
    await store.open()
    registry = ProgramRegistry(store, max_programs=100)
    await registry.load()
    return store, registry


async def _overlapping(store: _SlowListing, registry: ProgramRegistry, write) -> None:
    gate = store.gate = asyncio.Event()
    loading = asyncio.ensure_future(registry.load())
    await store.listing.wait()  # the load has read the programs and waits
    writing = asyncio.ensure_future(write())
    for _ in range(10):  # the write gets every chance to run before the load goes on (it may wait for it)
        await asyncio.sleep(0)
    gate.set()
    await asyncio.wait_for(asyncio.gather(loading, writing), 10)


def test_a_program_deleted_during_a_load_stays_deleted():
    async def run() -> None:
        store, registry = await _registry()
        await registry.add(pb.ProgramSpec(name="qa", signature="q -> a"), ["q"], ["a"], False)
        await _overlapping(store, registry, lambda: registry.delete("qa"))
        with pytest.raises(NotFound):
            registry.get("qa")

    asyncio.run(run())


def test_a_program_registered_during_a_load_stays_registered():
    async def run() -> None:
        store, registry = await _registry()
        await _overlapping(store, registry, lambda: registry.add(pb.ProgramSpec(name="qa", signature="q -> a"), ["q"], ["a"], False))
        assert registry.get("qa").program.version == 1

    asyncio.run(run())
