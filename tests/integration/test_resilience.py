"""The resilience path end to end: real LM faults, breaker, retries and fallbacks."""

import asyncio

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2

from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import eventually, execute_request, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with running_app(breaker_minimum_calls=5, breaker_window=10, breaker_wait_s=1.0, retry_max_attempts=2) as (app, stub, channel):
        static = struct_pb2.Struct()
        static.update({"answer": "static fallback"})
        await register(stub, "guarded", "question -> answer",
                       fallback=pb.FallbackSpec(chain=["cache", "static"], static_outputs=static))
        await register(stub, "unguarded", "question -> answer")
        yield app, stub


async def _breaker(stub, program: str) -> pb.BreakerStatus | None:
    status = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    return next((b for b in status.breakers if b.program == program), None)


async def test_bad_fallback_spec_is_invalid(server):
    """A chain with an unknown step, or static without outputs, is refused at registration."""
    _, stub = server
    for fallback in (pb.FallbackSpec(chain=["pray"]), pb.FallbackSpec(chain=["static"])):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await register(stub, "badfb", "question -> answer", fallback=fallback)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_failing_lm_falls_back_then_breaker_opens_then_recovers(server):
    """LM errors are served by cache/static; the breaker opens and stops LM traffic; recovery closes it."""
    app, stub = server
    primed = await stub.Execute(execute_request("guarded", question="remember me"), timeout=20)
    assert primed.served_by == "primary"
    await app.sim.set_faults(error_rate=1.0)
    try:
        cached = await stub.Execute(execute_request("guarded", question="remember me"), timeout=20)
        assert cached.served_by == "cache" and cached.fallback_reason == "lm_error"
        assert cached.outputs == primed.outputs
        static = await stub.Execute(execute_request("guarded", question="never seen"), timeout=20)
        assert static.served_by == "static" and static.outputs["answer"] == "static fallback"
        for i in range(10):
            await stub.Execute(execute_request("guarded", question=f"q{i}"), timeout=20)
        assert (await _breaker(stub, "guarded")).state == "open"
        before = (await app.sim.stats())["requests"]
        while_open = await asyncio.gather(*(stub.Execute(execute_request("guarded", question=f"open {i}"), timeout=20) for i in range(20)))
        assert all(r.served_by == "static" and r.fallback_reason == "breaker_open" for r in while_open)
        assert (await app.sim.stats())["requests"] == before  # nothing reached the failing LM
    finally:
        await app.sim.set_faults(error_rate=0.0)

    async def closed_after_a_call():
        response = await stub.Execute(execute_request("guarded", question="after recovery"), timeout=20)
        breaker = await _breaker(stub, "guarded")
        return response.served_by == "primary" and breaker.state == "closed" and breaker.closed_total >= 1

    await eventually(closed_after_a_call, timeout_s=10, interval_s=0.2)


async def test_no_fallback_gives_the_lm_error(server):
    """Without a fallback chain, an LM failure after retries is INTERNAL with the error type."""
    app, stub = server
    await app.sim.set_faults(error_rate=1.0)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Execute(execute_request("unguarded", question="q"), timeout=20)
    finally:
        await app.sim.set_faults(error_rate=0.0)
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "LMServerError" in caught.value.details()


async def test_rate_limits_are_retried(server):
    """A 429 is transient: retried with backoff inside the deadline, counted in status."""
    app, stub = server
    status_before = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    await app.sim.set_faults(rate_limit_rate=1.0)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Execute(execute_request("unguarded", question="limited"), timeout=20)
    finally:
        await app.sim.set_faults(rate_limit_rate=0.0)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    status_after = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    assert status_after.retries > status_before.retries


async def test_bad_input_never_falls_back(server):
    """The caller's bad input is INVALID_ARGUMENT even when a static fallback exists."""
    _, stub = server
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Execute(execute_request("guarded"), timeout=20)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
