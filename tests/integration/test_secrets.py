"""API keys never reach logs, error messages, status or process arguments."""

import grpc
import psutil
import pytest
from structlog.testing import capture_logs

from dspy_pool.server.app import App
from dspy_pool.simlm.process import start_sim_lm
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import execute_request, make_config

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]

SECRET = "sk-live-SECRETdoNotLeak12345"


async def _a_failing_call(app: App) -> tuple[grpc.aio.AioRpcError, pb.PoolStatus]:
    """Start `app` (its LM fails every call), register qa, call it: the error the client got and the status after."""
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.DSPyPoolStub(channel)
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="qa", signature="question -> answer")))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Execute(execute_request("qa", question="leak?"), timeout=20)
        return caught.value, await stub.GetPoolStatus(pb.GetPoolStatusRequest())


async def test_api_key_never_leaks():
    """With a failing provider, the key appears in no log line, error, status or argv."""
    sim = await start_sim_lm("--error-rate", "1")
    app = App(make_config(lm="openai/sim", lm_api_base=sim.api_base, lm_api_key=SECRET, workers=1, programs=()))
    try:
        with capture_logs() as logs:
            error, status = await _a_failing_call(app)
            processes = [psutil.Process(app.pool.worker_pool.zygote.pid)] + [psutil.Process(h.pid) for h in app.pool.worker_pool.handles()]
            argv = " ".join(" ".join(p.cmdline()) for p in processes)
    finally:
        await app.stop(grace_s=1.0)
        await sim.stop()
    assert error.code() == grpc.StatusCode.INTERNAL
    assert SECRET not in error.details() and SECRET not in str(error.trailing_metadata())
    assert SECRET not in str(status)
    assert SECRET not in str(logs)
    assert SECRET not in argv


async def test_credentials_inside_the_lm_endpoint_url_never_leak():
    """A password in --lm-api-base's user part and a key in its query are masked in status (a breaker's lm_endpoint),
    the start-up line's configuration and every log line; the endpoint is still named."""
    sim = await start_sim_lm("--error-rate", "1")
    host_and_path = sim.api_base.split("://", 1)[1]
    api_base = f"http://opsuser:hunter2-db-pass@{host_and_path}?api-key=QUERYSECRET99"
    app = App(make_config(lm="openai/sim", lm_api_base=api_base, workers=1, programs=()))
    try:
        with capture_logs() as logs:
            error, status = await _a_failing_call(app)
    finally:
        await app.stop(grace_s=1.0)
        await sim.stop()
    seen = [error.details(), str(error.trailing_metadata()), str(status), str(logs)]
    for secret in ("hunter2-db-pass", "QUERYSECRET99"):
        assert not any(secret in text for text in seen), secret
    assert [breaker.lm_endpoint for breaker in status.breakers] == [f"http://opsuser:***@{host_and_path}?api-key=***"]
