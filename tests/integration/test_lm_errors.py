"""LM failures end to end, by the simulated LM's fault injection: what the caller sees and what the provider received.

One server for the module with DSPy's own LM retries on (lm_num_retries=2) and
the server's retries on (3 attempts), so a failure that either of them retried
would show up as extra requests at the simulated LM. Its default deadline is
short so that a call sent without one ends on the server's timer, with the
server's ErrorInfo, rather than on the client's.
"""

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import execute_request, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

NO_FAULTS = dict(error_rate=0.0, rate_limit_rate=0.0, hang_rate=0.0, malformed_rate=0.0, disconnect_rate=0.0,
                 auth_error_rate=0.0, bad_request_rate=0.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    overrides = dict(workers=1, lm_num_retries=2, retry_max_attempts=3, sim_latency="fixed:5", default_deadline_s=1.5)
    async with running_app(**overrides) as (app, stub, _channel):
        static = struct_pb2.Struct()
        static.update({"answer": "static fallback"})
        await register(stub, "plain", "question -> answer")
        await register(stub, "guarded", "question -> answer", fallback=pb.FallbackSpec(chain=["static"], static_outputs=static))
        yield app, stub


@pytest_asyncio.fixture(loop_scope="module")
async def faults(server):
    """Sets the simulated LM's faults for one test and clears them after it."""
    app, _ = server

    async def set_faults(**rates):
        await app.sim.set_faults(**{**NO_FAULTS, **rates})

    yield set_faults
    await app.sim.set_faults(**NO_FAULTS)


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    raise AssertionError("no ErrorInfo in the status details")


async def requests_seen(app) -> int:
    return (await app.sim.stats())["requests"]


async def test_refused_key_fails_fast_after_one_request(server, faults):
    """A 401 is LM_AUTH: FAILED_PRECONDITION naming DSPY_POOL_LM_API_KEY, sent exactly once (no DSPy retry, no server retry)."""
    app, stub = server
    await faults(auth_error_rate=1.0)
    before = await requests_seen(app)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Execute(execute_request("plain", question="who am I?"), timeout=20)
    assert await requests_seen(app) - before == 1
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "DSPY_POOL_LM_API_KEY" in caught.value.details()
    info = error_info(caught.value)
    assert info.reason == "LM_AUTH" and info.metadata["error_type"] == "LMAuthError"
    assert (info.metadata["may_have_run"], info.metadata["transient"]) == ("false", "false")


async def test_over_long_prompt_is_the_callers_and_never_falls_back(server, faults):
    """A 400 context-window refusal is INVALID_ARGUMENT after one request, even for a program with a static fallback."""
    app, stub = server
    await faults(bad_request_rate=1.0)
    before = await requests_seen(app)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Execute(execute_request("guarded", question="a very long question"), timeout=20)
    assert await requests_seen(app) - before == 1
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "LM_BAD_REQUEST"


async def test_hanging_lm_is_answered_by_the_static_step_inside_the_deadline(server, faults):
    """With a hanging LM and a 2 s deadline, the primary is cut off early enough for the static step to answer."""
    _, stub = server
    await faults(hang_rate=1.0)
    response = await stub.Execute(execute_request("guarded", question="are you there?"), timeout=2)
    assert response.served_by == "static" and response.fallback_reason == "timeout"
    assert response.outputs["answer"] == "static fallback"


async def test_hanging_lm_without_fallback_is_a_deadline_that_may_have_run(server, faults):
    """Without a chain the primary keeps the whole deadline; the error says the call may have run, so nobody retries it."""
    _, stub = server
    await faults(hang_rate=1.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Execute(execute_request("plain", question="still there?"))  # the server's 1.5 s default deadline
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info = error_info(caught.value)
    assert info.reason == "DEADLINE_EXCEEDED" and info.metadata["may_have_run"] == "true"


async def test_rate_limits_are_still_retried(server, faults):
    """A 429 is transient and did not run: DSPy and the server both retry it, so the LM sees more than one request."""
    app, stub = server
    await faults(rate_limit_rate=1.0)
    before = await requests_seen(app)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Execute(execute_request("plain", question="busy?"), timeout=20)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(caught.value)
    assert info.reason == "LM_RATE_LIMITED" and info.metadata["may_have_run"] == "false"
    assert await requests_seen(app) - before > 1
