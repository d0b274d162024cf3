"""Worker crashes, kills, crash loops at boot and orphans: failure stays per worker."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import grpc
import psutil
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from dspy_pool import errors
from dspy_pool.server.app import App
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import eventually, execute_request, make_config, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with running_app(workers=2) as (app, stub, channel):
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        await register(stub, "exits", "code -> never", "exits")
        await register(stub, "qa", "question -> answer")
        yield app, stub


def _ready_pids(app) -> set[int]:
    return {h.pid for h in app.pool.worker_pool.handles() if h.state.value == "ready"}


async def test_worker_exit_mid_request_fails_only_its_calls(server):
    """os._exit in a worker fails that call with UNAVAILABLE at once; calls on the other worker finish."""
    app, stub = server
    before = _ready_pids(app)
    bystanders = [stub.Execute(execute_request("sleepy", seconds=0.5), timeout=20) for _ in range(4)]
    await eventually(lambda: app.pool.worker_pool.dispatcher.in_flight == 4)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Execute(execute_request("exits", code=9), timeout=20)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "died" in caught.value.details()
    assert time.monotonic() - started < 10.0  # at once, not at its 20 s deadline
    results = await asyncio.gather(*bystanders, return_exceptions=True)
    crashed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(r.code() == grpc.StatusCode.UNAVAILABLE for r in crashed)
    assert len(crashed) <= 2  # at most the ones that shared the dying worker
    await eventually(lambda: len(_ready_pids(app)) == 2 and _ready_pids(app) != before)


async def test_sigkill_during_load_loses_no_queued_call(server):
    """SIGKILL of a busy worker fails only its running calls; every queued call still runs."""
    app, stub = server
    calls = [stub.Execute(execute_request("sleepy", seconds=0.3), timeout=30) for _ in range(80)]
    await eventually(lambda: app.pool.worker_pool.dispatcher.queue_depth > 0)
    victim = next(iter(_ready_pids(app)))
    os.kill(victim, signal.SIGKILL)
    results = await asyncio.gather(*calls, return_exceptions=True)
    failed = [r for r in results if isinstance(r, Exception)]
    assert all(isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.UNAVAILABLE for r in failed)
    assert len(failed) <= 16  # no more than one worker's worth of slots
    await eventually(lambda: len(_ready_pids(app)) == 2 and victim not in _ready_pids(app))
    fresh = await asyncio.gather(*(stub.Execute(execute_request("qa", question=f"after {i}"), timeout=20) for i in range(10)))
    assert all(r.outputs["answer"] for r in fresh)


async def test_garbage_on_the_channel_poisons_the_worker(server):
    """A worker that writes bytes that are not a frame is killed and replaced."""
    app, _ = server
    handle = next(h for h in app.pool.worker_pool.handles() if h.state.value == "ready")
    handle.data_received(b"\xff" * 64)  # exactly what the front sees when a worker corrupts its channel
    await eventually(lambda: handle.pid not in _ready_pids(app) and len(_ready_pids(app)) == 2)
    assert handle.death_reason.startswith("protocol_error")


async def test_crash_loop_at_boot_stops_respawning():
    """Workers that die at boot: respawning stops, start-up fails UNAVAILABLE and the log says why."""
    app = App(make_config(programs=("tests.fixtures.crash_at_boot",), crash_loop_threshold=3, workers=2))
    with capture_logs() as logs:
        with pytest.raises(errors.Unavailable):
            await app.start()
        await app.stop(grace_s=0.5)
    events = [entry["event"] for entry in logs]
    assert "crash_loop_detected" in events
    assert events.count("worker_spawned") == 0
    assert not app.pool.worker_pool.healthy


async def test_no_orphans_after_kill_9_of_the_front(tmp_path):
    """After SIGKILL of the front, the zygote and every worker are gone within 2 seconds."""
    front = subprocess.Popen(
        [sys.executable, "-m", "dspy_pool.cli", "serve", "--state", "memory", "--lm", "dummy", "--workers", "3", "--listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def descendants():
            try:
                return psutil.Process(front.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                return []

        children = await eventually(lambda: (lambda c: c if len(c) >= 4 else None)(descendants()), timeout_s=60)
        pids = [c.pid for c in children]
        front.send_signal(signal.SIGKILL)
        front.wait()
        await eventually(lambda: not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE], timeout_s=10)
    finally:
        if front.poll() is None:
            front.kill()
