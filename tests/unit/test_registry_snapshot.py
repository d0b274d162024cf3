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
        self.revision_gate: asyncio.Event | None = None  # the next revision() read waits at it
        self.revision_waiting = asyncio.Event()

    async def revision(self):
        if self.revision_gate is not None:
            gate, self.revision_gate = self.revision_gate, None
            self.revision_waiting.set()
            await gate.wait()
        return await super().revision()

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


def test_a_program_another_call_loaded_meanwhile_is_found():
    """find() on a name this registry does not know: a concurrent call's load may bring it in while this one waits for
    the store's revision, and this refresh then sees nothing new. The program is found all the same (14 % of
    concurrent GetProgram calls on another replica right after a register said NOT_FOUND)."""
    async def run() -> None:
        store, registry = await _registry()
        other = ProgramRegistry(store, max_programs=100)  # another replica, on the same store
        await other.add(pb.ProgramSpec(name="qa", signature="q -> a"), ["q"], ["a"], False)
        gate = store.gate = asyncio.Event()
        first = asyncio.ensure_future(registry.find("qa"))  # its load waits at the gate, holding the registry's lock
        await store.listing.wait()
        revision_gate = store.revision_gate = asyncio.Event()
        second = asyncio.ensure_future(registry.find("qa"))  # does not know it either; its revision read waits
        await store.revision_waiting.wait()
        gate.set()
        await asyncio.wait_for(first, 10)  # the first load brought the program in, and its revision
        revision_gate.set()  # the second now reads that same revision: nothing new to load
        found = [await asyncio.wait_for(first, 10), await asyncio.wait_for(second, 10)]
        assert [entry.program.version for entry in found] == [1, 1]

    asyncio.run(run())
