"""The Prometheus endpoint: gRPC server metrics from the interceptor, pool metrics from the exporter."""

from __future__ import annotations

import asyncio
import urllib.request
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from dspy_pool.pool.controller import Controller
from dspy_pool.pool.metrics import PoolMetrics
from dspy_pool.pool.scaler import ScalerConfig
from dspy_pool.server.breaker import BreakerKey
from dspy_pool.server.metrics_http import MetricsInterceptor, PoolExporter, start_metrics_server, stop_metrics_server

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]

SERVICE = "test.Echo"


def _identity(data: bytes) -> bytes:
    return data


async def _ok(request: bytes, context) -> bytes:
    return request


async def _abort(request: bytes, context) -> bytes:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input")


async def _boom(request: bytes, context) -> bytes:
    raise RuntimeError("boom")


async def _set_code(request: bytes, context) -> bytes:
    context.set_code(grpc.StatusCode.NOT_FOUND)
    context.set_details("nothing here")
    return b""


async def _stream(request: bytes, context):
    for _ in range(3):
        yield request


def _echo_service() -> grpc.GenericRpcHandler:
    unary = {name: grpc.unary_unary_rpc_method_handler(fn, _identity, _identity)
             for name, fn in (("Ok", _ok), ("Abort", _abort), ("Boom", _boom), ("SetCode", _set_code))}
    unary["Stream"] = grpc.unary_stream_rpc_method_handler(_stream, _identity, _identity)
    return grpc.method_handlers_generic_handler(SERVICE, unary)


class _FakeDispatcher(SimpleNamespace):
    def oldest_queued(self):
        return None


def _fake_pool():
    worker = SimpleNamespace(worker_id=1, pid=4242, state="ready", in_flight={}, rss_bytes=1 << 20)
    joining = SimpleNamespace(worker_id=2, pid=4243, state="warming", in_flight={}, rss_bytes=0)
    dispatcher = _FakeDispatcher(worker_concurrency=4, queue_depth=0, completed=5, failed=1, rejected=0, expired_in_queue=0)
    return SimpleNamespace(dispatcher=dispatcher, handles=lambda: [worker, joining], target_workers=2, crash_looping=False,
                           stopping=False)


def _scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(families: dict, family: str, sample: str, **labels) -> float:
    for s in families[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample}{labels} in {family}")


async def test_metrics_endpoint_serves_grpc_and_pool_metrics():
    """After a few calls the endpoint serves the documented gRPC and pool metric names with the right codes."""
    registry = CollectorRegistry()
    server = grpc.aio.server(interceptors=[MetricsInterceptor(registry)])
    server.add_generic_rpc_handlers((_echo_service(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    metrics = PoolMetrics()
    metrics.record_queue_wait(1.0, 0.02)
    exporter = PoolExporter(registry, metrics, scale_counts=lambda: (controller.scale_events, controller.recycled_by_reason))
    controller = Controller(_fake_pool(), metrics, ScalerConfig(min_workers=1, max_workers=2), observers=(exporter.observe,))
    await controller.tick()

    http_server, http_port = start_metrics_server(0, registry)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for _ in range(2):
                assert await channel.unary_unary(f"/{SERVICE}/Ok")(b"hi", timeout=5) == b"hi"
            for method, code in (("Abort", grpc.StatusCode.INVALID_ARGUMENT), ("Boom", grpc.StatusCode.UNKNOWN),
                                 ("SetCode", grpc.StatusCode.NOT_FOUND)):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await channel.unary_unary(f"/{SERVICE}/{method}")(b"x", timeout=5)
                assert caught.value.code() == code
            replies = [r async for r in channel.unary_stream(f"/{SERVICE}/Stream")(b"s", timeout=5)]
            assert len(replies) == 3
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)

        families = await asyncio.to_thread(_scrape, http_port)
        unary = dict(grpc_type="unary", grpc_service=SERVICE)
        assert _value(families, "grpc_server_started", "grpc_server_started_total", grpc_method="Ok", **unary) == 2
        assert _value(families, "grpc_server_handled", "grpc_server_handled_total", grpc_method="Ok", grpc_code="OK", **unary) == 2
        for method, code in (("Abort", "INVALID_ARGUMENT"), ("Boom", "UNKNOWN"), ("SetCode", "NOT_FOUND")):
            assert _value(families, "grpc_server_handled", "grpc_server_handled_total", grpc_method=method, grpc_code=code, **unary) == 1
        assert _value(families, "grpc_server_handled", "grpc_server_handled_total", grpc_type="server_stream",
                      grpc_service=SERVICE, grpc_method="Stream", grpc_code="OK") == 1
        assert _value(families, "grpc_server_handled", "grpc_server_handled_total", grpc_service="grpc.health.v1.Health",
                      grpc_method="Check", grpc_code="OK") == 1
        assert _value(families, "grpc_server_handling_seconds", "grpc_server_handling_seconds_count", grpc_method="Ok", **unary) == 2

        for name in ("dspy_pool_queue_depth", "dspy_pool_workers", "dspy_pool_queue_wait_seconds", "dspy_pool_scale_events",
                     "dspy_pool_breaker_state", "dspy_pool_recycled_workers", "dspy_pool_health_score", "dspy_pool_in_flight",
                     "dspy_pool_worker_cpu_percent"):
            assert name in families, name
        assert _value(families, "dspy_pool_workers", "dspy_pool_workers", state="ready") == 1
        assert _value(families, "dspy_pool_workers", "dspy_pool_workers", state="warming") == 1
        assert _value(families, "dspy_pool_workers", "dspy_pool_workers", state="starting") == 0
        assert _value(families, "dspy_pool_queue_wait_seconds", "dspy_pool_queue_wait_seconds_count") == 1
        assert _value(families, "dspy_pool_queue_wait_seconds", "dspy_pool_queue_wait_seconds_bucket", le="0.025") == 1
        assert _value(families, "dspy_pool_recycled_workers", "dspy_pool_recycled_workers_total", reason="max_requests") == 0
        assert _value(families, "dspy_pool_calls", "dspy_pool_calls_total", outcome="completed") == 5
    finally:
        await asyncio.to_thread(stop_metrics_server, http_server)
        await server.stop(None)


async def test_breaker_states_are_exported_as_one_hot_gauges():
    """Each breaker shows 1 for its current state and 0 for the others."""
    registry = CollectorRegistry()
    metrics = PoolMetrics()
    key = BreakerKey("qa", "sim")
    breakers = SimpleNamespace(snapshots=lambda: {key: SimpleNamespace(state="open", opened_total=2)})
    exporter = PoolExporter(registry, metrics, breakers=breakers)
    exporter.refresh(_fake_pool(), now=1.0)
    http_server, http_port = start_metrics_server(0, registry)
    try:
        families = await asyncio.to_thread(_scrape, http_port)
    finally:
        await asyncio.to_thread(stop_metrics_server, http_server)
    assert _value(families, "dspy_pool_breaker_state", "dspy_pool_breaker_state", program="qa", state="open") == 1
    assert _value(families, "dspy_pool_breaker_state", "dspy_pool_breaker_state", program="qa", state="closed") == 0
    assert _value(families, "dspy_pool_breaker_opened", "dspy_pool_breaker_opened_total", program="qa") == 2
