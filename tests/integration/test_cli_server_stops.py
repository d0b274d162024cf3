"""What the command line says when the server stops under a command that is waiting on it.

Each test starts its own server (it stops it), runs `dspy-pool top --json` or `dspy-pool
optimize` in-process on a thread, stops the server while the command waits, and reads
what the command printed: the target and what happened, never grpc-core's own words.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex

import grpc
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


async def test_top_says_the_server_is_stopping(capsys, monkeypatch):
    """`top --json` following a server that stops: the server ends the watch saying it is stopping, exit 1."""
    async with _server(workers=1) as app:
        target = f"127.0.0.1:{app.port}"
        top = asyncio.ensure_future(cli_runner(capsys, monkeypatch, target)("top", "--json", "--interval", "0.1"))
        await asyncio.sleep(1.0)  # a few frames
        await app.stop(grace_s=0.5)
        ran = await asyncio.wait_for(top, 30)
    assert ran.code == 1 and ran.out.count("\n") >= 2, (ran.out[-500:], ran.err)
    assert ran.err == "dspy-pool: UNAVAILABLE: Unavailable: the server is stopping; watch again once it is back (reason: UNAVAILABLE)\n"


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


async def test_a_status_watch_ends_unavailable_saying_the_server_is_stopping():
    """A WatchPoolStatus stream open when the server stops ends UNAVAILABLE with the server's reason (CI once read
    CANCELLED: gRPC cancels what is still open when the stop's grace runs out)."""
    async with _server(workers=1) as app, app_channel(app) as stub:
        stream = stub.WatchPoolStatus(pb.WatchPoolStatusRequest(interval_s=10))
        assert len((await stream.read()).workers) == 1
        stopping = asyncio.ensure_future(app.stop(grace_s=0.5))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(stream.read(), 10)  # not the 10 s interval: the stop ends the wait
        await stopping
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == "Unavailable: the server is stopping; watch again once it is back"


async def test_a_job_watch_ends_cleanly_at_the_jobs_last_state_when_the_server_stops(capsys, monkeypatch, tmp_path):
    """A WatchOptimization stream open when the server stops ends OK at the job's last state (running), and one
    opened while the server drains ends at once: neither is left for gRPC to cancel."""
    async with _server(workers=1, optimizer_workers=1, sim_latency="fixed:100") as app, app_channel(app) as stub:
        cli = cli_runner(capsys, monkeypatch, f"127.0.0.1:{app.port}")
        spec = tmp_path / "coder.yaml"
        spec.write_text("name: coder\nsignature: word -> code\n")
        assert (await cli("register", str(spec))).code == 0
        assert (await cli("datasets", "add", "words", "examples/optimize/dataset.jsonl")).code == 0
        await eventually(lambda: app.pool.worker_pool.optimizer_handles(), timeout_s=30)
        job = await stub.StartOptimization(pb.StartOptimizationRequest(
            program="coder", dataset="words", optimizer="labeled_few_shot", metric=pb.MetricSpec(kind="exact_match", fields=["code"])),
            timeout=30)
        stream = stub.WatchOptimization(pb.GetOptimizationRequest(job_id=job.job_id))

        async def running() -> bool:
            return (await stub.GetOptimization(pb.GetOptimizationRequest(job_id=job.job_id), timeout=10)).state == "running"

        await eventually(running, timeout_s=60, interval_s=0.05)
        await app.jobs.stop()  # as App.stop does first; the drain and the gRPC stop come after
        seen = [update async for update in stream]  # ends without an error
        assert seen and seen[-1].state == "running", [update.state for update in seen]
        late = stub.WatchOptimization(pb.GetOptimizationRequest(job_id=job.job_id))
        assert [update.state async for update in late] == ["running"]


@contextlib.asynccontextmanager
async def app_channel(app: App):
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.DSPyPoolStub(channel)
