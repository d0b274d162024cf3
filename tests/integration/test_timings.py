"""ExecuteResponse.timings from a real `dspy-pool serve` (uvloop, whose loop clock counts whole milliseconds)."""

from __future__ import annotations

import grpc
import pytest

from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import ServeProcess, execute_request

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


async def test_a_calls_total_is_never_under_its_execution_time(tmp_path):
    server = await ServeProcess("--state-dir", str(tmp_path), "--optimizer-workers", "0").serving()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="qa", signature="question -> answer")), timeout=30)
            for number in range(40):  # the in-worker LM answers in about a millisecond: a ms-grained clock shows at once
                timings = (await stub.Execute(execute_request("qa", question=f"q{number}"), timeout=30)).timings
                assert timings.total_ms >= timings.execution_ms > 0, timings
                assert timings.queue_wait_ms == pytest.approx(timings.total_ms - timings.execution_ms)
    finally:
        server.stop()
