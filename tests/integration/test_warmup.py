"""Warm-up before a worker takes traffic: programs built and warm-up calls run on workers that join the pool."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from structlog.testing import capture_logs

from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.dispatcher import Job
from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import eventually, execute_request, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

WARMUP_TIMEOUT_S = 1.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    # A small breaker window, so two failed calls open a program's breaker.
    async with running_app(workers=1, fixed_workers=1, warmup_timeout_s=WARMUP_TIMEOUT_S, breaker_window=4,
                           breaker_minimum_calls=2) as running:
        yield running


def inputs(**values) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(values)
    return struct


async def grow_by_one(app) -> tuple[object, dict]:
    """Add one worker; return its handle once it takes traffic, and its worker_warmed log entry."""
    before = {handle.worker_id for handle in app.pool.worker_pool.handles()}
    with capture_logs() as logs:
        app.pool.worker_pool.resize(len(before) + 1)
        new = await eventually(lambda: [h for h in app.pool.worker_pool.dispatcher.ready_workers() if h.worker_id not in before])
    warmed = [e for e in logs if e["event"] == "worker_warmed" and e["worker_id"] == new[0].worker_id]
    return new[0], (warmed[0] if warmed else {})


async def call_on(app, handle, program: pb.Program, **values) -> wire.WorkReply:
    """One call on a chosen worker (session affinity is honoured while it has a free slot)."""
    entry = app.service.registry.get(program.spec.name, program.version)
    request = wire.WorkRequest(program_key=entry.key)
    request.inputs.update(values)
    job = Job(entry.key, entry.ref.spec, request, asyncio.get_running_loop().time() + 10.0, affinity=handle.worker_id)
    reply, served_by = await app.pool.worker_pool.dispatcher.run(job)
    assert served_by is handle
    return reply


async def test_a_new_worker_builds_programs_and_runs_warmup_calls_before_traffic(server):
    """The joining worker has every program loaded and has run each warm-up input once before its first call."""
    app, stub, _ = server
    counter = await register(stub, "counter", "tag -> calls, pid", module="counts_calls",
                             warmup_inputs=[inputs(tag="warm-1"), inputs(tag="warm-2")])
    plain = await register(stub, "plain", "question -> answer")
    status_before = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    handle, warmed = await grow_by_one(app)
    assert warmed["programs"] >= 2 and warmed["calls"] == 2 and warmed["failures"] == 0, warmed
    keys = {app.service.registry.get(p.spec.name).key for p in (counter, plain)}
    assert keys <= handle.loaded_programs
    reply = await call_on(app, handle, counter, tag="first real call")
    assert dict(reply.outputs) == {"calls": 3.0, "pid": float(handle.pid)}  # two warm-up calls came first
    status = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    assert status.warmup_calls == status_before.warmup_calls + 2
    assert status.workers_warming == 0 and all(w.state != "warming" for w in status.workers)
    app.pool.worker_pool.resize(1)


@pytest.mark.parametrize(
    ("warmup_inputs", "message"),
    [
        ([inputs(other="x")], "warmup_inputs[0]: inputs missing for 'bad-warmup': tag"),
        ([inputs(tag="x", extra=1)], "warmup_inputs[0]: unknown inputs for 'bad-warmup': extra"),
        ([inputs(tag=str(n)) for n in range(5)], "at most 4 warmup_inputs, got 5"),
    ],
)
async def test_bad_warmup_inputs_are_rejected_at_registration(server, warmup_inputs, message):
    """Warm-up inputs must fit the program's inputs, and there may be only a few."""
    _, stub, _ = server
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await register(stub, "bad-warmup", "tag -> calls, pid", module="counts_calls", warmup_inputs=warmup_inputs)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert message in raised.value.details()


async def test_a_slow_warmup_is_cut_off_and_the_worker_still_takes_traffic(server):
    """A warm-up call past the warm-up timeout is cancelled, logged as a failure, and the worker serves."""
    app, stub, _ = server
    slow = await register(stub, "slow-warmup", "seconds -> slept", module="sleepy", warmup_inputs=[inputs(seconds=30)])
    failures_before = app.pool.worker_pool.warmup_failures
    try:
        handle, warmed = await grow_by_one(app)
        assert warmed["timed_out"] is True and warmed["failures"] == 1 and warmed["errors"] == ["timed out"], warmed
        assert WARMUP_TIMEOUT_S * 1000 <= warmed["duration_ms"] < WARMUP_TIMEOUT_S * 1000 + 2000
        assert app.pool.worker_pool.warmup_failures == failures_before + 1
        reply = await call_on(app, handle, slow, seconds=0)
        assert reply.outputs["slept"] == 0
    finally:
        await stub.DeleteProgram(pb.DeleteProgramRequest(name="slow-warmup"))
        app.pool.worker_pool.resize(1)


async def test_a_program_whose_breaker_is_open_is_built_but_not_called(server):
    """While a program's LM fails (breaker open) a joining worker builds it but skips its warm-up calls."""
    app, stub, _ = server
    await register(stub, "tripped", "seconds -> slept", module="sleepy", warmup_inputs=[inputs(seconds=30)])
    try:
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Execute(execute_request("tripped", seconds=5), timeout=1.5)  # over breaker.MIN_DEADLINE_COUNTED_S: it counts
            assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        status = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
        assert any(b.program == "tripped" and b.state == "open" for b in status.breakers), status.breakers
        handle, warmed = await grow_by_one(app)
        assert app.service.registry.get("tripped").key in handle.loaded_programs
        assert warmed["failures"] == 0 and warmed["timed_out"] is False, warmed  # the 30 s call was not made
    finally:
        await stub.DeleteProgram(pb.DeleteProgramRequest(name="tripped"))
        app.pool.worker_pool.resize(1)
