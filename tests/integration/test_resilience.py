"""The resilience path end to end: real LM faults, breaker, retries and fallbacks."""

import asyncio

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2

from dspy_pool.v1 import dspy_pool_pb2 as pb

from dspy_pool.simlm.process import start_sim_lm

from .harness import eventually, execute_request, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backup_lm():
    backup = await start_sim_lm("--latency", "fixed:5")
    yield backup
    await backup.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(backup_lm):
    overrides = dict(breaker_minimum_calls=5, breaker_window=10, breaker_wait_s=1.0, retry_max_attempts=2,
                     fallback_lms=(f"openai/backup@{backup_lm.api_base}",), session_max_in_flight=2)
    async with running_app(**overrides) as (app, stub, channel):
        static = struct_pb2.Struct()
        static.update({"answer": "static fallback"})
        await register(stub, "guarded", "question -> answer",
                       fallback=pb.FallbackSpec(chain=["cache", "static"], static_outputs=static))
        await register(stub, "unguarded", "question -> answer")
        await register(stub, "lm_guarded", "question -> answer", fallback=pb.FallbackSpec(chain=["lm"], lm="openai/backup"))
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
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


async def test_lm_fallback_runs_on_the_backup_provider(server, backup_lm):
    """When the primary LM fails, the "lm" step answers from the operator's backup LM."""
    app, stub = server
    before = (await backup_lm.stats())["requests"]
    await app.sim.set_faults(error_rate=1.0)
    try:
        response = await stub.Execute(execute_request("lm_guarded", question="via backup"), timeout=20)
    finally:
        await app.sim.set_faults(error_rate=0.0)
    assert response.served_by == "lm" and response.fallback_reason == "lm_error"
    assert response.outputs["answer"].startswith("sim answer")
    assert (await backup_lm.stats())["requests"] > before


async def test_fallback_lm_must_be_allow_listed(server):
    """Clients cannot name an LM the operator did not allow, nor choose its endpoint."""
    _, stub = server
    for fallback in (pb.FallbackSpec(chain=["lm"], lm="openai/elsewhere"),
                     pb.FallbackSpec(chain=["lm"], lm="openai/backup", lm_api_base="http://10.0.0.1/v1")):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await register(stub, "sneaky", "question -> answer", fallback=fallback)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_session_in_flight_limit(server):
    """A session may have at most session_max_in_flight calls running; the next is RESOURCE_EXHAUSTED."""
    _, stub = server

    def call():
        request = execute_request("sleepy", seconds=0.5)
        request.session_id = "busy-session"
        return stub.Execute(request, timeout=20)

    results = await asyncio.gather(call(), call(), call(), return_exceptions=True)
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) == 1 and refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_fallback_answer_counts_as_the_versions_error_and_is_never_captured(server):
    """A call answered by the static fallback: its version's statistics count it as an error (the error-rate trigger
    and the A/B figures see the outage; it counted as an error-free call) and a capturing program does not keep it as
    an example (a fallback answer rated well became a train example of the program)."""
    app, stub = server
    static = struct_pb2.Struct()
    static.update({"answer": "static fallback"})
    await register(stub, "captured_fb", "question -> answer", fallback=pb.FallbackSpec(chain=["static"], static_outputs=static),
                   capture=pb.CapturePolicy(sample_rate=1.0))
    await app.sim.set_faults(error_rate=1.0)
    try:
        request = execute_request("captured_fb", question="during the outage")
        request.request_id = "fell-back"
        reply = await stub.Execute(request, timeout=20)
    finally:
        await app.sim.set_faults(error_rate=0.0)
    assert reply.served_by == "static" and reply.fallback_reason
    stats = await stub.GetProgramStats(pb.GetProgramStatsRequest(program="captured_fb"), timeout=10)
    assert [(arm.calls, arm.errors) for arm in stats.arms] == [(1, 1)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RecordFeedback(pb.RecordFeedbackRequest(request_id="fell-back", score=1.0, has_score=True), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
