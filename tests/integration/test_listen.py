"""Listening on a Unix domain socket, for sidecars that share a volume instead of a port."""

import grpc
import pytest

from dspy_pool.server.app import App
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import execute_request, make_config

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_serves_on_a_unix_socket(tmp_path):
    """--listen unix:///path.sock serves the API on that socket."""
    address = f"unix://{tmp_path}/dspy-pool.sock"
    app = App(make_config(listen=address, workers=1, lm="dummy", programs=()))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="qa", signature="question -> answer")))
            response = await stub.Execute(execute_request("qa", question="over a socket?"), timeout=20)
        assert response.outputs["answer"]
    finally:
        await app.stop(grace_s=1.0)
