"""The embedded default: one SQLite file, WAL, every call on one dedicated thread.

    coroutine ──queue──> the store's one thread ──> sqlite3 connection ──> state.db (+ -wal)
              <──one wake-up per batch of results──

The connection lives on one thread (_StoreThread) and is only ever touched
there, so the event loop never waits on disk and calls never interleave
inside the connection: each method is one function run on that thread, and
each one that changes state is one transaction committed before its
coroutine returns (DESIGN.md hard rule 11). BEGIN IMMEDIATE takes the write
lock up front, so a read-modify-write (the next version number, the session
cap) cannot be raced by another process sharing the file either. The thread
hands results back in batches (one wake-up of the event loop for all the
calls it ran since it last found its queue empty), which is most of what a
session call used to cost the loop. Session appends found queued together
share one transaction (a group commit, each in its own savepoint): their
commit was most of an append's cost; each caller still hears only after it.

The session hot path: open_session of a session used within the last second
(state.policy.open_touches) and without its turns is one SELECT, no write;
the append that ends the call is the call's one write transaction.

The schema is versioned: `meta.schema_version`, and MIGRATIONS[n] takes a
file from version n to n+1 inside the same transaction that records it.
A file from a newer dspy-pool, a file that is not a SQLite database, a
corrupt one, or a database that holds someone else's tables raise StateError
naming the path; the file is left exactly as it was.

A caller that stops waiting (its RPC was cancelled) does not stop the
operation: it is already queued for the thread and runs to its commit or
rollback, so the file never holds half of one.

One server per file: a stand-alone server (shared=False) holds an exclusive
flock on state.db.lock, the fronts of one group (shared=True) a shared one, so
a second server (or a group beside a server) fails start-up naming the file
and the holder. The lock is beside the file, not SQLite's own exclusive mode,
so that `sqlite3 state.db ".backup x.db"` still works while the server runs.

The file is checked before each operation: deleted or replaced since it was
opened (a cleanup job, a remounted volume), its writes would go to an inode
nobody will read again, so they fail StateUnavailable from then on
(`state_store_file_lost`) and reads serve what the open file holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import structlog

from dspy_pool.state import policy
from dspy_pool.state.base import (
    JOB_FINISHED_STATES, SCHEMA_VERSION, AddedProgram, AppendResult, DatasetInfo, ExampleRecord, JobRecord, NewProgram,
    ProgramRecord, Revision, SessionLimits, SessionRecord, StateError, StateStore, StateUnavailable, StatsCount, TurnRecord,
)

T = TypeVar("T")
log = structlog.get_logger("dspy_pool.state")

BUSY_TIMEOUT_S = 5.0  # another process holding the write lock: wait this long, then StateUnavailable

# -- schema ----------------------------------------------------------------------------------------------------------

_V1 = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    # program_revision, and sessions: a count kept by triggers so the cap check never scans the table.
    "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO counters (name, value) VALUES ('program_revision', 0), ('sessions', 0)",
    # The highest version ever given to a name; it outlives the versions, so numbers are never reused.
    "CREATE TABLE program_names (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL) WITHOUT ROWID",
    """CREATE TABLE programs (
        name TEXT NOT NULL, version INTEGER NOT NULL, spec BLOB NOT NULL, content_hash TEXT NOT NULL,
        input_names TEXT NOT NULL, output_names TEXT NOT NULL, takes_history INTEGER NOT NULL,
        created_at REAL NOT NULL, PRIMARY KEY (name, version))""",
    """CREATE TABLE sessions (
        id TEXT PRIMARY KEY, created_at REAL NOT NULL, last_used_at REAL NOT NULL, next_seq INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX sessions_lru ON sessions (last_used_at)",
    """CREATE TABLE turns (
        session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE, seq INTEGER NOT NULL,
        program TEXT NOT NULL, inputs_json TEXT NOT NULL, outputs_json TEXT NOT NULL,
        PRIMARY KEY (session_id, seq)) WITHOUT ROWID""",
    """CREATE TRIGGER sessions_counted AFTER INSERT ON sessions
        BEGIN UPDATE counters SET value = value + 1 WHERE name = 'sessions'; END""",
    """CREATE TRIGGER sessions_uncounted AFTER DELETE ON sessions
        BEGIN UPDATE counters SET value = value - 1 WHERE name = 'sessions'; END""",
    """CREATE TABLE cache (
        key BLOB PRIMARY KEY, value BLOB NOT NULL, expires_at REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL)""",
    "CREATE INDEX cache_expiry ON cache (expires_at)",
)


# Version 2: a program version's meta; datasets, optimization jobs, execution policies. Examples and jobs keep a
# rowid (their rows can be large: WITHOUT ROWID suits small rows only).
_V2 = (
    "ALTER TABLE programs ADD COLUMN meta BLOB NOT NULL DEFAULT x''",
    # total: examples in all splits (the max_examples check); content_hash: state.policy.dataset_hash of the splits.
    """CREATE TABLE datasets (
        name TEXT PRIMARY KEY, content_hash TEXT NOT NULL, updated_at REAL NOT NULL, total INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # head: the split's running hash (state.policy.chain_examples); count is also the next example's seq.
    """CREATE TABLE dataset_splits (
        dataset TEXT NOT NULL REFERENCES datasets (name) ON DELETE CASCADE, split TEXT NOT NULL,
        count INTEGER NOT NULL, head TEXT NOT NULL, PRIMARY KEY (dataset, split)) WITHOUT ROWID""",
    """CREATE TABLE examples (
        dataset TEXT NOT NULL, split TEXT NOT NULL, seq INTEGER NOT NULL, inputs_json TEXT NOT NULL,
        outputs_json TEXT NOT NULL, source TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (dataset, split, seq),
        FOREIGN KEY (dataset, split) REFERENCES dataset_splits (dataset, split) ON DELETE CASCADE)""",
    """CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY, dedup_key TEXT NOT NULL, program TEXT NOT NULL, state TEXT NOT NULL,
        priority INTEGER NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL, request BLOB NOT NULL,
        progress BLOB NOT NULL, result BLOB NOT NULL, error TEXT NOT NULL, owner TEXT NOT NULL,
        lease_expires_at REAL NOT NULL)""",
    # Newest first (state.policy.newest_first): by created_at, then job_id.
    "CREATE INDEX jobs_newest ON jobs (created_at, job_id)",
    "CREATE INDEX jobs_by_program ON jobs (program, created_at, job_id)",
    "CREATE INDEX jobs_by_dedup_key ON jobs (dedup_key, created_at, job_id)",
    "CREATE TABLE policies (program TEXT PRIMARY KEY, policy BLOB NOT NULL)",
)


# Version 3: cancels asked of jobs another process runs (it polls for its own job while it runs).
_V3 = (
    "CREATE TABLE job_cancels (job_id TEXT PRIMARY KEY, requested_at REAL NOT NULL) WITHOUT ROWID",
)


# Version 4: the result cache's bytes in all, kept by triggers, so a put can hold the cache within its bound without
# summing the table (_cache_put); program statistics (StatsCount sums), so a restart forgets no version's figures.
_V4 = (
    """CREATE TABLE program_stats (
        program TEXT NOT NULL, version INTEGER NOT NULL, arm TEXT NOT NULL, calls INTEGER NOT NULL, errors INTEGER NOT NULL,
        feedback_count INTEGER NOT NULL, feedback_sum REAL NOT NULL, feedback_examples INTEGER NOT NULL,
        PRIMARY KEY (program, version, arm)) WITHOUT ROWID""",
    # Statistics batches already added (StatsCount batches are retried whole when their outcome was unknown).
    "CREATE TABLE stats_batches (id TEXT PRIMARY KEY, added_at REAL NOT NULL) WITHOUT ROWID",
    "CREATE INDEX stats_batches_added ON stats_batches (added_at)",
    "INSERT INTO counters (name, value) SELECT 'cache_bytes', COALESCE(SUM(bytes), 0) FROM cache",
    """CREATE TRIGGER cache_bytes_added AFTER INSERT ON cache
        BEGIN UPDATE counters SET value = value + NEW.bytes WHERE name = 'cache_bytes'; END""",
    """CREATE TRIGGER cache_bytes_removed AFTER DELETE ON cache
        BEGIN UPDATE counters SET value = value - OLD.bytes WHERE name = 'cache_bytes'; END""",
    """CREATE TRIGGER cache_bytes_changed AFTER UPDATE OF bytes ON cache
        BEGIN UPDATE counters SET value = value - OLD.bytes + NEW.bytes WHERE name = 'cache_bytes'; END""",
)


def _statements(ddl: tuple[str, ...]) -> Callable[[sqlite3.Connection], None]:
    def migrate(conn: sqlite3.Connection) -> None:
        # Statement by statement: executescript() would COMMIT first and break the migration's transaction.
        for statement in ddl:
            conn.execute(statement)
    return migrate


# MIGRATIONS[n] takes schema version n to n + 1; version 0 is an empty file. Never edit a shipped step: files
# written by it exist (tests/integration/test_state_sqlite.py builds a version 1 file with MIGRATIONS[0]).
MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (_statements(_V1), _statements(_V2), _statements(_V3),
                                                               _statements(_V4))
assert len(MIGRATIONS) == SCHEMA_VERSION, "every schema version needs its migration"


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[None]:
    """One transaction: committed when the block ends, rolled back when it raises.

    Inside a group commit (_group_commit) it is a savepoint of the group's transaction instead: rolled back
    alone when it raises, committed with the group.
    """
    if conn.in_transaction:
        with _savepoint(conn):
            yield
        return
    conn.execute(f"BEGIN {mode}")
    try:
        yield
        conn.execute("COMMIT")  # inside the try: a COMMIT that fails (busy, disk full) must not leave it open
    except BaseException:
        if conn.in_transaction:  # some errors (disk full) have rolled back already
            conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _savepoint(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("SAVEPOINT op")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # an error that rolled back the whole transaction took the savepoint with it
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
        raise
    conn.execute("RELEASE op")


Outcome = tuple[bool, Any]  # (True, result) or (False, the exception)


def _outcome(op: Callable[[], Any]) -> Outcome:
    try:
        return True, op()
    except BaseException as exc:  # handed to its caller, as an executor would
        return False, exc


def _group_commit(conn: sqlite3.Connection, ops: list[Callable[[], Any]]) -> list[Outcome]:
    """Write operations in one transaction, each in its own savepoint: one BEGIN and one COMMIT (the WAL write,
    most of an append's cost) for them all. One that raises is rolled back alone; if the group's transaction
    is lost (SQLite rolled it back: disk full, I/O error) or its COMMIT fails, every operation of the group
    fails with that error, so no caller is told OK for a write that is not committed.
    """
    conn.execute("BEGIN IMMEDIATE")
    outcomes: list[Outcome] = []
    try:
        for op in ops:
            outcomes.append(_outcome(op))
            if not conn.in_transaction:
                raise sqlite3.OperationalError("the group's transaction was rolled back")
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [(False, exc)] * len(ops)
    return outcomes


# -- opening -----------------------------------------------------------------------------------------------------------

def _stored_version(conn: sqlite3.Connection, path: str) -> int:
    """The file's schema version; 0 for an empty database. Reading sqlite_master also proves it is a database."""
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is not None and str(row[0]).isdigit():
            return int(row[0])
    elif not {t for t in tables if not t.startswith("sqlite_")}:
        return 0
    raise StateError(f"{path}: a SQLite database but not a dspy-pool state file (no schema version); "
                     "it was left as it is: point --state-dir elsewhere")


def _refuse_newer(version: int, path: str) -> None:
    if version > SCHEMA_VERSION:
        raise StateError(f"{path}: written by a newer dspy-pool (schema version {version}; this one reads up to "
                         f"{SCHEMA_VERSION}); it was left as it is: upgrade dspy-pool or point --state-dir elsewhere")


def _quick_check(conn: sqlite3.Connection, path: str) -> None:
    problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise StateError(f"{path}: the database is corrupt ({'; '.join(problems)}); it was left as it is")


_WAL_LIMIT_BYTES = 64 * 1024 * 1024


def _configure(conn: sqlite3.Connection) -> None:
    # Free pages can be given back to the file system (_release_free_space). Takes effect on a new file only (before
    # its first table); an older file keeps NONE until an operator runs VACUUM on it (docs/OPERATIONS.md).
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    # WAL + NORMAL syncs only at checkpoints, not at each commit. A commit is in the WAL file (the OS's page cache)
    # when COMMIT returns, so it survives the process being killed (tests/integration/test_state_sqlite.py kills
    # one); only an OS crash or power loss can lose the last commits, never corrupt the file.
    conn.execute("PRAGMA synchronous = NORMAL")
    # The WAL file is cut back to this after each checkpoint (it kept the size of the largest burst of writes).
    conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT_BYTES}")
    conn.execute("PRAGMA foreign_keys = ON")  # turns go with their session (ON DELETE CASCADE)


def _migrate(conn: sqlite3.Connection, path: str) -> None:
    # Read again under the write lock: another process may have created or migrated the file meanwhile.
    with _transaction(conn):
        version = _stored_version(conn, path)
        _refuse_newer(version, path)
        for step in range(version, SCHEMA_VERSION):
            MIGRATIONS[step](conn)
        if version != SCHEMA_VERSION:
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
        # The file's identity (Revision.epoch), once: files from before it get theirs on their next open.
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)", (uuid.uuid4().hex,))


def _lock_holders(path: str) -> list[int]:
    """The other processes holding a lock on the file, from Linux's /proc/locks; [] where that cannot be told."""
    try:
        stat = os.stat(path)
        with open("/proc/locks") as locks:
            rows = [line.split() for line in locks]
    except OSError:
        return []
    file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    # "1: POSIX  ADVISORY  READ 7233 fe:00:2206136 128 128"; a waiter's line has "->" after the number and never matches
    return sorted({int(row[4]) for row in rows
                   if len(row) > 5 and row[5] == file_id and row[4].isdigit() and int(row[4]) != os.getpid()})


def _in_use(path: str, cause: object, holders: list[int]) -> StateError:
    held_by = f" (held by pid {', '.join(map(str, holders))})" if holders else ""
    return StateError(f"{path}: in use by another process{held_by}: {cause}. Keep one server per file (stop the other, "
                      "or give this one its own --state-dir); servers that share state run as one --front-processes "
                      "group or on Redis. It was left as it is")


def _hold(path: str, exclusive: bool, wait_s: float) -> int:
    """An flock on PATH.lock, exclusive (a stand-alone server) or shared (a front of a group), waiting up to `wait_s`
    for a server that is still stopping; the open descriptor, which holds it until closed."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StateError(f"{path}: cannot create its lock file: {exc}") from exc
    give_up_at = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= give_up_at:
                holders = _lock_holders(path + ".lock")
                os.close(fd)
                raise _in_use(path, "another server holds it" if exclusive else "a stand-alone server holds it", holders) from None
            time.sleep(0.05)


def _connect(path: str, busy_timeout_s: float) -> sqlite3.Connection:
    """Open, check and migrate; nothing is written to a file that fails a check."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)  # autocommit: transactions are explicit
    except sqlite3.Error as exc:
        raise StateError(f"{path}: cannot open: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        # Read-only checks first: journal_mode = WAL would write to the file's header.
        _refuse_newer(_stored_version(conn, path), path)
        _quick_check(conn, path)
        _configure(conn)
        _migrate(conn, path)
    except sqlite3.OperationalError as exc:  # locked by another process past busy_timeout, no permission
        conn.close()
        if exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise _in_use(path, exc, _lock_holders(path)) from exc
        raise StateError(f"{path}: cannot be opened ({exc}); it was left as it is") from exc
    except sqlite3.DatabaseError as exc:  # not a database at all, or damaged beyond reading its schema
        conn.close()
        raise StateError(f"{path}: not a readable SQLite database ({exc}); it was left as it is") from exc
    except BaseException:
        conn.close()
        raise
    return conn


# -- programs ----------------------------------------------------------------------------------------------------------

_PROGRAM_COLUMNS = "name, version, spec, content_hash, input_names, output_names, takes_history, created_at, meta"


def _program(row: tuple) -> ProgramRecord:
    name, version, spec, content_hash, inputs, outputs, takes_history, created_at, meta = row
    return ProgramRecord(name, version, bytes(spec), content_hash, tuple(json.loads(inputs)),
                         tuple(json.loads(outputs)), bool(takes_history), created_at, bytes(meta))


def _bump_revision(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'program_revision'")


def _add_program(conn: sqlite3.Connection, program: NewProgram, max_programs: int) -> AddedProgram:
    with _transaction(conn):
        # A client's registration is compared with the latest version a client registered; an optimization's with the
        # latest version.
        clients_only = "" if program.meta else " AND length(coalesce(meta, x'')) = 0"
        latest = conn.execute(f"SELECT {_PROGRAM_COLUMNS} FROM programs WHERE name = ?{clients_only} ORDER BY version DESC LIMIT 1",
                              (program.name,)).fetchone()
        if latest is not None and latest[3] == program.content_hash:
            return AddedProgram(_program(latest), created=False)
        (stored,) = conn.execute("SELECT count(*) FROM programs").fetchone()
        if stored >= max_programs:
            raise policy.programs_full(max_programs)
        row = conn.execute("SELECT last_version FROM program_names WHERE name = ?", (program.name,)).fetchone()
        version = (row[0] if row else 0) + 1
        conn.execute("INSERT INTO program_names (name, last_version) VALUES (?, ?) "
                     "ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version", (program.name, version))
        record = ProgramRecord(program.name, version, program.spec, program.content_hash, tuple(program.input_names),
                               tuple(program.output_names), program.takes_history, program.created_at, program.meta)
        conn.execute(f"INSERT INTO programs ({_PROGRAM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (
            record.name, record.version, record.spec, record.content_hash, json.dumps(record.input_names),
            json.dumps(record.output_names), int(record.takes_history), record.created_at, record.meta))
        _bump_revision(conn)
    return AddedProgram(record, created=True)


def _delete_programs(conn: sqlite3.Connection, name: str, version: int) -> list[int]:
    where, args = ("name = ?", (name,)) if version == 0 else ("name = ? AND version = ?", (name, version))
    with _transaction(conn):
        deleted = sorted(v for (v,) in conn.execute(f"DELETE FROM programs WHERE {where} RETURNING version", args))
        if deleted:
            conn.executemany("DELETE FROM program_stats WHERE program = ? AND version = ?", [(name, v) for v in deleted])
            if conn.execute("SELECT 1 FROM programs WHERE name = ? LIMIT 1", (name,)).fetchone() is None:
                conn.execute("DELETE FROM policies WHERE program = ?", (name,))
                conn.execute("DELETE FROM program_stats WHERE program = ?", (name,))
            _bump_revision(conn)
    return deleted


def _list_programs(conn: sqlite3.Connection) -> list[ProgramRecord]:
    return [_program(row) for row in conn.execute(f"SELECT {_PROGRAM_COLUMNS} FROM programs ORDER BY name, version")]


def _revision(conn: sqlite3.Connection) -> Revision:
    with _transaction(conn, "DEFERRED"):  # one snapshot for both
        (epoch,) = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
        (programs,) = conn.execute("SELECT value FROM counters WHERE name = 'program_revision'").fetchone()
    return Revision(epoch, programs)


# -- sessions ----------------------------------------------------------------------------------------------------------

def _turns(conn: sqlite3.Connection, session_id: str) -> tuple[TurnRecord, ...]:
    rows = conn.execute("SELECT program, inputs_json, outputs_json FROM turns WHERE session_id = ? ORDER BY seq",
                        (session_id,)).fetchall()
    return tuple(TurnRecord(*row) for row in rows)


def _get_session(conn: sqlite3.Connection, session_id: str, now: float, limits: SessionLimits) -> SessionRecord | None:
    with _transaction(conn, "DEFERRED"):  # one snapshot for the session and its turns
        row = conn.execute("SELECT created_at, last_used_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        if not policy.is_expired(row[1], now, limits.ttl_s):
            return SessionRecord(session_id, row[0], row[1], _turns(conn, session_id))
    # Only if it is still expired: another process may have used it since the snapshot.
    conn.execute("DELETE FROM sessions WHERE id = ? AND ? - last_used_at > ?", (session_id, now, limits.ttl_s))
    return None


def _open(conn: sqlite3.Connection, session_id: str, now: float,
          limits: SessionLimits) -> tuple[float, int, bool, tuple[str, ...]]:
    """In a write transaction: the live session, or a new one made room for: (created_at, next_seq, started, evicted).

    A live session is not touched here: the caller's one UPDATE does that with whatever else it changes.
    """
    row = conn.execute("SELECT created_at, last_used_at, next_seq FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if row is not None and not policy.is_expired(row[1], now, limits.ttl_s):
        return row[0], row[2], False, ()
    if row is not None:
        conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
    evicted = _make_room(conn, now, limits)
    conn.execute("INSERT INTO sessions (id, created_at, last_used_at, next_seq) VALUES (?, ?, ?, 1)",
                 (session_id, now, now))
    return now, 1, True, evicted


def _make_room(conn: sqlite3.Connection, now: float, limits: SessionLimits) -> tuple[str, ...]:
    (count,) = conn.execute("SELECT value FROM counters WHERE name = 'sessions'").fetchone()
    if count < limits.max_sessions:  # the common case: no index walk at all
        return ()
    lru = conn.execute("SELECT id, last_used_at FROM sessions ORDER BY last_used_at")
    try:
        room = policy.make_room(count, lru, now, limits)
    finally:
        lru.close()
    if room.retry_after_ms:
        raise policy.sessions_full(limits, room)
    conn.executemany("DELETE FROM sessions WHERE id = ?", [(sid,) for sid in room.expired + room.evicted])
    return room.evicted


def _open_session(conn: sqlite3.Connection, session_id: str, now: float, limits: SessionLimits,
                  with_turns: bool) -> AppendResult:
    # The hot path: a live session used moments ago (policy.open_touches) needs no write, only a read, and
    # without its turns that is one SELECT. A snapshot (DEFERRED) keeps the session and its turns consistent.
    with _transaction(conn, "DEFERRED") if with_turns else contextlib.nullcontext():
        row = conn.execute("SELECT created_at, last_used_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if (row is not None and not policy.is_expired(row[1], now, limits.ttl_s)
                and not policy.open_touches(row[1], now, limits)):
            turns = _turns(conn, session_id) if with_turns else ()
            return AppendResult(SessionRecord(session_id, row[0], row[1], turns), False, ())
    with _transaction(conn):  # read again under the write lock: another process may have changed it meanwhile
        created_at, _, started, evicted = _open(conn, session_id, now, limits)
        if not started:
            conn.execute("UPDATE sessions SET last_used_at = ? WHERE id = ?", (now, session_id))
        turns = _turns(conn, session_id) if with_turns and not started else ()
    return AppendResult(SessionRecord(session_id, created_at, now, turns), started, evicted)


def _append_turn(conn: sqlite3.Connection, session_id: str, turn: TurnRecord, now: float,
                 limits: SessionLimits, with_turns: bool) -> AppendResult:
    with _transaction(conn):
        created_at, seq, started, evicted = _open(conn, session_id, now, limits)
        conn.execute("INSERT INTO turns (session_id, seq, program, inputs_json, outputs_json) VALUES (?, ?, ?, ?, ?)",
                     (session_id, seq, turn.program, turn.inputs_json, turn.outputs_json))
        conn.execute("DELETE FROM turns WHERE session_id = ? AND seq < ?",
                     (session_id, policy.trim_from(seq + 1, limits.max_turns)))
        if limits.max_bytes:
            rows = conn.execute("SELECT seq, length(CAST(inputs_json AS BLOB)) + length(CAST(outputs_json AS BLOB)) FROM turns "
                                "WHERE session_id = ? ORDER BY seq", (session_id,)).fetchall()
            first = policy.first_kept_by_size([size for _, size in rows], limits.max_bytes)
            if first:
                conn.execute("DELETE FROM turns WHERE session_id = ? AND seq < ?", (session_id, rows[first][0]))
        conn.execute("UPDATE sessions SET last_used_at = ?, next_seq = ? WHERE id = ?", (now, seq + 1, session_id))
        turns = _turns(conn, session_id) if with_turns else ()
    return AppendResult(SessionRecord(session_id, created_at, now, turns), started, evicted)


def _delete_session(conn: sqlite3.Connection, session_id: str) -> SessionRecord | None:
    with _transaction(conn):
        row = conn.execute("SELECT created_at, last_used_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is None:
            return None
        turns = _turns(conn, session_id)
        conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
    return SessionRecord(session_id, row[0], row[1], turns)


def _expire_sessions(conn: sqlite3.Connection, now: float, limits: SessionLimits) -> list[str]:
    # The first bound (with a second of slack for rounding) lets the LRU index narrow the scan;
    # the second is policy.is_expired exactly.
    with _transaction(conn):
        rows = conn.execute("DELETE FROM sessions WHERE last_used_at < ? + 1.0 AND ? - last_used_at > ? RETURNING id",
                            (now - limits.ttl_s, now, limits.ttl_s)).fetchall()
    return [sid for (sid,) in rows]


def _count_sessions(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT value FROM counters WHERE name = 'sessions'").fetchone()[0]


# -- result cache ------------------------------------------------------------------------------------------------------

def _cache_get(conn: sqlite3.Connection, key: bytes, now: float) -> bytes | None:
    # fetchall() runs the statement to its end, which is when autocommit commits the hit count.
    rows = conn.execute("UPDATE cache SET hits = hits + 1 WHERE key = ? AND expires_at > ? RETURNING value",
                        (key, now)).fetchall()
    return bytes(rows[0][0]) if rows else None


def _cache_put(conn: sqlite3.Connection, key: bytes, value: bytes, expires_at: float, max_bytes: int) -> None:
    size = policy.entry_bytes(key, value)
    if max_bytes and size > max_bytes:
        return  # it would push out everything else and still not fit
    with _transaction(conn):
        conn.execute("INSERT INTO cache (key, value, expires_at, hits, bytes) VALUES (?, ?, ?, 0, ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at, "
                     "bytes = excluded.bytes", (key, value, expires_at, size))
        if max_bytes:
            _cache_trim(conn, key, max_bytes)


def _cache_trim(conn: sqlite3.Connection, kept: bytes, max_bytes: int) -> None:
    """Drop the entries that expire soonest (never `kept`, just put) until the cache is within max_bytes."""
    (total,) = conn.execute("SELECT value FROM counters WHERE name = 'cache_bytes'").fetchone()
    if total <= max_bytes:
        return
    rows = conn.execute("SELECT key, bytes FROM cache WHERE key != ? ORDER BY expires_at", (kept,))
    try:
        gone = policy.first_to_drop(rows, total - max_bytes)
    finally:
        rows.close()
    conn.executemany("DELETE FROM cache WHERE key = ?", ((key,) for key in gone))


def _cache_top(conn: sqlite3.Connection, limit: int, max_bytes: int, now: float) -> list[tuple[bytes, bytes, float]]:
    rows = conn.execute("SELECT key, value, expires_at FROM cache WHERE expires_at > ? ORDER BY hits DESC", (now,))
    try:
        return [(bytes(k), bytes(v), e) for k, v, e in policy.pick_top(rows, limit, max_bytes)]
    finally:
        rows.close()


def _cache_expire(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute("DELETE FROM cache WHERE expires_at <= ?", (now,)).rowcount


_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def _release_free_space(conn: sqlite3.Connection) -> int:
    if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != _INCREMENTAL:
        return 0
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    released = policy.pages_to_release(pages, free)
    if released:
        # Not execute(): the statement frees one page per step, and a statement without result columns is stepped
        # once. executescript() steps it to its end (no transaction is open here: it would commit that first).
        conn.executescript(f"PRAGMA incremental_vacuum({int(released)})")
    return released


# -- datasets ----------------------------------------------------------------------------------------------------------

def _dataset_info(conn: sqlite3.Connection, name: str, content_hash: str, updated_at: float) -> DatasetInfo:
    counts = conn.execute("SELECT split, count FROM dataset_splits WHERE dataset = ? AND count > 0 ORDER BY split",
                          (name,)).fetchall()
    return DatasetInfo(name, tuple((split, count) for split, count in counts), content_hash, updated_at)


def _add_examples(conn: sqlite3.Connection, dataset: str, split: str, examples: list[ExampleRecord],
                  max_examples: int) -> DatasetInfo:
    with _transaction(conn):
        row = conn.execute("SELECT total, updated_at FROM datasets WHERE name = ?", (dataset,)).fetchone()
        stored, updated_at = row if row is not None else (0, 0.0)
        if not policy.examples_fit(stored, len(examples), max_examples):
            raise policy.examples_full(dataset, stored, len(examples), max_examples)
        if row is None:
            conn.execute("INSERT INTO datasets (name, content_hash, updated_at, total) VALUES (?, ?, 0.0, 0)",
                         (dataset, policy.dataset_hash(())))
        if examples:
            part = conn.execute("SELECT count, head FROM dataset_splits WHERE dataset = ? AND split = ?",
                                (dataset, split)).fetchone()
            count, head = part if part is not None else (0, policy.EMPTY_HEAD)
            conn.execute("INSERT INTO dataset_splits (dataset, split, count, head) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (dataset, split) DO UPDATE SET count = excluded.count, head = excluded.head",
                         (dataset, split, count + len(examples), policy.chain_examples(head, examples)))
            conn.executemany(
                "INSERT INTO examples (dataset, split, seq, inputs_json, outputs_json, source, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(dataset, split, count + n, e.inputs_json, e.outputs_json, e.source, e.created_at)
                 for n, e in enumerate(examples)])
            updated_at = max(updated_at, *(e.created_at for e in examples))
            splits = conn.execute("SELECT split, count, head FROM dataset_splits WHERE dataset = ?", (dataset,)).fetchall()
            conn.execute("UPDATE datasets SET content_hash = ?, updated_at = ?, total = ? WHERE name = ?",
                         (policy.dataset_hash(splits), updated_at, stored + len(examples), dataset))
        (content_hash,) = conn.execute("SELECT content_hash FROM datasets WHERE name = ?", (dataset,)).fetchone()
        return _dataset_info(conn, dataset, content_hash, updated_at)


def _get_dataset(conn: sqlite3.Connection, dataset: str) -> DatasetInfo | None:
    with _transaction(conn, "DEFERRED"):  # one snapshot for the dataset and its splits
        row = conn.execute("SELECT content_hash, updated_at FROM datasets WHERE name = ?", (dataset,)).fetchone()
        return None if row is None else _dataset_info(conn, dataset, *row)


def _list_datasets(conn: sqlite3.Connection) -> list[DatasetInfo]:
    rows = conn.execute("SELECT d.name, d.content_hash, d.updated_at, s.split, s.count FROM datasets d "
                        "LEFT JOIN dataset_splits s ON s.dataset = d.name AND s.count > 0 ORDER BY d.name, s.split")
    found: dict[str, tuple[str, float, list[tuple[str, int]]]] = {}
    for name, content_hash, updated_at, split, count in rows:
        counts = found.setdefault(name, (content_hash, updated_at, []))[2]
        if split is not None:
            counts.append((split, count))
    return [DatasetInfo(name, tuple(counts), content_hash, updated_at)
            for name, (content_hash, updated_at, counts) in found.items()]


def _load_examples(conn: sqlite3.Connection, dataset: str, split: str) -> list[ExampleRecord]:
    rows = conn.execute("SELECT inputs_json, outputs_json, source, created_at FROM examples "
                        "WHERE dataset = ? AND split = ? ORDER BY seq", (dataset, split))
    return [ExampleRecord(*row) for row in rows]


def _delete_dataset(conn: sqlite3.Connection, dataset: str) -> bool:
    with _transaction(conn):  # its splits and examples go with it (ON DELETE CASCADE)
        return conn.execute("DELETE FROM datasets WHERE name = ?", (dataset,)).rowcount > 0


# -- jobs ----------------------------------------------------------------------------------------------------------------

_JOB_COLUMNS = ("job_id, dedup_key, program, state, priority, created_at, updated_at, request, progress, result, "
                "error, owner, lease_expires_at")
_NEWEST_FIRST = "ORDER BY created_at DESC, job_id DESC"  # state.policy.newest_first


def _job(row: tuple) -> JobRecord:
    job_id, dedup_key, program, state, priority, created_at, updated_at, request, progress, result, error, owner, \
        lease_expires_at = row
    return JobRecord(job_id, dedup_key, program, state, priority, created_at, updated_at, bytes(request),
                     bytes(progress), bytes(result), error, owner, lease_expires_at)


def _put_job(conn: sqlite3.Connection, job: JobRecord) -> bool:
    updates = ", ".join(f"{c} = excluded.{c}" for c in _JOB_COLUMNS.split(", ")[1:])
    finished = ", ".join(f"'{state}'" for state in JOB_FINISHED_STATES)
    return conn.execute(f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * 13)}) "
                        f"ON CONFLICT (job_id) DO UPDATE SET {updates} WHERE jobs.state NOT IN ({finished})",
                        (job.job_id, job.dedup_key, job.program, job.state, job.priority, job.created_at, job.updated_at,
                         job.request, job.progress, job.result, job.error, job.owner, job.lease_expires_at)).rowcount > 0


def _get_job(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
    row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    return None if row is None else _job(row)


def _prune_jobs(conn: sqlite3.Connection, keep: int) -> int:
    finished = ", ".join("?" * len(JOB_FINISHED_STATES))
    with _transaction(conn):
        gone = conn.execute(f"DELETE FROM jobs WHERE job_id IN (SELECT job_id FROM jobs WHERE state IN ({finished}) "
                            f"{_NEWEST_FIRST} LIMIT -1 OFFSET ?) RETURNING job_id", (*JOB_FINISHED_STATES, max(0, keep))).fetchall()
        conn.executemany("DELETE FROM job_cancels WHERE job_id = ?", gone)
    return len(gone)


def _list_jobs(conn: sqlite3.Connection, program: str, states: tuple[str, ...], limit: int) -> list[JobRecord]:
    where, args = [], []
    if program:
        where.append("program = ?")
        args.append(program)
    if states:
        where.append(f"state IN ({', '.join('?' * len(states))})")
        args.extend(states)
    clause = f"WHERE {' AND '.join(where)} " if where else ""
    rows = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs {clause}{_NEWEST_FIRST} LIMIT ?", (*args, max(0, limit)))
    return [_job(row) for row in rows]


def _find_job(conn: sqlite3.Connection, dedup_key: str) -> JobRecord | None:
    row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE dedup_key = ? {_NEWEST_FIRST} LIMIT 1",
                       (dedup_key,)).fetchone()
    return None if row is None else _job(row)


def _claim_job(conn: sqlite3.Connection, job_id: str, owner: str, now: float, lease_s: float) -> bool:
    with _transaction(conn):  # the write lock first: another process claiming at once waits, then sees our lease
        row = conn.execute("SELECT owner, lease_expires_at FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None or not policy.can_claim(row[0], row[1], owner, now):
            return False
        conn.execute("UPDATE jobs SET owner = ?, lease_expires_at = ? WHERE job_id = ?", (owner, now + lease_s, job_id))
    return True


def _request_job_cancel(conn: sqlite3.Connection, job_id: str, now: float) -> None:
    with _transaction(conn):
        conn.execute("INSERT OR IGNORE INTO job_cancels (job_id, requested_at) VALUES (?, ?)", (job_id, now))


def _job_cancel_requested(conn: sqlite3.Connection, job_id: str) -> bool:
    return conn.execute("SELECT 1 FROM job_cancels WHERE job_id = ?", (job_id,)).fetchone() is not None


# -- execution policies -----------------------------------------------------------------------------------------------

def _put_policy(conn: sqlite3.Connection, program: str, policy_bytes: bytes) -> None:
    with _transaction(conn):
        conn.execute("INSERT INTO policies (program, policy) VALUES (?, ?) "
                     "ON CONFLICT (program) DO UPDATE SET policy = excluded.policy", (program, policy_bytes))
        _bump_revision(conn)


def _list_policies(conn: sqlite3.Connection) -> dict[str, bytes]:
    return {program: bytes(blob) for program, blob in conn.execute("SELECT program, policy FROM policies")}


# -- program statistics ------------------------------------------------------------------------------------------------

_STATS_COLUMNS = "program, version, arm, calls, errors, feedback_count, feedback_sum, feedback_examples"


_STATS_BATCHES_KEPT_S = 3600.0  # a batch is retried within seconds or minutes; its id is kept an hour


def _add_stats(conn: sqlite3.Connection, counts: list[StatsCount], batch_id: str, now: float) -> None:
    with _transaction(conn):
        conn.execute("DELETE FROM stats_batches WHERE added_at < ?", (now - _STATS_BATCHES_KEPT_S,))
        if conn.execute("INSERT OR IGNORE INTO stats_batches (id, added_at) VALUES (?, ?)", (batch_id, now)).rowcount == 0:
            return  # added already
        conn.executemany(
            f"INSERT INTO program_stats ({_STATS_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM programs WHERE name = ? AND (? = 0 OR version = ?)) "
            "ON CONFLICT (program, version, arm) DO UPDATE SET calls = calls + excluded.calls, errors = errors + excluded.errors, "
            "feedback_count = feedback_count + excluded.feedback_count, feedback_sum = feedback_sum + excluded.feedback_sum, "
            "feedback_examples = feedback_examples + excluded.feedback_examples",
            [(c.program, c.version, c.arm, c.calls, c.errors, c.feedback_count, c.feedback_sum, c.feedback_examples,
              c.program, c.version, c.version) for c in counts])


def _load_stats(conn: sqlite3.Connection) -> list[StatsCount]:
    return [StatsCount(*row) for row in conn.execute(f"SELECT {_STATS_COLUMNS} FROM program_stats")]


# -- the store ---------------------------------------------------------------------------------------------------------

class _StoreThread:
    """The store's one thread: operations in a queue, run in order, their results handed back in batches.

        submit() ──SimpleQueue──> thread: run one, then the next queued ... ──call_soon_threadsafe(batch)──> futures

    Results go back when the queue is empty (or every _DELIVER_EVERY operations), so a busy store wakes the
    event loop once per batch, not once per call. Each operation is its own function and transaction, except
    that operations submitted with `group=True` (session appends) found queued one after another run through
    `run_group` (_group_commit: one transaction for them all); their results, like every result, go back only
    after that commit.
    """

    _DELIVER_EVERY = 16
    _GROUP_MAX = 32

    def __init__(self, name: str, run_group: Callable[[list[Callable[[], Any]]], list[Outcome]] | None = None) -> None:
        self._queue: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future, Callable[[], Any], bool] | None] = \
            queue.SimpleQueue()
        self._run_group = run_group
        # A daemon: a store never closed must not keep the interpreter from exiting (SQLite survives being cut short).
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], group: bool = False) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((loop, future, fn, group and self._run_group is not None))
        return future

    def stop(self) -> None:
        """The thread ends once what is queued before this has run."""
        self._queue.put(None)

    def _serve(self) -> None:
        done: list[tuple[asyncio.Future, bool, Any]] = []
        done_loop: asyncio.AbstractEventLoop | None = None
        held: list = []  # an item taken while gathering a group that does not belong to it: the next one to run
        while True:
            item = held.pop() if held else self._queue.get()
            if item is None:
                if done:
                    self._deliver(done_loop, done)
                return
            loop, future, fn, group = item
            if done and loop is not done_loop:  # (a store used from another loop since: never mix them)
                self._deliver(done_loop, done)
                done = []
            done_loop = loop
            if group:
                items = self._gather_group(item, held)
                outcomes = self._run_group([fn for _, _, fn, _ in items])
                done.extend((f, ok, value) for (_, f, _, _), (ok, value) in zip(items, outcomes))
            else:
                done.append((future, *_outcome(fn)))
            if len(done) >= self._DELIVER_EVERY or (not held and self._queue.empty()):
                self._deliver(loop, done)
                done = []

    def _gather_group(self, first: tuple, held: list) -> list[tuple]:
        """`first` and the group items queued right behind it (same loop), up to _GROUP_MAX; the first other
        item met goes to `held`."""
        items = [first]
        while len(items) < self._GROUP_MAX:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None or not item[3] or item[0] is not first[0]:
                held.append(item)
                break
            items.append(item)
        return items

    @staticmethod
    def _deliver(loop: asyncio.AbstractEventLoop, done: list[tuple[asyncio.Future, bool, Any]]) -> None:
        def settle() -> None:
            for future, ok, value in done:
                if future.cancelled():  # its caller stopped waiting; the operation ran (and committed) all the same
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        try:
            loop.call_soon_threadsafe(settle)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _file_lost(path: str, opened: tuple[int, int] | None) -> str:
    """Why `path` is no longer the file opened as `opened` ("" while it is, or when that cannot be told)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return f"{path} was deleted while the server ran"
    except OSError:  # (no permission to look is not proof of anything)
        return ""
    if opened is not None and (stat.st_dev, stat.st_ino) != opened:
        return f"{path} was replaced by another file while the server ran"
    return ""


class SQLiteStore(StateStore):
    durable = True

    def __init__(self, path: str, busy_timeout_s: float = BUSY_TIMEOUT_S, shared: bool = False) -> None:
        self.path = os.path.abspath(path)
        self.shared = shared  # other processes (fronts of one group) write the same file: job leases decide who runs what
        self.busy_timeout_s = busy_timeout_s
        self.description = f"sqlite://{self.path}"
        self._thread: _StoreThread | None = None
        self._conn: sqlite3.Connection | None = None  # touched only on the store's thread
        self._grouping = False  # on the store's thread: a group's transaction is open (_call_group)
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._file_lost = ""  # why writes are refused: the file was deleted or replaced since it was opened
        self._lock_fd = -1  # holds state.db.lock (_hold) while the store is open

    async def open(self) -> None:
        if self._thread is not None:
            return
        thread = _StoreThread("dspy-pool-sqlite", self._call_group)
        try:
            self._lock_fd = await thread.submit(functools.partial(_hold, self.path, not self.shared, self.busy_timeout_s))
            self._conn = await thread.submit(functools.partial(_connect, self.path, self.busy_timeout_s))
            self._file_id = _file_id(self.path)
        except BaseException:
            self._release()
            thread.stop()
            raise
        self._thread = thread

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        try:
            # Queued behind any call still in flight, which finishes (and commits) first.
            await thread.submit(self._disconnect)
        finally:
            thread.stop()

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._release()

    def _release(self) -> None:
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)

    async def _run(self, fn: Callable[..., T], *args: Any, group: bool = False) -> T:
        if self._thread is None:
            raise StateError(f"{self.description}: the store is not open")
        return await self._thread.submit(functools.partial(self._call, fn, args), group)

    def _call(self, fn: Callable[..., T], args: tuple) -> T:
        """On the store's thread: run one operation, its SQLite errors turned into the state errors callers handle."""
        conn = self._conn
        if conn is None:
            raise StateError(f"{self.description}: the store is closed")
        self._check_file(conn)
        try:
            if conn.in_transaction and not self._grouping:
                # Left open by an operation whose ROLLBACK failed (its caller had the error): never let the next one
                # run as a savepoint of it (_transaction nests inside an open transaction) and be silently lost.
                conn.execute("ROLLBACK")
            return fn(conn, *args)
        except sqlite3.DatabaseError as exc:
            raise self._translated(exc) from exc

    def _call_group(self, ops: list[Callable[[], Any]]) -> list[Outcome]:
        """On the store's thread: operations queued together (each a _call) committed as one (_group_commit)."""
        conn = self._conn
        if conn is None or len(ops) == 1:
            return [_outcome(op) for op in ops]
        self._check_file(conn)
        self._grouping = True
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")  # as in _call
            outcomes = _group_commit(conn, ops)
        except sqlite3.DatabaseError as exc:  # BEGIN failed (locked past busy_timeout): none ran
            outcomes = [(False, exc)] * len(ops)
        finally:
            self._grouping = False
        return [(False, self._translated(value)) if not ok and isinstance(value, sqlite3.DatabaseError) else (ok, value)
                for ok, value in outcomes]

    def _check_file(self, conn: sqlite3.Connection) -> None:
        """On the store's thread: once the path no longer names the file opened, make the connection read-only."""
        if self._file_lost:
            return
        self._file_lost = _file_lost(self.path, self._file_id)
        if self._file_lost:
            log.error("state_store_file_lost", store=self.description, reason=self._file_lost,
                      hint="writes fail UNAVAILABLE (they would be lost at restart); restore the file or restart the server")
            conn.execute("PRAGMA query_only = ON")  # its writes fail: StateUnavailable naming why (_translated)

    @property
    def write_problem(self) -> str:
        return f"{self.description}: {self._file_lost}; writes are refused until a restart" if self._file_lost else ""

    def _translated(self, exc: sqlite3.DatabaseError) -> StateError:
        if self._file_lost:
            return StateUnavailable(f"{self.description}: {self._file_lost}; writes are refused until the server is "
                                    f"restarted on a file that is there ({exc})")
        if isinstance(exc, sqlite3.OperationalError):  # locked past busy_timeout, disk full, I/O error: may pass
            return StateUnavailable(f"{self.description}: {exc}")
        return StateError(f"{self.description}: {exc}")  # corrupt, or a constraint we broke: will not pass by retrying

    async def add_program(self, program: NewProgram, max_programs: int) -> AddedProgram:
        return await self._run(_add_program, program, max_programs)

    async def delete_programs(self, name: str, version: int = 0) -> list[int]:
        return await self._run(_delete_programs, name, version)

    async def list_programs(self) -> list[ProgramRecord]:
        return await self._run(_list_programs)

    async def revision(self) -> Revision:
        return await self._run(_revision)

    async def get_session(self, session_id: str, now: float, limits: SessionLimits) -> SessionRecord | None:
        return await self._run(_get_session, session_id, now, limits)

    async def open_session(self, session_id: str, now: float, limits: SessionLimits,
                           with_turns: bool = True) -> AppendResult:
        return await self._run(_open_session, session_id, now, limits, with_turns)

    async def append_turn(self, session_id: str, turn: TurnRecord, now: float, limits: SessionLimits,
                          with_turns: bool = False) -> AppendResult:
        # Appends queued together commit together (_group_commit): most of an append's cost is its commit.
        return await self._run(_append_turn, session_id, turn, now, limits, with_turns, group=True)

    async def delete_session(self, session_id: str) -> SessionRecord | None:
        return await self._run(_delete_session, session_id)

    async def expire_sessions(self, now: float, limits: SessionLimits) -> list[str]:
        return await self._run(_expire_sessions, now, limits)

    async def count_sessions(self) -> int:
        return await self._run(_count_sessions)

    async def cache_get(self, key: bytes, now: float) -> bytes | None:
        return await self._run(_cache_get, key, now)

    async def cache_put(self, key: bytes, value: bytes, expires_at: float, max_bytes: int = 0) -> None:
        await self._run(_cache_put, key, value, expires_at, max_bytes)

    async def cache_top(self, limit: int, max_bytes: int, now: float) -> list[tuple[bytes, bytes, float]]:
        return await self._run(_cache_top, limit, max_bytes, now)

    async def cache_expire(self, now: float) -> int:
        return await self._run(_cache_expire, now)

    async def release_free_space(self) -> int:
        return await self._run(_release_free_space)

    async def add_examples(self, dataset: str, split: str, examples: list[ExampleRecord],
                           max_examples: int) -> DatasetInfo:
        return await self._run(_add_examples, dataset, split, list(examples), max_examples)

    async def get_dataset(self, dataset: str) -> DatasetInfo | None:
        return await self._run(_get_dataset, dataset)

    async def list_datasets(self) -> list[DatasetInfo]:
        return await self._run(_list_datasets)

    async def load_examples(self, dataset: str, split: str) -> list[ExampleRecord]:
        return await self._run(_load_examples, dataset, split)

    async def delete_dataset(self, dataset: str) -> bool:
        return await self._run(_delete_dataset, dataset)

    async def put_job(self, job: JobRecord) -> bool:
        return await self._run(_put_job, job)

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await self._run(_get_job, job_id)

    async def list_jobs(self, program: str = "", states: tuple[str, ...] = (), limit: int = 100) -> list[JobRecord]:
        return await self._run(_list_jobs, program, tuple(states), limit)

    async def prune_jobs(self, keep: int) -> int:
        return await self._run(_prune_jobs, keep)

    async def find_job(self, dedup_key: str) -> JobRecord | None:
        return await self._run(_find_job, dedup_key)

    async def claim_job(self, job_id: str, owner: str, now: float, lease_s: float) -> bool:
        return await self._run(_claim_job, job_id, owner, now, lease_s)

    async def request_job_cancel(self, job_id: str, now: float) -> None:
        await self._run(_request_job_cancel, job_id, now)

    async def job_cancel_requested(self, job_id: str) -> bool:
        return await self._run(_job_cancel_requested, job_id)

    async def put_policy(self, program: str, policy: bytes) -> None:
        await self._run(_put_policy, program, policy)

    async def list_policies(self) -> dict[str, bytes]:
        return await self._run(_list_policies)

    async def add_stats(self, counts: list[StatsCount], batch_id: str) -> None:
        await self._run(_add_stats, list(counts), batch_id, time.time())

    async def load_stats(self) -> list[StatsCount]:
        return await self._run(_load_stats)
