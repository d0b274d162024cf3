"""The autoscaler and the metrics endpoint inside the real server."""

import asyncio
import urllib.request

import pytest

from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import eventually, execute_request, register, running_app

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]


async def test_server_grows_under_load_shrinks_after_and_exports_metrics():
    """With min 1 / max 3 workers, a burst grows the pool, idleness shrinks it, and /metrics has the names."""
    overrides = dict(workers=1, min_workers=1, max_workers=3, worker_concurrency=4, downscale_window_s=1.0,
                     upscale_cooldown_s=0.2, controller_interval_s=0.1, metrics_port=0)
    async with running_app(**overrides) as (app, stub, _):
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        burst = [stub.Execute(execute_request("sleepy", seconds=0.3), timeout=30) for _ in range(60)]
        results = await asyncio.gather(*burst)
        assert all(r.outputs["slept"] == 0.3 for r in results)
        status = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
        assert status.scale_events >= 1 and status.config.max_workers == 3
        assert len({r.worker.pid for r in results}) >= 2
        await eventually(lambda: app.pool.worker_pool.target_workers == 1, timeout_s=20, interval_s=0.1)
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5).read().decode())
    for name in ("grpc_server_started_total", "grpc_server_handled_total", "grpc_server_handling_seconds",
                 "dspy_pool_queue_depth", "dspy_pool_queue_wait_seconds", "dspy_pool_workers", "dspy_pool_scale_events_total"):
        assert name in body
    assert 'grpc_method="Execute"' in body and 'grpc_code="OK"' in body
