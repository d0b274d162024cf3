"""Graceful shutdown: in-flight calls finish, new calls are refused, nothing is left behind."""

import asyncio
import signal
import subprocess
import sys

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dspy_pool.server.app import App

from .harness import eventually, execute_request, make_config, register

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_drain_finishes_in_flight_calls_and_refuses_new_ones():
    """During stop(), running calls complete OK, new calls get UNAVAILABLE, health turns NOT_SERVING."""
    app = App(make_config(workers=1))
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

    stub = pb_grpc.DSPyPoolStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        running = [stub.Execute(execute_request("sleepy", seconds=0.8), timeout=20) for _ in range(5)]
        await eventually(lambda: app.pool.worker_pool.dispatcher.in_flight == 5)
        stopping = asyncio.ensure_future(app.stop(grace_s=5.0))
        await eventually(lambda: app.pool.worker_pool.dispatcher.closed)
        reply = await health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Execute(execute_request("sleepy", seconds=0.1), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        results = await asyncio.gather(*running)
        assert all(r.outputs["slept"] == 0.8 for r in results)
        await stopping
    finally:
        await channel.close()
        await app.stop()


async def test_sigterm_exits_cleanly_without_orphans():
    """SIGTERM to `dspy-pool serve` exits 0 and takes the zygote and workers with it."""
    front = subprocess.Popen(
        [sys.executable, "-m", "dspy_pool.cli", "serve", "--state", "memory", "--lm", "dummy", "--workers", "2", "--listen", "127.0.0.1:0", "--drain-grace-s", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )

    def wait_until_serving() -> None:
        for line in front.stderr:
            if b"server_serving" in line:
                return
        raise AssertionError("server exited before serving")

    try:
        await asyncio.wait_for(asyncio.to_thread(wait_until_serving), 60)
        children = psutil.Process(front.pid).children(recursive=True)
        assert len(children) >= 3  # sim-less: zygote + 2 workers
        front.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(front.wait, 20)
        assert code == 0
        await eventually(lambda: not any(psutil.pid_exists(c.pid) and c.status() != psutil.STATUS_ZOMBIE for c in children), timeout_s=5)
    finally:
        if front.poll() is None:
            front.kill()
