"""The memory backend against the state store contract (tests/integration/state_contract.py)."""

from __future__ import annotations

import pytest

from dspy_pool.state.memory import MemoryStore

from .state_contract import *  # noqa: F403


@pytest.fixture
async def store():
    store = MemoryStore()
    await store.open()
    yield store
    await store.close()


def test_memory_says_it_is_not_durable():
    """The memory backend says so, so the server can warn at start-up."""
    assert MemoryStore.durable is False and MemoryStore().description == "memory"
