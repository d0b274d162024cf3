"""The one state store: programs, sessions, the result cache's lower levels (and next: datasets, jobs).

    registry / sessions / cache ──> StateStore (base.py)  ──> memory.MemoryStore     this process only
                                                          ──> sqlite.SQLiteStore     one file, WAL, a thread
                                                          ──> redis_store.RedisStore  replicas share it

`open_store(url, state_dir)` picks the backend from --state and opens it
(schema created or migrated; StateError if it cannot be opened safely).
"""

from __future__ import annotations

import os

from dspy_pool.state.base import (
    JOB_ACTIVE_STATES, JOB_FINISHED_STATES, SCHEMA_VERSION, AddedProgram, AppendResult, DatasetInfo, ExampleRecord,
    JobRecord, NewProgram, ProgramRecord, Revision, SessionLimits, SessionRecord, StateError, StateStore, StateUnavailable,
    StatsCount, TurnRecord,
)

__all__ = [
    "JOB_ACTIVE_STATES", "JOB_FINISHED_STATES", "SCHEMA_VERSION", "Revision", "AddedProgram", "DatasetInfo", "ExampleRecord", "JobRecord", "AppendResult", "NewProgram", "ProgramRecord", "SessionLimits", "SessionRecord",
    "StateError", "StateStore", "StateUnavailable", "StatsCount", "TurnRecord", "make_store", "open_store",
]

SQLITE_FILE = "state.db"


def make_store(url: str, state_dir: str, shared: bool = False) -> StateStore:
    """The backend for a --state value: memory, sqlite (a file in state_dir), sqlite:///PATH, redis://..."""
    if url == "memory":
        from dspy_pool.state.memory import MemoryStore

        return MemoryStore()
    if url == "sqlite" or url.startswith("sqlite:///"):
        from dspy_pool.state.sqlite import SQLiteStore

        # sqlite:///var/lib/x.db and sqlite:////var/lib/x.db both name /var/lib/x.db
        path = os.path.join(state_dir, SQLITE_FILE) if url == "sqlite" else "/" + url[len("sqlite:///"):].lstrip("/")
        if os.path.dirname(path) == "/":  # sqlite:///state.db: meant as a relative path (SQLAlchemy's reading), surely
            raise StateError(f"state {url!r} names {path}, a file at the filesystem root: the path after sqlite:/// is "
                             f"absolute (sqlite:///var/lib/dspy-pool/{os.path.basename(path)}); for a file in a folder of "
                             "your choice use --state sqlite --state-dir FOLDER")
        return SQLiteStore(path, shared=shared)  # shared: several front processes on one file
    if url.startswith(("redis://", "rediss://", "unix://")):
        from dspy_pool.state.redis_store import RedisStore

        return RedisStore(url)
    raise StateError(f"state {url!r}: expected memory, sqlite, sqlite:///PATH or redis://HOST:PORT/DB")


async def open_store(url: str, state_dir: str, shared: bool = False) -> StateStore:
    store = make_store(url, state_dir, shared)
    await store.open()
    return store
