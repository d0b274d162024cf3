"""Graceful shutdown: in-flight calls finish, new calls are refused, nothing is left behind."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dspy_pool.server.app import App
from dspy_pool.stop_signals import REPEAT_AFTER_S

from .harness import FRONTS_SERVING, ServeProcess, eventually, execute_request, make_config, register

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


@contextlib.asynccontextmanager
async def _two_sleepy_calls(server: ServeProcess, seconds: float):
    """Two `sleepy` calls of `seconds` running on the serving `server` (each until it answers): their futures."""
    from dspy_pool.v1 import dspy_pool_pb2 as pb
    from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.DSPyPoolStub(channel)
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        calls = [asyncio.ensure_future(stub.Execute(execute_request("sleepy", seconds=seconds), timeout=120)) for _ in range(2)]

        async def running() -> bool:
            return (await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=5)).in_flight == 2

        await eventually(running, timeout_s=20)
        yield calls


async def test_drain_finishes_in_flight_calls_and_refuses_new_ones():
    """During stop(), running calls complete OK, new calls get UNAVAILABLE, health and status say not serving."""
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
        from dspy_pool.v1 import dspy_pool_pb2 as pb

        assert not (await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=5)).serving  # as health says (it said serving)
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


async def test_a_second_signal_stops_without_waiting_for_the_drain(tmp_path):
    """Ctrl-C twice: the first drains (calls may take the whole --drain-grace-s), the second stops at once, for one front
    and for a front group alike; the calls still in flight end UNAVAILABLE with the server's own status."""
    for fronts in ("1", "2"):
        server = ServeProcess("--front-processes", fronts, "--state-dir", str(tmp_path / fronts), "--optimizer-workers", "0",
                              "--drain-grace-s", "60", ready=FRONTS_SERVING if fronts == "2" else None)
        try:
            await server.serving()
            async with _two_sleepy_calls(server, seconds=45.0) as calls:
                server.process.send_signal(signal.SIGINT)
                await eventually(lambda: server.log.count(b"server_draining") == int(fronts), timeout_s=20)
                await asyncio.sleep(REPEAT_AFTER_S)  # sooner, it is the same stop delivered twice (the test below)
                server.process.send_signal(signal.SIGINT)
                code = await asyncio.to_thread(server.process.wait, 30)  # not the 45 s calls, nor the 60 s grace
                results = await asyncio.gather(*calls, return_exceptions=True)
            assert code == 0, server.log.decode(errors="replace")[-2000:]
            assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.UNAVAILABLE
                       and "shut down" in r.details() for r in results), results
            assert b"drain_cut" in server.log
        finally:
            server.stop()


@pytest.mark.parametrize("fronts, signals", [("1", "hup"), ("2", "term-then-group")], ids=["sighup", "timeout-like"])
async def test_one_stop_delivered_twice_at_once_or_a_sighup_still_drains(tmp_path, fronts, signals):
    """`timeout` and `kill -- -PGID` signal the server and then its whole group (a group's fronts get it from both):
    that is one stop, and the calls in flight finish (they ended UNAVAILABLE, the drain cut). A SIGHUP (a closed
    terminal) drains like SIGTERM (it killed the front mid-call)."""
    server = ServeProcess("--front-processes", fronts, "--state-dir", str(tmp_path), "--optimizer-workers", "0",
                          "--drain-grace-s", "30", ready=FRONTS_SERVING if fronts == "2" else None)
    try:
        await server.serving()
        async with _two_sleepy_calls(server, seconds=2.0) as calls:
            if signals == "hup":
                os.killpg(server.process.pid, signal.SIGHUP)  # the whole group, as a closed terminal does
            else:  # the group's copy after the server began to drain (when the old code read it as "stop now")
                sent_at = time.monotonic()
                server.process.send_signal(signal.SIGTERM)
                await eventually(lambda: server.log.count(b"server_draining") == int(fronts), timeout_s=20)
                if time.monotonic() - sent_at > REPEAT_AFTER_S / 2:
                    pytest.skip("the machine took too long to start draining to send the copy within the repeat window")
                os.killpg(server.process.pid, signal.SIGTERM)
            results = await asyncio.gather(*calls, return_exceptions=True)
            code = await asyncio.to_thread(server.process.wait, 30)
        assert [getattr(result, "outputs", result)["slept"] for result in results] == [2.0, 2.0], results
        assert code == 0 and b"drain_cut" not in server.log, server.log.decode(errors="replace")[-2000:]
    finally:
        server.stop()
