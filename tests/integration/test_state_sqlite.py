"""The SQLite backend: the state store contract, plus what only a file can do (reopen, refuse, survive a kill)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import textwrap

import pytest

from dspy_pool.state import SCHEMA_VERSION, StateError, StateUnavailable, TurnRecord, make_store
from dspy_pool.state.base import ExampleRecord, JobRecord
from dspy_pool.state import sqlite as sqlite_store
from dspy_pool.state.sqlite import MIGRATIONS, SQLiteStore, _group_commit

from .state_contract import *  # noqa: F403
from .state_contract import LIMITS, MAX_PROGRAMS, T0, _program, _turn


@pytest.fixture
async def store(tmp_path):
    store = SQLiteStore(str(tmp_path / "state.db"))
    await store.open()
    yield store
    await store.close()


async def _reopened(path, shared: bool = False) -> SQLiteStore:
    store = SQLiteStore(str(path), shared=shared)
    await store.open()
    return store


def _set_schema_version(path, version: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.close()


async def test_state_survives_close_and_reopen(tmp_path):
    """Programs, the revision, version counters, sessions and cache entries are all there after a reopen."""
    path = tmp_path / "state.db"
    store = await _reopened(path)
    await store.add_program(_program(content="a"), MAX_PROGRAMS)
    await store.add_program(_program(content="b"), MAX_PROGRAMS)
    await store.delete_programs("qa", 2)
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    await store.cache_put(b"k1", b"v1", T0 + 10)
    revision = await store.program_revision()
    await store.close()

    store = await _reopened(path)
    try:
        assert [(p.name, p.version, p.spec) for p in await store.list_programs()] == [("qa", 1, b"qa:a")]
        assert await store.program_revision() == revision
        assert (await store.add_program(_program(content="c"), MAX_PROGRAMS)).record.version == 3
        assert (await store.get_session("s1", T0, LIMITS)).turns == (_turn(1),)
        assert await store.count_sessions() == 1
        assert await store.cache_get(b"k1", T0) == b"v1"
    finally:
        await store.close()


async def test_open_creates_the_folder_and_records_the_schema_version(tmp_path):
    """A missing parent folder is created, and a new file records the current schema version."""
    path = tmp_path / "a" / "b" / "state.db"
    store = await _reopened(path)
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def _write_v1_file(path) -> None:
    """A state file exactly as schema version 1 left it: its DDL (MIGRATIONS[0], never edited once shipped) and
    rows written with version 1's columns: a program whose name has used two versions, a revision, a session."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        MIGRATIONS[0](conn)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
        conn.execute("INSERT INTO program_names (name, last_version) VALUES ('qa', 2)")
        conn.execute("INSERT INTO programs (name, version, spec, content_hash, input_names, output_names, takes_history, "
                     "created_at) VALUES ('qa', 1, x'0a027161', 'abc', '[\"question\"]', '[\"answer\"]', 1, ?)", (T0,))
        conn.execute("UPDATE counters SET value = 3 WHERE name = 'program_revision'")
        conn.execute("INSERT INTO sessions (id, created_at, last_used_at, next_seq) VALUES ('s1', ?, ?, 2)", (T0, T0))
        conn.execute("INSERT INTO turns (session_id, seq, program, inputs_json, outputs_json) "
                     "VALUES ('s1', 1, 'qa', '{}', '{}')")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_version_1_file_is_migrated_and_keeps_its_state(tmp_path):
    """A file written by schema version 1 opens, is recorded as the current version, and keeps its programs
    (meta b""), revision, version counter and sessions; the new tables work at once."""
    path = tmp_path / "state.db"
    _write_v1_file(path)
    store = await _reopened(path)
    try:
        [program] = await store.list_programs()
        assert (program.name, program.version, program.spec, program.input_names, program.meta) == \
               ("qa", 1, b"\x0a\x02qa", ("question",), b"")
        assert await store.program_revision() == 3
        assert (await store.add_program(_program(content="new"), MAX_PROGRAMS)).record.version == 3
        assert (await store.get_session("s1", T0, LIMITS)).turns == (TurnRecord("qa", "{}", "{}"),)
        assert (await store.add_examples("ds", "train", [ExampleRecord("{}", "{}")], 10)).counts == (("train", 1),)
        await store.put_policy("qa", b"p")
        assert await store.list_policies() == {"qa": b"p"}
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    conn.close()


async def test_a_version_3_files_cached_results_count_against_the_caches_bound(tmp_path):
    """Results a version 3 file holds are counted by version 4's byte total at the migration: a put past the bound
    drops the old ones that expire soonest, not only entries written since."""
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for migrate in MIGRATIONS[:3]:
            migrate(conn)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '3')")
        for i in range(3):
            conn.execute("INSERT INTO cache (key, value, expires_at, hits, bytes) VALUES (?, ?, ?, 0, 100)",
                         (f"o{i}".encode(), b"v" * 98, T0 + 100 + i))
        conn.execute("COMMIT")
    finally:
        conn.close()
    store = await _reopened(path)
    try:
        await store.cache_put(b"n1", b"v" * 98, T0 + 200, max_bytes=300)
        assert [key for key in (b"o0", b"o1", b"o2", b"n1") if await store.cache_get(key, T0) is not None] == \
               [b"o1", b"o2", b"n1"]
    finally:
        await store.close()


async def test_a_migrated_file_reopens_as_it_is(tmp_path):
    """Reopening a migrated file runs no migration again and finds what it held."""
    path = tmp_path / "state.db"
    _write_v1_file(path)
    store = await _reopened(path)
    await store.put_job(JobRecord("j1", "k", "qa", "queued", 0, T0, T0))
    await store.close()
    store = await _reopened(path)
    try:
        assert [p.version for p in await store.list_programs()] == [1]
        assert (await store.get_job("j1")).state == "queued"
    finally:
        await store.close()


async def test_a_file_from_a_newer_schema_is_refused_and_left_alone(tmp_path):
    """A file whose schema_version is newer raises StateError naming the path and both versions; it is not changed."""
    path = tmp_path / "state.db"
    await (await _reopened(path)).close()
    _set_schema_version(path, 99)
    before = path.read_bytes()
    with pytest.raises(StateError, match="newer") as refused:
        await _reopened(path)
    assert str(path) in str(refused.value) and "99" in str(refused.value) and str(SCHEMA_VERSION) in str(refused.value)
    assert path.read_bytes() == before


async def test_a_file_that_is_not_a_database_is_refused_and_left_alone(tmp_path):
    """Random bytes raise StateError naming the path, and the file is unchanged afterwards."""
    path = tmp_path / "state.db"
    garbage = os.urandom(8192)
    path.write_bytes(garbage)
    with pytest.raises(StateError) as refused:
        await _reopened(path)
    assert str(path) in str(refused.value)
    assert path.read_bytes() == garbage


async def test_a_damaged_database_is_refused_and_left_alone(tmp_path):
    """A database whose table pages are damaged fails the check at open: StateError naming the path, file unchanged."""
    path = tmp_path / "state.db"
    store = await _reopened(path)
    for n in range(200):  # enough rows to spread the cache table over many pages
        await store.cache_put(b"k%d" % n, b"v" * 200, T0)
    await store.close()
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    last_page = len(data) - page_size
    # Keep the page header and cell pointers, overwrite the cells: the file opens, only quick_check can tell.
    data[last_page + 200:] = b"\xff" * (page_size - 200)
    path.write_bytes(bytes(data))
    with pytest.raises(StateError, match="corrupt") as refused:
        await _reopened(path)
    assert str(path) in str(refused.value)
    assert path.read_bytes() == bytes(data)


async def test_someone_elses_database_is_refused_and_left_alone(tmp_path):
    """A SQLite file with other tables and no dspy-pool schema is refused, not written into."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StateError, match="not a dspy-pool state file") as refused:
        await _reopened(path)
    assert str(path) in str(refused.value)
    assert path.read_bytes() == before


_CHILD = textwrap.dedent("""
    import asyncio, sys
    from dspy_pool.state import SessionLimits, TurnRecord
    from dspy_pool.state.sqlite import SQLiteStore

    async def main():
        store = SQLiteStore(sys.argv[1])
        await store.open()
        limits = SessionLimits(ttl_s=100.0, max_turns=10, max_sessions=10, protect_s=60.0)
        await store.append_turn("s1", TurnRecord("qa", '{"q": 1}', '{"a": 1}'), float(sys.argv[2]), limits)
        print("committed", flush=True)
        await asyncio.sleep(120)  # killed long before this

    asyncio.run(main())
""")


async def test_a_committed_append_survives_the_process_being_killed(tmp_path):
    """A turn whose append returned is in the file after SIGKILL of the process that wrote it."""
    path = tmp_path / "state.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", _CHILD, str(path), repr(T0),
                                                 stdout=asyncio.subprocess.PIPE, env=env)
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=60)
        assert line.strip() == b"committed"
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL

    store = await _reopened(path)
    try:
        session = await store.get_session("s1", T0, LIMITS)
        assert session is not None and [t.inputs_json for t in session.turns] == ['{"q": 1}']
    finally:
        await store.close()


async def test_a_lock_held_too_long_is_unavailable(tmp_path):
    """Another process of a front group holding the write lock past busy_timeout makes a call raise StateUnavailable
    naming the path."""
    path = tmp_path / "state.db"
    store = SQLiteStore(str(path), busy_timeout_s=0.05, shared=True)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StateUnavailable) as refused:
            await store.append_turn("s1", _turn(1), T0, LIMITS)
        assert str(path) in str(refused.value)
        other.execute("ROLLBACK")
        assert (await store.append_turn("s1", _turn(1), T0, LIMITS)).started  # usable again once the lock goes
    finally:
        other.close()
        await store.close()


async def test_two_stores_on_one_file_claiming_one_job_exactly_one_wins(tmp_path):
    """Two stores (two connections, as two processes would have) claiming one job at once: one lease is granted."""
    path = tmp_path / "state.db"
    a, b = await _reopened(path, shared=True), await _reopened(path, shared=True)
    try:
        await a.put_job(JobRecord("j1", "k", "qa", "queued", 0, T0, T0))
        won = await asyncio.gather(*(store.claim_job("j1", f"{i}-{n}", T0, 30) for n in range(10)
                                     for i, store in enumerate((a, b))))
        assert sum(won) == 1
    finally:
        await a.close()
        await b.close()


async def test_a_cancelled_call_still_commits(store):
    """A caller that stops waiting does not stop its operation: it runs to its commit, before later calls."""
    task = asyncio.create_task(store.append_turn("s1", _turn(1), T0, LIMITS))
    await asyncio.sleep(0)  # queued for the store's thread
    task.cancel()
    assert (await store.get_session("s1", T0, LIMITS)).turns == (_turn(1),)
    assert task.cancelled()


async def test_errors_reach_only_their_own_callers(store):
    """Of many calls handed back together, the one that failed raises and the others answer."""
    await store.add_examples("ds", "train", [ExampleRecord("{}", "{}")], 1)
    results = await asyncio.gather(*(store.add_examples(f"d{n}", "train", [ExampleRecord("{}", "{}")], 1)
                                     for n in range(10)), store.add_examples("ds", "train", [ExampleRecord("{}", "{}")], 1),
                                   return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["DatasetInfo"] * 10 + ["ResourceExhausted"]


async def test_appends_queued_together_commit_together_and_all_land(tmp_path, monkeypatch):
    """Appends queued at once share one transaction (a group commit); every turn is in the file for another connection."""
    groups = []

    def counted(conn, ops):
        groups.append(len(ops))
        return _group_commit(conn, ops)

    monkeypatch.setattr(sqlite_store, "_group_commit", counted)
    path = tmp_path / "state.db"
    a, b = await _reopened(path, shared=True), await _reopened(path, shared=True)
    try:
        await asyncio.gather(*(a.append_turn(f"s{n % 8}", _turn(n), T0 + n / 1000, LIMITS) for n in range(40)))
        assert max(groups) > 1 and sum(groups) <= 40
        for n in range(8):
            session = await b.get_session(f"s{n}", T0 + 1, LIMITS)
            assert sorted(t.inputs_json for t in session.turns) == sorted(_turn(m).inputs_json for m in range(n, 40, 8))
    finally:
        await a.close()
        await b.close()


async def test_a_refused_append_in_a_group_leaves_the_others_committed(tmp_path):
    """At the cap, the appends of one group that are refused are rolled back alone; the rest are committed."""
    path = tmp_path / "state.db"
    a, b = await _reopened(path, shared=True), await _reopened(path, shared=True)
    try:
        results = await asyncio.gather(*(a.append_turn(f"s{n}", _turn(n), T0, LIMITS) for n in range(12)),
                                       return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["AppendResult"] * 10 + ["ResourceExhausted"] * 2
        assert await b.count_sessions() == 10
    finally:
        await a.close()
        await b.close()


def test_a_group_whose_transaction_is_lost_fails_every_operation(tmp_path):
    """If SQLite rolls the group's transaction back midway, no operation of the group reports success."""
    conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    conn.execute("CREATE TABLE t (n INTEGER)")
    ops = [lambda: conn.execute("INSERT INTO t VALUES (1)"), lambda: conn.execute("ROLLBACK"),
           lambda: conn.execute("INSERT INTO t VALUES (3)")]
    assert [ok for ok, _ in _group_commit(conn, ops)] == [False, False, False]
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert not conn.in_transaction
    conn.close()


async def test_close_is_idempotent_and_later_calls_fail_cleanly(tmp_path):
    """close() twice is fine; a call after close raises StateError instead of touching a closed connection."""
    store = await _reopened(tmp_path / "state.db")
    await store.close()
    await store.close()
    with pytest.raises(StateError, match="not open"):
        await store.count_sessions()


async def test_make_store_puts_the_file_in_the_state_dir(tmp_path):
    """--state sqlite keeps state.db in --state-dir, and the description names that file."""
    store = make_store("sqlite", str(tmp_path))
    assert isinstance(store, SQLiteStore) and store.durable
    assert store.description == f"sqlite://{tmp_path / 'state.db'}"


@pytest.mark.parametrize("url", ["sqlite:///state.db", "sqlite:////relative.db"])
def test_a_sqlite_file_at_the_filesystem_root_is_refused_naming_the_right_forms(url):
    """sqlite:///state.db reads as a relative path to SQLAlchemy users, but names /state.db: refused, never created."""
    with pytest.raises(StateError, match="filesystem root.*--state-dir"):
        make_store(url, "/tmp")
    assert not os.path.exists("/" + url.rpartition("/")[2])


def test_an_absolute_sqlite_path_is_that_file(tmp_path):
    assert make_store(f"sqlite://{tmp_path}/x.db", "/unused").description.endswith(f"{tmp_path}/x.db")


# -- one server per file, and the file staying the one opened ------------------------------------------------------------

async def test_a_second_stand_alone_store_on_the_file_is_refused_naming_it_and_its_holder(tmp_path):
    """While one process holds the file (a stand-alone server), opening it again fails with StateError naming the
    file and the holder's pid, and the holder's state is untouched."""
    path = tmp_path / "state.db"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    holder = await asyncio.create_subprocess_exec(sys.executable, "-c", _CHILD, str(path), repr(T0),
                                                  stdout=asyncio.subprocess.PIPE, env=env)
    try:
        assert (await asyncio.wait_for(holder.stdout.readline(), timeout=60)).strip() == b"committed"
        for shared in (False, True):  # nor may a front group join it
            with pytest.raises(StateError, match="in use by another process") as refused:
                await SQLiteStore(str(path), busy_timeout_s=0.2, shared=shared).open()
            assert str(path) in str(refused.value) and f"pid {holder.pid}" in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
    store = await _reopened(path)
    try:
        assert (await store.get_session("s1", T0, LIMITS)) is not None
    finally:
        await store.close()


async def test_the_file_can_be_backed_up_while_a_server_holds_it(store, tmp_path):
    """The one-server lock is beside the file (state.db.lock): SQLite's online backup still reads the file while the
    store is open and writing, and the copy holds what was committed."""
    import sqlite3

    await store.append_turn("s1", _turn(1), T0, LIMITS)
    source, copy = sqlite3.connect(store.path), sqlite3.connect(tmp_path / "backup.db")
    try:
        source.backup(copy)
    finally:
        source.close()
        copy.close()
    backup = await _reopened(tmp_path / "backup.db")
    try:
        assert len((await backup.get_session("s1", T0, LIMITS)).turns) == 1
    finally:
        await backup.close()


async def test_the_fronts_of_a_group_share_the_file_and_a_stand_alone_server_is_kept_out(tmp_path):
    path = str(tmp_path / "state.db")
    fronts = [SQLiteStore(path, shared=True) for _ in range(2)]
    for front in fronts:
        await front.open()
    try:
        with pytest.raises(StateError, match="in use by another process"):
            await SQLiteStore(path, busy_timeout_s=0.2).open()
    finally:
        for front in fronts:
            await front.close()
    alone = SQLiteStore(path)
    await alone.open()  # the group is gone: the lock is free again
    await alone.close()


async def test_the_epoch_survives_a_reopen(tmp_path):
    """A file keeps the epoch it was given when it was created."""
    store = await _reopened(tmp_path / "state.db")
    epoch = (await store.revision()).epoch
    await store.close()
    store = await _reopened(tmp_path / "state.db")
    try:
        assert (await store.revision()).epoch == epoch
    finally:
        await store.close()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_file_lost_while_open_fails_writes_unavailable(tmp_path, how):
    """Once state.db is deleted or replaced, every write raises StateUnavailable saying so (it would be lost at
    restart), state_store_file_lost is logged once at error, and reads still answer from the open file."""
    from structlog.testing import capture_logs

    path = tmp_path / "state.db"
    store = await _reopened(path)
    try:
        await store.append_turn("s1", _turn(1), T0, LIMITS)
        assert store.write_problem == ""
        for suffix in ("", "-wal"):
            os.unlink(f"{path}{suffix}")
        if how == "replaced":
            path.write_bytes(b"")
        with capture_logs() as logs:
            for attempt in range(2):
                with pytest.raises(StateUnavailable, match=how) as refused:
                    await store.append_turn("s1", _turn(2 + attempt), T0, LIMITS)
                assert str(path) in str(refused.value)
            with pytest.raises(StateUnavailable, match=how):
                await store.add_program(_program(), MAX_PROGRAMS)
            assert (await store.get_session("s1", T0, LIMITS)).turns == (_turn(1),)
        assert [(e["event"], e["log_level"]) for e in logs] == [("state_store_file_lost", "error")]
        assert how in store.write_problem and "until a restart" in store.write_problem  # what GetPoolStatus says
    finally:
        await store.close()


async def test_the_wal_file_is_cut_back_after_a_burst_of_writes(tmp_path, monkeypatch):
    """After a burst of large writes the WAL file is cut back to the limit at the next checkpoint (without
    journal_size_limit it kept its largest size for good: a burst of large session turns left a 134 MB state.db-wal).
    The limit is 64 MiB; 1 MiB here, so that a few MB show it."""
    from dspy_pool.state import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "_WAL_LIMIT_BYTES", 1024 * 1024)
    store = await _reopened(tmp_path / "state.db")
    try:
        big = TurnRecord("p", '{"q": "' + "x" * 5_000_000 + '"}', "{}")
        await store.append_turn("s1", big, T0, LIMITS)  # one commit of ~5 MB: the WAL grows to hold it
        await store._run(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())
        await store.append_turn("s2", _turn(1), T0, LIMITS)  # the WAL starts over from its beginning: cut back now
        assert os.path.getsize(store.path + "-wal") <= 1024 * 1024
    finally:
        await store.close()


async def test_space_freed_by_deleted_rows_goes_back_to_the_file_system(tmp_path):
    """A new file gives free pages back (auto_vacuum INCREMENTAL, release_free_space from the server's sweep): 16 MB of
    cached results, expired and swept, leave a file of a few hundred KB once checkpointed, not one of 16 MB."""
    path = tmp_path / "state.db"
    store = await _reopened(path)
    try:
        for i in range(160):
            await store.cache_put(f"k{i}".encode(), os.urandom(100_000), T0 + 10)
        await store.cache_expire(T0 + 20)
        released = [await store.release_free_space() for _ in range(3)]
        assert released[0] > 0 and released[-1] == 0, released
    finally:
        await store.close()  # checkpoints the WAL into the file
    assert path.stat().st_size < 2_000_000, path.stat().st_size


async def test_a_file_made_without_auto_vacuum_still_opens_and_gives_nothing_back(tmp_path):
    """A file from before INCREMENTAL (auto_vacuum NONE) works as it is; release_free_space leaves it alone."""
    path = tmp_path / "state.db"
    _write_v1_file(path)
    store = await _reopened(path)
    try:
        await store.cache_put(b"k", b"v" * 100_000, T0 + 10)
        await store.cache_expire(T0 + 20)
        assert await store.release_free_space() == 0
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    conn.close()
