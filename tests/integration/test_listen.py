"""Listening on a Unix domain socket, for sidecars that share a volume instead of a port."""

import asyncio

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


@pytest.fixture
def taken_port():
    """A port on 127.0.0.1 that another server holds (bound and listening)."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def _children() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize("flag", ["listen", "metrics_port"])
async def test_a_taken_port_stops_start_up_naming_the_address_and_flag_before_any_child_starts(taken_port, flag):
    """A second server on a port already in use: one clear error naming the address and the flag to change, and no sim LM,
    zygote or worker started for nothing (was gRPC's 'Failed to bind ... set GRPC_VERBOSITY=debug' after a full start)."""
    overrides = {"listen": f"127.0.0.1:{taken_port}"} if flag == "listen" else {"metrics_port": taken_port}
    before = _children()
    app = App(make_config(workers=1, **overrides))
    try:
        with pytest.raises(OSError) as caught:
            await app.start()
    finally:
        await app.stop(grace_s=0.5)
    message = str(caught.value)
    assert f"cannot listen on 127.0.0.1:{taken_port}" in message and f"--{flag.replace('_', '-')}" in message, message
    assert app.sim is None and app.pool is None and _children() == before


async def test_a_bad_sim_latency_is_an_invalid_configuration():
    """--sim-latency foo is refused when the configuration is checked (exit 2), not by the sim LM's own usage text."""
    with pytest.raises(ValueError, match="invalid configuration: latency parameters must be numbers"):
        App(make_config(sim_latency="fixed:foo"))


async def test_a_front_group_checks_its_metrics_port_before_any_front_starts(taken_port, tmp_path):
    """--front-processes 2 with --metrics-port taken: the same error naming the address and flag, before any front
    starts (both fronts served, then the group failed with a bare 'Address already in use')."""
    from dspy_pool.fronts.supervisor import FrontSupervisor

    before = _children()
    supervisor = FrontSupervisor(make_config(front_processes=2, state=f"sqlite:///{tmp_path}/state.db", metrics_port=taken_port))
    with pytest.raises(OSError) as caught:
        await supervisor.run(asyncio.Event())
    assert f"cannot listen on 127.0.0.1:{taken_port}" in str(caught.value) and "--metrics-port" in str(caught.value)
    assert _children() == before
