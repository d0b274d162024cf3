"""Connections: clients' keepalive pings are accepted, vanished clients are noticed, and old connections are recycled.

grpc core's server defaults closed the connection of any client that pinged more often than every 5 minutes
(too_many_pings: a Go or Java client with keepalive on saw its calls fail UNAVAILABLE), pinged its own clients only
every 2 hours (a client whose host vanished kept its watch streams for that long), and never ended a connection
(behind an L4 balancer each client stays on the replica it first reached).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import grpc
import pytest

from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import execute_request, running_app

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


async def _states_while(channel: grpc.aio.Channel, seconds: float) -> list[str]:
    """The connectivity states the channel moves through over `seconds`."""
    seen: list[str] = []

    async def follow() -> None:
        state = channel.get_state()
        while True:
            await channel.wait_for_state_change(state)
            state = channel.get_state()
            seen.append(state.name)

    following = asyncio.ensure_future(follow())
    await asyncio.sleep(seconds)  # the pings (or ageing) happen on their own schedule: there is nothing to await
    following.cancel()
    return seen


async def test_a_client_pinging_as_often_as_the_server_accepts_keeps_its_connection():
    """A client pinging every second, between calls too, against --client-keepalive-min-s 0.5: its connection stays
    READY (with grpc core's 5 minutes it was closed for too_many_pings within seconds)."""
    async with running_app(workers=1, client_keepalive_min_s=0.5) as (app, _, _):
        options = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}", options=options) as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)
            assert await _states_while(channel, 4.0) == []
            await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)


_WATCHER = textwrap.dedent("""
    import sys, grpc
    from dspy_pool.v1 import dspy_pool_pb2 as pb, dspy_pool_pb2_grpc as pb_grpc
    channel = grpc.insecure_channel(sys.argv[1])  # no keepalive of its own
    stream = pb_grpc.DSPyPoolStub(channel).WatchPoolStatus(pb.WatchPoolStatusRequest(interval_s=0.1))
    try:
        for number, _ in enumerate(stream):
            if number == 0:
                print("watching", flush=True)
            if number >= 300:
                print("still watching", flush=True)
                break
    except grpc.RpcError as error:
        print("ended", error.code().name, flush=True)
""")


async def test_a_client_that_stops_answering_is_disconnected_and_its_watch_ends():
    """A client process frozen (SIGSTOP: its host gone, as the server sees it) under a WatchPoolStatus stream: the
    server's keepalive ping goes unanswered, the connection is closed, and the client finds its watch ended
    UNAVAILABLE when it runs again, instead of the stream going on."""
    async with running_app(workers=1, keepalive_s=0.3, keepalive_timeout_s=0.5) as (app, _, _):
        watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, f"127.0.0.1:{app.port}"], stdout=subprocess.PIPE, text=True,
                                   env={**os.environ, "GRPC_VERBOSITY": "NONE"})
        try:
            assert await asyncio.to_thread(watcher.stdout.readline) == "watching\n"
            watcher.send_signal(signal.SIGSTOP)
            await asyncio.sleep(3.0)  # several keepalive periods: the server gives up on the frozen client
            watcher.send_signal(signal.SIGCONT)
            said = await asyncio.wait_for(asyncio.to_thread(watcher.stdout.read), 60)
        finally:
            watcher.send_signal(signal.SIGCONT)
            watcher.kill()
            watcher.wait()
    assert said.strip() == "ended UNAVAILABLE", said


async def test_an_old_connection_is_replaced_without_failing_a_call():
    """--max-connection-age-s 1: a client calling for 4 s is moved to a new connection (it reconnects), and no call
    fails meanwhile (calls in flight finish on the old one)."""
    async with running_app(workers=1, max_connection_age_s=1.0) as (app, stub, channel):
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="aged", signature="question -> answer")), timeout=30)
        loop = asyncio.get_running_loop()
        ends = loop.time() + 4.0
        calls = 0
        following = asyncio.ensure_future(_states_while(channel, 4.5))
        while loop.time() < ends:
            reply = await stub.Execute(execute_request("aged", question=f"q{calls}"), timeout=10)
            assert reply.outputs["answer"]
            calls += 1
        states = await following
    assert calls > 10 and ("CONNECTING" in states or "IDLE" in states), (calls, states)
