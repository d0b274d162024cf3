"""The result cache end to end: serve mode, the memory and store levels, warming after a restart, off writes nothing."""

from __future__ import annotations

import sqlite3

import grpc
import pytest

from dspy_pool.server.app import App
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import execute_request, make_config

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


def _spec(name: str, mode: str) -> pb.ProgramSpec:
    return pb.ProgramSpec(name=name, signature="question -> answer", cache=pb.CachePolicy(mode=mode, ttl_s=600))


async def _levels(stub) -> dict[str, pb.CacheLevelStatus]:
    status = await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=5)
    return {level.level: level for level in status.cache_levels}


async def _run(config, body):
    app = App(config)
    try:
        await app.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            return await body(pb_grpc.DSPyPoolStub(channel))
    finally:
        await app.stop()


async def test_serve_mode_answers_identical_calls_from_memory_then_from_the_store_after_a_restart(tmp_path):
    """serve: the 2nd identical call is served_by cache from memory; after a restart (no warming) from the store; warmed, from memory."""
    state = f"sqlite:///{tmp_path}/state.db"

    async def first_run(stub):
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=_spec("served", "serve")), timeout=30)
        primary = await stub.Execute(execute_request("served", question="2+2?"), timeout=20)
        cached = await stub.Execute(execute_request("served", question="2+2?"), timeout=20)
        other = await stub.Execute(execute_request("served", question="3+3?"), timeout=20)
        assert (primary.served_by, cached.served_by, cached.cache_level, other.served_by) == ("primary", "cache", "memory", "primary")
        assert cached.outputs == primary.outputs
        assert (await _levels(stub))["memory"].hits >= 1
        return primary.outputs

    outputs = await _run(make_config(state=state, workers=1), first_run)

    async def cold_restart(stub):
        again = await stub.Execute(execute_request("served", question="2+2?"), timeout=20)
        assert (again.served_by, again.cache_level, again.outputs) == ("cache", "store", outputs)
        assert (await _levels(stub))["store"].hits == 1

    await _run(make_config(state=state, workers=1, result_cache_warm_entries=0), cold_restart)

    async def warmed_restart(stub):
        again = await stub.Execute(execute_request("served", question="2+2?"), timeout=20)
        assert (again.served_by, again.cache_level) == ("cache", "memory")

    await _run(make_config(state=state, workers=1), warmed_restart)


async def test_a_program_whose_policy_is_off_writes_nothing():
    """Without a cache step or policy nothing is cached: the memory level stays empty and calls always run."""

    async def body(stub):
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="plain", signature="question -> answer")), timeout=30)
        for _ in range(2):
            reply = await stub.Execute(execute_request("plain", question="same"), timeout=20)
            assert reply.served_by == "primary"
        assert (await _levels(stub))["memory"].entries == 0

    await _run(make_config(workers=1), body)


async def test_an_invalid_cache_policy_is_invalid_argument():
    """cache.mode outside off|fallback|serve is INVALID_ARGUMENT at registration."""

    async def body(stub):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=_spec("bad", "always")), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cache.mode" in caught.value.details()

    await _run(make_config(workers=1), body)


async def test_cache_levels_reach_prometheus():
    """The metrics endpoint exports hits, misses and bytes per cache level, and calls per program version and arm."""
    import urllib.request

    from .harness import eventually

    app = App(make_config(workers=1, metrics_port=0))
    try:
        await app.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=_spec("metered", "serve")), timeout=30)
            for _ in range(2):
                await stub.Execute(execute_request("metered", question="same"), timeout=20)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5) as response:
                return response.read().decode()

        import asyncio

        async def exported():
            text = await asyncio.to_thread(scrape)
            return ('dspy_pool_cache_hits_total{level="memory"} 1.0' in text and 'dspy_pool_cache_bytes{level="memory"}' in text
                    and 'dspy_pool_program_calls_total{arm="traditional",program="metered",version="1"} 2.0' in text)

        await eventually(exported, timeout_s=10, interval_s=0.2)
    finally:
        await app.stop()


async def test_the_store_level_stays_within_its_byte_bound(tmp_path):
    """Sixty calls with unique inputs to a serve-mode program: the state file's cache holds at most
    --result-cache-store-max-bytes (its soonest-expiring results made room), and the newest result is still served
    from the store after a restart. Unbounded, a busy program's unique inputs grew the file (or a Redis that
    sessions share) by every result for its whole TTL."""
    state_dir = tmp_path / "state"
    bound = 4096

    async def many(stub):
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=_spec("served", "serve")), timeout=30)
        for i in range(60):
            await stub.Execute(execute_request("served", question=f"question number {i} " + "x" * 100), timeout=20)

    await _run(make_config(state=f"sqlite:///{state_dir}/state.db", workers=1, result_cache_store_max_bytes=bound), many)
    with sqlite3.connect(state_dir / "state.db") as conn:
        entries, stored = conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(key) + LENGTH(value)), 0) FROM cache").fetchone()
    conn.close()
    assert 0 < stored <= bound and entries < 60, (entries, stored)

    async def newest_served(stub):
        again = await stub.Execute(execute_request("served", question="question number 59 " + "x" * 100), timeout=20)
        assert (again.served_by, again.cache_level) == ("cache", "store")

    await _run(make_config(state=f"sqlite:///{state_dir}/state.db", workers=1, result_cache_warm_entries=0,
                           result_cache_store_max_bytes=bound), newest_served)
