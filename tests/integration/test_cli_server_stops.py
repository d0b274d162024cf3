"""What the command line says when the server stops under a command that is waiting on it.

Each test starts its own server (it stops it), runs `dspy-pool top --json` or `dspy-pool
optimize` in-process on a thread, stops the server while the command waits, and reads
what the command printed: the target and what happened, never grpc-core's own words.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex

import pytest
import structlog

from dspy_pool.server.app import App
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .cli_runner import cli_runner
from .harness import eventually, make_config

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


@contextlib.asynccontextmanager
async def _server(**overrides):
    with structlog.testing.capture_logs():  # the server logs to the stdout the tests capture
        app = App(make_config(**overrides))
        await app.start()
        try:
            yield app
        finally:
            await app.stop(grace_s=0.5)  # idempotent: the tests stop it first


async def test_top_says_the_server_closed_the_connection(capsys, monkeypatch):
    """`top --json` following a server that stops: 'the server at TARGET closed the connection', exit 1."""
    async with _server(workers=1) as app:
        target = f"127.0.0.1:{app.port}"
        top = asyncio.ensure_future(cli_runner(capsys, monkeypatch, target)("top", "--json", "--interval", "0.1"))
        await asyncio.sleep(1.0)  # a few frames
        await app.stop(grace_s=0.5)
        ran = await asyncio.wait_for(top, 30)
    assert ran.code == 1 and ran.out.count("\n") >= 2, (ran.out[-500:], ran.err)
    assert ran.err == f"dspy-pool: UNAVAILABLE: the server at {target} closed the connection (it stopped or restarted)\n"


async def test_optimize_says_a_running_job_will_show_as_interrupted_and_how_to_start_it_again(capsys, monkeypatch, tmp_path):
    """`optimize` waiting on a running job when the server stops: the job will show as interrupted after a restart
    (not 'may still be running'), and the command that starts it again; exit 1."""
    async with _server(workers=1, optimizer_workers=1, sim_latency="fixed:100") as app:
        target = f"127.0.0.1:{app.port}"
        cli = cli_runner(capsys, monkeypatch, target)
        spec = tmp_path / "coder.yaml"
        spec.write_text("name: coder\nsignature: word -> code\n")
        assert (await cli("register", str(spec))).code == 0
        assert (await cli("datasets", "add", "words", "examples/optimize/dataset.jsonl")).code == 0
        await eventually(lambda: app.pool.worker_pool.optimizer_handles(), timeout_s=30)
        optimize = asyncio.ensure_future(cli("optimize", "coder", "--dataset", "words", "--optimizer", "labeled_few_shot",
                                             "--metric-field", "code"))
        async with app_channel(app) as stub:
            async def running() -> bool:
                jobs = (await stub.ListOptimizations(pb.ListOptimizationsRequest(program="coder"), timeout=10)).jobs
                return bool(jobs) and jobs[0].state == "running"

            await eventually(running, timeout_s=60, interval_s=0.05)
        await app.stop(grace_s=0.5)
        ran = await asyncio.wait_for(optimize, 30)
    error = ran.err.splitlines()[-1]  # after the progress lines
    assert ran.code == 1, ran.err
    assert error.startswith((f"dspy-pool: UNAVAILABLE: the server at {target} closed the connection (it stopped or restarted);",
                             f"dspy-pool: the server at {target} ended the watch")), ran.err
    assert "will show as interrupted once the server is back" in error and "may still be running" not in error
    command = shlex.split(error.partition("to start it again: ")[2])
    assert command[:7] == ["dspy-pool", "optimize", "coder", "--dataset", "words", "--optimizer", "labeled_few_shot"]


@contextlib.asynccontextmanager
async def app_channel(app: App):
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.DSPyPoolStub(channel)
