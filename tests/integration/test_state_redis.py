"""The Redis backend against a real redis-server: the state store contract, plus what only a shared server can do
(two replicas on one state, refusing a newer schema, an unreachable URL, an outage and the recovery after it)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis

from dspy_pool.state import SCHEMA_VERSION, StateError, StateUnavailable, make_store
from dspy_pool.state.base import JobRecord
from dspy_pool.state.redis_store import RedisStore, mask_url
from tests.redis_server import free_port

from .state_contract import *  # noqa: F403
from .state_contract import LIMITS, MAX_PROGRAMS, T0, _limits, _program, _turn

pytestmark = pytest.mark.timeout(60)


def _prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
async def store(redis_server):
    """A RedisStore on the shared server, under a key prefix no other test uses."""
    store = RedisStore(redis_server.url, prefix=_prefix())
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def replicas(redis_server):
    """Two RedisStore instances on one server and one prefix: two replicas sharing one state."""
    prefix = _prefix()
    stores = [RedisStore(redis_server.url, prefix=prefix) for _ in range(2)]
    for each in stores:
        await each.open()
    yield stores
    for each in stores:
        await each.close()


@pytest.fixture
async def raw(redis_server):
    """A plain client on the same server, to look at and plant keys behind the store's back."""
    client = aioredis.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


# -- two replicas --------------------------------------------------------------------------------------------------------

async def test_replicas_see_each_others_programs(replicas):
    """A version one replica adds or deletes moves the revision the other polls, and shows in its list."""
    a, b = replicas
    before = await b.program_revision()
    added = await a.add_program(_program(content="x"), MAX_PROGRAMS)
    assert await b.program_revision() > before
    assert await b.list_programs() == [added.record]
    moved = await a.program_revision()
    assert await b.delete_programs("qa") == [1]
    assert await a.program_revision() > moved and await a.list_programs() == []


async def test_replicas_racing_on_one_name_get_distinct_versions(replicas):
    """20 different contents added from each replica at once get 40 distinct versions, 1 to 40."""
    a, b = replicas
    results = await asyncio.gather(*(store.add_program(_program(content=f"{i}-{n}"), MAX_PROGRAMS)
                                     for n in range(20) for i, store in enumerate((a, b))))
    assert all(r.created for r in results)
    assert sorted(r.record.version for r in results) == list(range(1, 41))


async def test_replicas_see_each_others_sessions(replicas):
    """A turn one replica appends is in the session the other reads and continues."""
    a, b = replicas
    await a.append_turn("s1", _turn(1), T0, LIMITS)
    assert (await b.get_session("s1", T0, LIMITS)).turns == (_turn(1),)
    result = await b.append_turn("s1", _turn(2), T0 + 1, LIMITS)
    assert not result.started
    assert (await a.get_session("s1", T0 + 1, LIMITS)).turns == (_turn(1), _turn(2))
    assert await a.count_sessions() == await b.count_sessions() == 1


async def test_concurrent_appends_from_two_replicas_keep_all_turns(replicas):
    """2 x 50 appends at once to one session, from both replicas, keep all 100 turns; exactly one starts it."""
    a, b = replicas
    limits = _limits(max_turns=200)
    results = await asyncio.gather(*(store.append_turn("s1", _turn(100 * i + n), T0 + n / 1000, limits)
                                     for n in range(50) for i, store in enumerate((a, b))))
    assert sum(r.started for r in results) == 1
    session = await a.get_session("s1", T0 + 1, limits)
    expected = {_turn(100 * i + n) for i in range(2) for n in range(50)}
    assert len(session.turns) == 100 and set(session.turns) == expected


async def test_replicas_claiming_one_job_exactly_one_wins(replicas):
    """Ten claims of one job from each replica at once, each with its own owner: exactly one is granted."""
    a, b = replicas
    await a.put_job(JobRecord("j1", "k", "qa", "queued", 0, T0, T0))
    won = await asyncio.gather(*(store.claim_job("j1", f"{i}-{n}", T0, 30) for n in range(10)
                                 for i, store in enumerate((a, b))))
    assert sum(won) == 1
    assert (await b.get_job("j1")).owner == [f"{i}-{n}" for n in range(10) for i in range(2)][won.index(True)]


async def test_replicas_see_each_others_policies(replicas):
    """A policy one replica puts moves the revision the other polls, and shows in its list."""
    a, b = replicas
    before = await b.program_revision()
    await a.put_policy("qa", b"p")
    assert await b.program_revision() > before and await b.list_policies() == {"qa": b"p"}


# -- what Redis does by itself ------------------------------------------------------------------------------------------

async def test_session_keys_carry_a_redis_ttl(store, raw):
    """Every touch sets a TTL on the session's keys, so Redis drops abandoned sessions by itself."""
    await store.append_turn("s1", _turn(1), T0, LIMITS)
    prefix = store._prefix
    for key in (prefix + b"session_meta:s1", prefix + b"session_turns:s1"):
        ttl_ms = await raw.pttl(key)
        assert LIMITS.ttl_s * 1000 < ttl_ms <= LIMITS.ttl_s * 1000 + 60_000


async def test_cache_entries_expire_in_redis_at_their_expiry(store, raw):
    """A cache entry's key expires (PEXPIREAT) at its expires_at."""
    await store.cache_put(b"k1", b"v1", T0 + 10)
    assert await raw.pexpiretime(store._prefix + b"cache:k1") == int((T0 + 10) * 1000)


async def test_calls_batched_after_the_scripts_were_flushed_all_run_once(store, raw):
    """Scripts Redis forgot (SCRIPT FLUSH, as after a restart) are loaded again: 20 appends at once (one pipeline,
    each answered NOSCRIPT) all land exactly once."""
    await store.append_turn("s1", _turn(0), T0, LIMITS)
    await raw.script_flush()
    await asyncio.gather(*(store.append_turn("s1", _turn(n), T0 + n / 1000, LIMITS) for n in range(1, 21)))
    session = await store.get_session("s1", T0 + 1, LIMITS)
    assert sorted(t.inputs_json for t in session.turns) == sorted(_turn(n).inputs_json for n in range(21))


async def test_a_cancelled_call_still_runs(store):
    """A caller that stops waiting does not stop its call; the next calls are answered as usual."""
    task = asyncio.create_task(store.append_turn("s1", _turn(1), T0, LIMITS))
    await asyncio.sleep(0)
    task.cancel()
    assert (await store.append_turn("s1", _turn(2), T0 + 1, LIMITS, with_turns=True)).session.turns == (_turn(1), _turn(2))


# -- opening ----------------------------------------------------------------------------------------------------------

async def test_make_store_picks_redis(redis_server):
    """--state redis://... gives a RedisStore described by its URL."""
    store = make_store(redis_server.url, "/nonexistent")
    assert isinstance(store, RedisStore) and store.description == redis_server.url and store.durable


async def test_open_records_the_schema_version(store, raw):
    """Opening an empty database writes the current schema version under the prefix."""
    assert await raw.get(store._prefix + b"schema_version") == str(SCHEMA_VERSION).encode()


async def test_newer_schema_is_refused_and_left_alone(redis_server, raw):
    """A newer schema_version raises StateError naming the masked URL and both versions; nothing is changed."""
    prefix = _prefix()
    await raw.set(f"{prefix}schema_version", "99")
    await raw.set(f"{prefix}program_revision", "7")
    url = redis_server.url.replace("redis://", "redis://default:s3cret@")
    store = RedisStore(url, prefix=prefix)
    with pytest.raises(StateError) as refused:
        await store.open()
    message = str(refused.value)
    assert f"redis://default:***@127.0.0.1:{redis_server.port}/0" in message and "s3cret" not in message
    assert "99" in message and f"version {SCHEMA_VERSION}" in message
    assert await raw.get(f"{prefix}schema_version") == b"99"
    assert await raw.get(f"{prefix}program_revision") == b"7"
    assert await raw.get(f"{prefix}epoch") is None


async def test_a_version_1_database_is_migrated_and_keeps_its_programs(redis_server, raw):
    """A database written by schema version 1 (programs without meta) opens, is recorded as the current version,
    and its programs read back with meta b"" and keep their version counter."""
    prefix = _prefix()
    await raw.set(f"{prefix}schema_version", "1")
    await raw.hset(f"{prefix}program:1:qa", mapping={
        "spec": b"\x0a\x02qa", "content_hash": "abc", "input_names": '["question"]', "output_names": '["answer"]',
        "takes_history": "1", "created_at": repr(T0)})
    await raw.zadd(f"{prefix}program_versions:qa", {"1": 1})
    await raw.sadd(f"{prefix}programs", "1:qa")
    await raw.set(f"{prefix}program_next:qa", "1")
    await raw.set(f"{prefix}program_revision", "1")
    store = RedisStore(redis_server.url, prefix=prefix)
    await store.open()
    try:
        assert await raw.get(f"{prefix}schema_version") == str(SCHEMA_VERSION).encode()
        [program] = await store.list_programs()
        assert (program.name, program.version, program.spec, program.takes_history, program.meta) == \
               ("qa", 1, b"\x0a\x02qa", True, b"")
        assert (await store.add_program(_program(content="new"), MAX_PROGRAMS)).record.version == 2
    finally:
        await store.close()


async def test_unreadable_schema_version_is_refused_and_left_alone(redis_server, raw):
    """A schema_version key that is not a number raises StateError and stays as it was."""
    prefix = _prefix()
    await raw.set(f"{prefix}schema_version", "banana")
    with pytest.raises(StateError, match="banana"):
        await RedisStore(redis_server.url, prefix=prefix).open()
    assert await raw.get(f"{prefix}schema_version") == b"banana"


@pytest.mark.timeout(30)
async def test_wrong_url_is_a_state_error():
    """Opening on a port nothing listens on raises StateError 'cannot reach redis at URL' (no hang)."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(StateError, match=f"cannot reach redis at {url}") as refused:
        await RedisStore(url).open()
    assert not isinstance(refused.value, StateUnavailable)


async def test_unopened_store_says_so(redis_server):
    """Calling a store that was never opened raises StateError, not an AttributeError."""
    with pytest.raises(StateError, match="not open"):
        await RedisStore(redis_server.url).count_sessions()


def test_description_masks_passwords():
    """The description hides a password in the user part or in ?password=, and keeps everything else."""
    assert mask_url("redis://app:s3cret@redis:6379/2") == "redis://app:***@redis:6379/2"
    assert mask_url("redis://:s3cret@redis/0") == "redis://:***@redis/0"
    assert mask_url("rediss://s3cret@redis/0") == "rediss://***@redis/0"
    assert mask_url("unix:///run/redis.sock?db=1&password=s3cret") == "unix:///run/redis.sock?db=1&password=***"
    assert mask_url("redis://redis:6379/0") == "redis://redis:6379/0"


# -- an outage ------------------------------------------------------------------------------------------------------

async def test_a_restart_while_idle_costs_no_call(redis_server):
    """Redis restarted between two session calls: the next one reconnects and succeeds (the hot path's held
    connection is checked before each batch, as the pool checks one it lends)."""
    store = RedisStore(redis_server.url, prefix=_prefix())
    await store.open()
    try:
        await store.append_turn("s1", _turn(1), T0, LIMITS)
        redis_server.stop()
        redis_server.start()
        await asyncio.sleep(0.1)  # a serving front's loop runs meanwhile and sees the old connection close
        assert (await store.append_turn("s1", _turn(2), T0 + 1, LIMITS)).started  # persistence off: a fresh session
    finally:
        await store.close()


async def test_outage_raises_unavailable_and_recovers_without_reopening(redis_server):
    """Redis stopped: calls raise StateUnavailable naming the URL; started again: the same store works at once."""
    store = RedisStore(redis_server.url, prefix=_prefix())
    await store.open()
    try:
        # Several pooled connections, so recovery is tested on idle ones too, not just the one that failed.
        await asyncio.gather(*(store.append_turn(f"s{n}", _turn(n), T0, LIMITS) for n in range(8)))
        redis_server.stop()
        try:
            calls = [store.append_turn("s1", _turn(9), T0 + 1, LIMITS), store.get_session("s1", T0 + 1, LIMITS),
                     store.program_revision(), store.cache_get(b"k", T0), store.list_programs()]
            for call in calls:
                with pytest.raises(StateUnavailable, match=f"redis at {redis_server.url}"):
                    await call
        finally:
            redis_server.start()
        # Persistence is off, so nothing this test wrote survived, and the server has forgotten the Lua scripts too.
        results = await asyncio.gather(*(store.append_turn(f"s{n}", _turn(n), T0 + 2, LIMITS) for n in range(8)))
        assert all(r.started for r in results)
        assert (await store.add_program(_program(), MAX_PROGRAMS)).record.version == 1
        assert await store.count_sessions() == 8
    finally:
        await store.close()


async def test_a_wiped_database_reads_another_epoch_even_past_the_old_revision(redis_server, raw):
    """After its keys are wiped (FLUSHALL, an empty restart) the epoch reads "" and then, once a replica opens it
    again, a new one: never the old one, however far program_revision has counted past the old value."""
    prefix = _prefix()
    store = RedisStore(redis_server.url, prefix=prefix)
    await store.open()
    reopened = RedisStore(redis_server.url, prefix=prefix)
    try:
        await store.add_program(_program(), MAX_PROGRAMS)
        before = await store.revision()
        await raw.delete(*[key async for key in raw.scan_iter(match=prefix + "*")])
        assert (await store.revision()).epoch == ""
        await reopened.open()
        for n in range(3):
            await store.add_program(_program(content=str(n)), MAX_PROGRAMS)
        after = await store.revision()
        assert after.programs > before.programs and after.epoch not in ("", before.epoch)
    finally:
        await store.close()
        await reopened.close()


async def test_a_full_redis_is_unavailable_saying_so_never_unknown():
    """maxmemory with noeviction reached: writes (a registration, a session's call) answer UNAVAILABLE naming the cause
    and what to do (they answered UNKNOWN with the raw OOM error); once memory is freed they work again without a
    restart. With Redis down, the optimization calls answer UNAVAILABLE as the others do."""
    import grpc

    from dspy_pool.v1 import dspy_pool_pb2 as pb
    from tests.redis_server import RedisServer

    from .harness import eventually, execute_request, running_app
    from .test_optimization import METRIC, _examples

    server = RedisServer.launch()
    admin = aioredis.Redis(port=server.port)
    try:
        async with running_app(state=server.url, workers=1, optimizer_workers=1) as (_, stub, _):
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="coder", signature="word -> code")), timeout=30)
            for split in ("train", "dev"):
                await stub.AddExamples(pb.AddExamplesRequest(dataset="words", split=split, examples=_examples(split)), timeout=30)
            await admin.set("filler", b"x" * (2 << 20))
            await admin.config_set("maxmemory-policy", "noeviction")
            await admin.config_set("maxmemory", "1mb")
            in_session = execute_request("coder", word="kiwi")
            in_session.session_id = "full"
            calls = [stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="qa2", signature="question -> answer")), timeout=30),
                     stub.Execute(in_session, timeout=30)]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "raise maxmemory" in refused.value.details()
            await admin.config_set("maxmemory", "0")
            assert (await stub.Execute(in_session, timeout=30)).outputs["code"]
            # Unreachable, the optimization calls say so too (they answered UNKNOWN: StateUnavailable escaped them), and
            # so does GetPoolStatus (it said SERVING and nothing else).
            server.stop()

            async def status_says_so() -> bool:
                return "unreachable" in (await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)).state_store_problem

            await eventually(status_says_so, timeout_s=10)
            start = pb.StartOptimizationRequest(program="coder", dataset="words", optimizer="labeled_few_shot", metric=METRIC)
            for call in (stub.StartOptimization(start, timeout=30), stub.ListOptimizations(pb.ListOptimizationsRequest(), timeout=30),
                         stub.GetOptimization(pb.GetOptimizationRequest(job_id="nope"), timeout=30)):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
    finally:
        await admin.aclose()
        server.stop()
