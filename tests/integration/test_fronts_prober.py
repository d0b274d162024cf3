"""The fronts' health prober (dspy_pool.fronts.prober) as a real process against real gRPC health servers on Unix sockets."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dspy_pool.server.peers import FrontGroup

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def health_server(target: str, status) -> grpc.aio.Server:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    await servicer.set("", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(target)
    await server.start()
    return server


async def test_any_reply_counts_as_an_answer_and_a_missing_front_does_not(tmp_path):
    """Front 0 serves, front 1 answers NOT_SERVING (its workers are down, its loop runs), front 2 is not there."""
    group = FrontGroup(0, 3, str(tmp_path))
    servers = [await health_server(group.socket(0), health_pb2.HealthCheckResponse.SERVING),
               await health_server(group.socket(1), health_pb2.HealthCheckResponse.NOT_SERVING)]
    prober = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dspy_pool.fronts.prober", "--socket-dir", str(tmp_path), "--count", "3", "--interval-s", "0.2",
        "--supervisor-pid", str(os.getpid()), stdout=asyncio.subprocess.PIPE)
    try:
        lines = [json.loads(await asyncio.wait_for(prober.stdout.readline(), 30)) for _ in range(6)]  # two rounds
        assert lines == [{"index": i, "answered": i < 2} for i in range(3)] * 2
    finally:
        prober.kill()
        await prober.wait()
        for server in servers:
            await server.stop(None)
