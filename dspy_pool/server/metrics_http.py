"""Prometheus metrics: gRPC server metrics via an interceptor, pool metrics per tick, an HTTP endpoint.

    grpc.aio server ── MetricsInterceptor ──> plain per-method counts (ints, bucket counts)
                        (wraps each handler;    read at scrape time as grpc_server_started_total,
                         only when metrics      grpc_server_handled_total{grpc_code},
                         are served)            grpc_server_handling_seconds
    Controller tick ── PoolExporter.observe(snapshot) ──> an immutable copy
    scrape thread   ── PoolExporter.collect() reads only that copy ──> dspy_pool_* families
    start_metrics_server(port, registry) ──> prometheus_client's HTTP server on 127.0.0.1

Names and labels of the gRPC metrics follow go-grpc-prometheus / py-grpc-prometheus
(grpc_type is unary, server_stream, client_stream or bidi_stream), so existing
dashboards work unchanged. Everything lives on a dedicated CollectorRegistry,
never the process-global one, so tests and several servers in one process do
not collide.

Why the pool side is published per tick rather than read at scrape time: the
HTTP server runs in its own thread, while the pool, dispatcher and breakers
belong to the event loop and are not thread-safe. The exporter copies what it
needs on the loop (in `observe`) and the scrape reads only that frozen copy.
"""

from __future__ import annotations

import asyncio
import bisect
import inspect
import threading
import time
from typing import Any, Callable, Iterable

import grpc
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from dspy_pool.pool.metrics import PoolMetrics, PoolSnapshot, WaitHistogram

__all__ = [
    "HANDLING_BUCKETS_S",
    "MetricsInterceptor",
    "PoolExporter",
    "start_metrics_server",
    "stop_metrics_server",
]

# LM calls take seconds; the default Prometheus buckets stop at 10 s.
HANDLING_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_BUCKET_NAMES = tuple(floatToGoString(bound) for bound in HANDLING_BUCKETS_S) + ("+Inf",)

_UNARY, _SERVER_STREAM, _CLIENT_STREAM, _BIDI = "unary", "server_stream", "client_stream", "bidi_stream"


def _split_method(full_method: str) -> tuple[str, str]:
    # "/dspy_pool.v1.DSPyPool/Execute" -> ("dspy_pool.v1.DSPyPool", "Execute")
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service or "unknown", method or "unknown"


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return _BIDI
    if handler.request_streaming:
        return _CLIENT_STREAM
    if handler.response_streaming:
        return _SERVER_STREAM
    return _UNARY


def _code_after_exception(context: grpc.aio.ServicerContext, exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    code = _context_code(context)
    # After context.abort() the code is set on the context and AbortError is raised;
    # any other exception reaches the client as UNKNOWN.
    if code is not None and code is not grpc.StatusCode.OK:
        return code
    return grpc.StatusCode.UNKNOWN


def _context_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except Exception:
        return None
    if code is None or isinstance(code, grpc.StatusCode):
        return code
    # Some grpc versions hand back the raw integer status.
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return None


class _MethodMetrics:
    """One method's counts as plain numbers: the call path only adds to them; the scrape thread reads them.

    Why not prometheus_client's Counter/Histogram children: each inc()/observe() takes a lock and
    goes through several method calls, paid on every RPC; these ints cost an attribute add. The
    scrape reads them at once from its thread (the GIL keeps each read whole), so a scrape that
    lands mid-call may see one call in `started` and not yet in `handled`, as with any Counter.
    """

    __slots__ = ("labels", "started", "handled", "buckets", "seconds_sum", "created")

    def __init__(self, labels: tuple[str, str, str]) -> None:
        self.labels = labels
        self.started = 0
        self.handled: dict[grpc.StatusCode, int] = {}
        self.buckets = [0] * (len(HANDLING_BUCKETS_S) + 1)  # one per upper bound, then +Inf; not cumulative
        self.seconds_sum = 0.0
        self.created = time.time()

    def finish(self, code: grpc.StatusCode, seconds: float) -> None:
        handled = self.handled
        handled[code] = handled.get(code, 0) + 1
        self.buckets[bisect.bisect_left(HANDLING_BUCKETS_S, seconds)] += 1  # le: a value on a bound counts in it
        self.seconds_sum += seconds


class _GrpcCollector(Collector):
    """grpc_server_* families built at scrape time from the interceptor's plain counts."""

    def __init__(self, methods: dict[tuple[str, str, str], _MethodMetrics]) -> None:
        self._methods = methods

    def describe(self) -> Iterable:
        return ()

    def collect(self) -> Iterable:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        started = CounterMetricFamily("grpc_server_started", "RPCs started on the server.", labels=labels)
        handled = CounterMetricFamily("grpc_server_handled", "RPCs completed on the server, regardless of success or failure.",
                                      labels=labels + ["grpc_code"])
        handling = HistogramMetricFamily("grpc_server_handling_seconds", "Response latency (seconds) of RPCs handled by the server.",
                                         labels=labels)
        for metrics in list(self._methods.values()):  # a copy: the loop may add a method meanwhile
            key = list(metrics.labels)
            started.add_metric(key, metrics.started, created=metrics.created)
            for code, count in list(metrics.handled.items()):
                handled.add_metric(key + [code.name], count, created=metrics.created)
            counts, total, cumulative = list(metrics.buckets), metrics.seconds_sum, 0
            buckets = []
            for bound, count in zip(_BUCKET_NAMES, counts):
                cumulative += count
                buckets.append((bound, cumulative))
            handling.add_metric(key, buckets, sum_value=total)
            handling.samples.append(Sample("grpc_server_handling_seconds_created", dict(zip(labels, key)), metrics.created))
        yield started
        yield handled
        yield handling


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC by type, service, method and final status code.

    Install it only when metrics are served: it costs every RPC a wrapper, however cheap its counting.
    """

    def __init__(self, registry: CollectorRegistry, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._methods: dict[tuple[str, str, str], _MethodMetrics] = {}
        # Method path -> (the handler grpc found, its wrapper): generic handlers hand back the same handler object
        # for a method on every call, so it is wrapped once, not once per call.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        registry.register(_GrpcCollector(self._methods))

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpc answers UNIMPLEMENTED itself
        full_method = handler_call_details.method
        wrapped = self._wrapped.get(full_method)
        if wrapped is not None and wrapped[0] is handler:
            return wrapped[1]
        rpc_type = _rpc_type(handler)
        service, method = _split_method(full_method)
        key = (rpc_type, service, method)
        metrics = self._methods.get(key)
        if metrics is None:
            metrics = self._methods[key] = _MethodMetrics(key)
        wrapper = self._wrap(handler, rpc_type, metrics)
        self._wrapped[full_method] = (handler, wrapper)
        return wrapper

    def _wrap(self, handler: grpc.RpcMethodHandler, rpc_type: str, metrics: _MethodMetrics) -> grpc.RpcMethodHandler:
        clock = self._clock
        if rpc_type == _UNARY:
            behavior, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        elif rpc_type == _SERVER_STREAM:
            behavior, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        elif rpc_type == _CLIENT_STREAM:
            behavior, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        else:
            behavior, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler

        if inspect.isasyncgenfunction(behavior):
            async def wrapped(request_or_iterator, context):
                metrics.started += 1
                started = clock()
                try:
                    async for response in behavior(request_or_iterator, context):
                        yield response
                except BaseException as exc:
                    metrics.finish(_code_after_exception(context, exc), clock() - started)
                    raise
                metrics.finish(_context_code(context) or grpc.StatusCode.OK, clock() - started)
        else:
            async def wrapped(request_or_iterator, context):  # type: ignore[misc]
                metrics.started += 1
                started = clock()
                try:
                    result = behavior(request_or_iterator, context)
                    if inspect.isawaitable(result):
                        result = await result
                except BaseException as exc:
                    metrics.finish(_code_after_exception(context, exc), clock() - started)
                    raise
                metrics.finish(_context_code(context) or grpc.StatusCode.OK, clock() - started)
                return result

        return factory(wrapped, request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)


class PoolExporter(Collector):
    """Pool metrics for Prometheus, refreshed on the event loop, read by the scrape thread.

    Pass `observe` to the pool as an observer of the controller's ticks.
    `scale_counts` (a callable returning scale events by direction and
    recycled workers by reason) and `breakers` (anything with
    `snapshots() -> {key: BreakerSnapshot}`, key with .program and
    .lm_endpoint) are optional.
    """

    def __init__(self, registry: CollectorRegistry, metrics: PoolMetrics, *,
                 scale_counts: Callable[[], tuple[dict[str, int], dict[str, int]]] | None = None, breakers: Any = None,
                 cache_levels: Callable[[], list[tuple[str, Any]]] | None = None,
                 program_arms: Callable[[], dict] | None = None) -> None:
        self.metrics = metrics
        self.scale_counts = scale_counts
        self.breakers = breakers
        self.cache_levels = cache_levels  # () -> [(level, CacheStats)]
        self.program_arms = program_arms  # () -> {(program, version, arm): ArmView}
        self._lock = threading.Lock()
        self._published: tuple[PoolSnapshot | None, WaitHistogram, dict[str, int], dict[str, int], tuple, tuple, tuple] = (
            None, metrics.wait_histogram(), {}, {}, (), (), ())
        registry.register(self)

    def observe(self, snapshot: PoolSnapshot) -> None:
        """Publish `snapshot` and copies of the counters; call on the event loop."""
        scale_events, recycled = self.scale_counts() if self.scale_counts is not None else ({}, {})
        breakers: tuple = ()
        if self.breakers is not None:
            breakers = tuple(
                (str(getattr(key, "program", key)), str(getattr(key, "lm_endpoint", "")), str(snap.state), snap.opened_total)
                for key, snap in self.breakers.snapshots().items()
            )
        caches = tuple(self.cache_levels()) if self.cache_levels is not None else ()
        arms = tuple(self.program_arms().items()) if self.program_arms is not None else ()
        published = (snapshot, self.metrics.wait_histogram(), scale_events, recycled, breakers, caches, arms)
        with self._lock:
            self._published = published

    def refresh(self, pool: Any, now: float | None = None) -> PoolSnapshot:
        """Take a snapshot of `pool` and publish it (for use without a controller)."""
        snapshot = self.metrics.snapshot(pool, time.monotonic() if now is None else now)
        self.observe(snapshot)
        return snapshot

    def describe(self) -> Iterable:
        return ()  # collected lazily: registering must not call collect() before the first tick

    def collect(self) -> Iterable:
        with self._lock:
            snapshot, histogram, scale_events, recycled, breakers, caches, arms = self._published
        yield _histogram("dspy_pool_queue_wait_seconds", "Time calls waited in the queue before reaching a worker.", histogram)
        scales = CounterMetricFamily("dspy_pool_scale_events", "Pool resizes applied by the controller.", labels=["direction"])
        for direction in ("up", "down"):
            scales.add_metric([direction], scale_events.get(direction, 0))
        yield scales
        recycles = CounterMetricFamily("dspy_pool_recycled_workers", "Workers replaced by recycling.", labels=["reason"])
        for reason in sorted(set(recycled) | {"max_requests", "max_rss", "max_age"}):
            recycles.add_metric([reason], recycled.get(reason, 0))
        yield recycles
        breaker_state = GaugeMetricFamily("dspy_pool_breaker_state", "1 for the current state of each circuit breaker.",
                                          labels=["program", "lm_endpoint", "state"])
        breaker_opened = CounterMetricFamily("dspy_pool_breaker_opened", "Times each circuit breaker opened.",
                                             labels=["program", "lm_endpoint"])
        for program, endpoint, state, opened in breakers:
            for candidate in ("closed", "open", "half_open"):
                breaker_state.add_metric([program, endpoint, candidate], 1.0 if state == candidate else 0.0)
            breaker_opened.add_metric([program, endpoint], opened)
        yield breaker_state
        yield breaker_opened
        yield from _cache_families(caches)
        yield from _arm_families(arms)
        if snapshot is None:
            return
        workers = GaugeMetricFamily("dspy_pool_workers", "Workers by state.", labels=["state"])
        workers.add_metric(["ready"], snapshot.workers_ready)
        workers.add_metric(["starting"], snapshot.workers_starting - snapshot.workers_warming)
        workers.add_metric(["warming"], snapshot.workers_warming)
        workers.add_metric(["draining"], snapshot.workers_draining)
        yield workers
        for name, help_text, value in (
            ("dspy_pool_target_workers", "Workers the pool is asked to hold.", snapshot.target_workers),
            ("dspy_pool_queue_depth", "Calls waiting in the queue.", snapshot.queue_depth),
            ("dspy_pool_in_flight", "Calls running on workers.", snapshot.in_flight),
            ("dspy_pool_utilisation", "Calls in flight on ready workers / their concurrency.", snapshot.utilisation),
            ("dspy_pool_queue_wait_p95_seconds", "p95 queue wait over the short window.", snapshot.queue_wait_p95_s),
            ("dspy_pool_oldest_queued_seconds", "Age of the oldest queued call.", snapshot.oldest_queued_age_s),
            ("dspy_pool_execution_p95_seconds", "p95 execution time over the window.", snapshot.execution_p95_s),
            ("dspy_pool_throughput_calls_per_second", "Finished calls per second over the window.", snapshot.throughput_per_s),
            ("dspy_pool_error_rate", "Share of finished calls that failed over the window.", snapshot.error_rate),
            ("dspy_pool_worker_rss_bytes", "Resident memory of ready workers, summed.", snapshot.rss_total_bytes),
            ("dspy_pool_worker_cpu_percent", "CPU of live workers, summed (100 = one core); sampled every few seconds.", snapshot.cpu_percent),
            ("dspy_pool_health_score", "0..1 pool health (availability x success x wait x deadline).", snapshot.health),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        calls = CounterMetricFamily("dspy_pool_calls", "Calls through the dispatcher by outcome.", labels=["outcome"])
        calls.add_metric(["completed"], snapshot.completed)
        calls.add_metric(["failed"], snapshot.failed)
        calls.add_metric(["rejected"], snapshot.rejected)
        calls.add_metric(["expired_in_queue"], snapshot.expired_in_queue)
        yield calls


def _arm_families(arms: tuple) -> Iterable:
    """Per program, version and arm (traditional, optimized, hybrid:..., evaluation, version): what GetProgramStats says."""
    labels = ["program", "version", "arm"]
    calls = CounterMetricFamily("dspy_pool_program_calls", "Calls per program version and execution arm.", labels=labels)
    failed = CounterMetricFamily("dspy_pool_program_errors", "Failed calls per program version and execution arm.", labels=labels)
    p50 = GaugeMetricFamily("dspy_pool_program_latency_p50_seconds", "Latency p50 over the last calls.", labels=labels)
    p95 = GaugeMetricFamily("dspy_pool_program_latency_p95_seconds", "Latency p95 over the last calls.", labels=labels)
    for (program, version, arm), view in arms:
        key = [program, str(version), arm]
        calls.add_metric(key, view.calls)
        failed.add_metric(key, view.errors)
        p50.add_metric(key, view.p50_ms / 1000.0)
        p95.add_metric(key, view.p95_ms / 1000.0)
    yield from (calls, failed, p50, p95)


def _cache_families(caches: tuple) -> Iterable:
    """Per cache level: hits, misses, evictions (counters); entries and bytes (gauges, where the level counts them)."""
    counters = {name: CounterMetricFamily(f"dspy_pool_cache_{name}", f"Result cache {name} per level.", labels=["level"])
                for name in ("hits", "misses", "evictions")}
    gauges = {name: GaugeMetricFamily(f"dspy_pool_cache_{name}", f"Result cache {name} held per level.", labels=["level"])
              for name in ("entries", "bytes")}
    for level, stats in caches:
        for name, family in counters.items():
            family.add_metric([level], getattr(stats, name))
        for name, family in gauges.items():
            if getattr(stats, name) >= 0:
                family.add_metric([level], getattr(stats, name))
    yield from counters.values()
    yield from gauges.values()


def _histogram(name: str, help_text: str, histogram: WaitHistogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text)
    family.add_metric([], histogram.cumulative(), sum_value=histogram.sum_s)
    return family


def start_metrics_server(port: int, registry: CollectorRegistry, addr: str = "127.0.0.1") -> tuple[Any, int]:
    """Serve `registry` at http://addr:port/metrics in a daemon thread; port 0 picks one. Returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server, server.server_address[1]


def stop_metrics_server(server: Any) -> None:
    """Stop serving and close the socket (blocks briefly; call via asyncio.to_thread from the loop)."""
    server.shutdown()
    server.server_close()
