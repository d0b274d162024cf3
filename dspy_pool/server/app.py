"""Assemble and run the server: simulated LM (optional) -> pool -> gRPC.

Order matters: the zygote is exec'd before any gRPC object exists, and every
worker after that comes from the zygote, so the front never forks with gRPC
threads alive. Shutdown is a staircase with a deadline per step: health
NOT_SERVING, stop accepting, drain (grace), stop workers, stop the zygote.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from prometheus_client import CollectorRegistry

from dspy_pool import errors
from dspy_pool.optimize.datasets import Datasets
from dspy_pool.optimize.jobs import JobManager, JobSettings
from dspy_pool.optimize.stats import ProgramStats
from dspy_pool.pool.api import Pool, PoolSettings, RecycleConfig, ScalerConfig, ScalingSettings, WarmupSettings, WorkerSettings
from dspy_pool.pool.metrics import PoolMetrics
from dspy_pool.server.breaker import AsyncBreakerGuard, BreakerRegistry
from dspy_pool.server.cache import TieredCache
from dspy_pool.server.config import ServerConfig, ServerSection, public_view, worker_bounds
from dspy_pool.server.handlers import add_service
from dspy_pool.server.metrics_http import MetricsInterceptor, PoolExporter, start_metrics_server, stop_metrics_server
from dspy_pool.server.peers import FrontGroup, Peers
from dspy_pool.server import bind, reflection
from dspy_pool.server.registry import ProgramRegistry
from dspy_pool.server.result_cache import ResultCache
from dspy_pool.server.service import DSPyPoolService, breaker_config, resilience_settings, warmup_programs
from dspy_pool.server.sessions import SessionStore
from dspy_pool.server.stats_sync import StatsSync
from dspy_pool.simlm.faults import LatencySpec
from dspy_pool.simlm.process import SimLMProcess, start_sim_lm
from dspy_pool.spec_files import load_specs
from dspy_pool.state import SessionLimits, StateError, StateStore, open_store
from dspy_pool.stop_signals import StopSignals
from dspy_pool.v1 import dspy_pool_pb2 as pb

log = structlog.get_logger("dspy_pool.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DSPyPool"].full_name
SIM_LM = "sim"
WORKER_CPU_SAMPLE_S = 5.0
_SESSION_SWEEP_S = 30.0
_PROGRAM_POLL_S = 0.25
_FILE_PROGRAM_TIMEOUT_S = 60.0  # a program registered on one replica is served by the others within this


def worker_settings(config: ServerConfig, sim: SimLMProcess | None) -> WorkerSettings:
    lm, api_base, api_key = config.lm.model, config.lm.api_base, config.lm.api_key
    if sim is not None:
        lm, api_base, api_key = "openai/sim", sim.api_base, api_key or "sim-key"
    return WorkerSettings(
        lm=lm, lm_api_base=api_base, lm_api_key=api_key, lm_num_retries=config.lm.num_retries,
        lm_cache_entries=config.lm.cache_entries, lm_timeout_s=config.lm.timeout_s, lm_max_tokens=config.lm.max_tokens,
        lm_temperature=config.lm.temperature, lm_call_options=config.lm.call_options, lm_engine=config.lm.engine,
        worker_concurrency=config.pool.worker_concurrency, program_modules=config.pool.programs,
        max_frame_bytes=config.server.max_message_bytes * 2 + 65536,
    )


def scaler_config(config: ServerConfig) -> ScalerConfig:
    _, minimum, maximum = worker_bounds(config)
    return ScalerConfig(
        min_workers=minimum, max_workers=maximum, worker_concurrency=config.pool.worker_concurrency,
        target_queue_wait_s=config.scaling.target_queue_wait_s, target_load_per_worker=config.scaling.target_load_per_worker,
        upscale_cooldown_s=config.scaling.upscale_cooldown_s, upscale_step_max=config.scaling.upscale_step_max, downscale_window_s=config.scaling.downscale_window_s,
        downscale_utilisation=config.scaling.downscale_utilisation, downscale_step_fraction=config.scaling.downscale_step_fraction,
        memory_budget_bytes=config.scaling.memory_budget_bytes,
    )


def scaling_settings(config: ServerConfig) -> ScalingSettings:
    recycle = RecycleConfig(config.scaling.recycle_max_requests, config.scaling.recycle_max_requests_jitter, config.scaling.recycle_max_rss_bytes, config.scaling.recycle_max_age_s)
    return ScalingSettings(scaler_config(config), config.scaling.controller_interval_s, config.pool.fixed_workers or None, recycle)


def grpc_options(config: ServerConfig, share_port: bool = False) -> list[tuple[str, int]]:
    # grpc core queues calls the application has not picked up yet and, past
    # 1,000 (3,000 hard), cancels them before our own queue bound can answer
    # RESOURCE_EXHAUSTED with a retry hint. Let our queue govern: lift core's
    # limits well past what max_queue plus every worker slot can hold.
    _, _, maximum = worker_bounds(config)
    pending = max(10_000, 4 * (config.pool.max_queue + maximum * config.pool.worker_concurrency))
    return [
        ("grpc.max_receive_message_length", config.server.max_message_bytes * 2),
        ("grpc.max_send_message_length", config.server.max_message_bytes * 2),
        # Off, so a second server on a taken port fails instead of silently sharing it;
        # on only for the fronts of one group, which share the port on purpose.
        ("grpc.so_reuseport", 1 if share_port else 0),
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending * 2),
        *connection_options(config.server),
    ]


def connection_options(server: ServerSection) -> list[tuple[str, int]]:
    """Keepalive and connection age. grpc core's defaults close the connection of a client that pings more often than
    every 5 minutes (too_many_pings: its calls fail UNAVAILABLE), while it pings its own clients every 2 hours only
    (a vanished client's watch stream is held that long), and keep a connection for ever (behind an L4 balancer every
    call of a client goes to the replica it first reached)."""
    options = [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(server.client_keepalive_min_s)),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server.keepalive_s > 0:
        unanswered = _ms(server.keepalive_timeout_s)
        # grpc core 1.6x+ waits for a ping's answer ping_timeout_ms (1 minute), whatever keepalive_timeout_ms says.
        options += [("grpc.keepalive_time_ms", _ms(server.keepalive_s)), ("grpc.keepalive_timeout_ms", unanswered),
                    ("grpc.http2.ping_timeout_ms", unanswered)]
    if server.max_connection_age_s > 0:
        options += [("grpc.max_connection_age_ms", _ms(server.max_connection_age_s)),
                    ("grpc.max_connection_age_grace_ms", _ms(server.max_deadline_s))]
    return options


def _ms(seconds: float) -> int:
    return max(1, min(2**31 - 1, round(seconds * 1000)))


def pool_settings(config: ServerConfig) -> PoolSettings:
    initial, minimum, _ = worker_bounds(config)
    return PoolSettings(
        workers=initial, min_ready=minimum, warming=config.pool.warming, worker_concurrency=config.pool.worker_concurrency,
        max_queue=config.pool.max_queue, boot_timeout_s=config.pool.boot_timeout_s, crash_loop_threshold=config.pool.crash_loop_threshold,
        hang_timeout_s=config.pool.hang_timeout_s, max_frame_bytes=config.server.max_message_bytes * 2 + 65536,
        warmup=WarmupSettings(mode=config.pool.warmup, timeout_s=config.pool.warmup_timeout_s),
        quarantine_after=config.pool.quarantine_after,
    )


def validate(config: ServerConfig) -> None:
    """Build every settings object once, so a bad setting stops start-up before any child process exists."""
    try:
        pool_settings(config)
        scaling_settings(config)
        resilience_settings(config)
        if config.lm.model == SIM_LM:
            LatencySpec.parse(config.lm.sim_latency)
    except ValueError as exc:
        raise ValueError(f"invalid configuration: {exc}") from None


_KEYLESS_LMS = (SIM_LM, "dummy")


def warn_if_keyless(config: ServerConfig) -> None:
    """A provider model with no key fails every call with LM_AUTH; say so at start-up, once."""
    if config.lm.model not in _KEYLESS_LMS and not config.lm.api_key:
        log.warning("lm_api_key_missing", lm=config.lm.model,
                    hint="no API key configured: set DSPY_POOL_LM_API_KEY (ignore this for keyless local endpoints such as Ollama)")


class App:
    def __init__(self, config: ServerConfig, front: FrontGroup | None = None) -> None:
        validate(config)
        self.config = config
        self.front = front  # this process's place among --front-processes N, or None when it is the only front
        self.sim: SimLMProcess | None = None
        self.pool: Pool | None = None
        self.store: StateStore | None = None
        self.cache: TieredCache | None = None
        self.jobs: JobManager | None = None
        self.service: DSPyPoolService | None = None
        self.stats_sync: StatsSync | None = None
        self.server: grpc.aio.Server | None = None
        self.health: health.aio.HealthServicer | None = None
        self.port = 0
        self._stopped = asyncio.Event()
        self._stopping = False
        self._drain_cut = asyncio.Event()  # a second SIGINT or SIGTERM: stop waiting for calls to finish
        self._background: list[asyncio.Task] = []
        # Worker CPU is read from /proc per worker: every few seconds is plenty for a gauge.
        self.metrics = PoolMetrics(target_queue_wait_s=config.scaling.target_queue_wait_s, cpu_interval_s=WORKER_CPU_SAMPLE_S)
        self.registry = CollectorRegistry()
        self.metrics_server = None
        self.metrics_port = 0
        self._reserved: dict[str, socket.socket] = {}  # flag -> its port, held from the check to the server's bind

    async def start(self) -> int:
        """Start everything; returns the bound TCP port (0 for a Unix socket)."""
        log.info("server_starting", config=public_view(self.config))
        warn_if_keyless(self.config)
        if self.front is None:  # a front group's port is the supervisor's, held for its fronts
            self._hold("--listen", bind.reserve_listen(self.config.server.listen))
            if self.config.observe.metrics_port > 0:
                self._hold("--metrics-port", bind.reserve(self.config.observe.metrics_addr, self.config.observe.metrics_port,
                                                          "--metrics-port"))
        # Read before anything starts: a bad file stops start-up naming the file, the entry and the field.
        file_specs = load_specs(self.config.state.programs_file) if self.config.state.programs_file else []
        # The store first: one that cannot be opened safely stops start-up before any child process exists.
        self.store = await open_store(self.config.state.url, self.config.state.dir, shared=self.front is not None)
        log.info("state_opened", store=self.store.description, durable=self.store.durable)
        if not self.store.durable:
            log.warning("state_in_memory", hint="programs and sessions end with this process; use --state sqlite (the default) or redis://")
        if self.config.lm.model == SIM_LM:
            self.sim = await start_sim_lm("--latency", self.config.lm.sim_latency, on_change=self._on_sim_change)
            log.info("sim_lm_started", port=self.sim.port, latency=self.config.lm.sim_latency)
        registry = ProgramRegistry(self.store, self.config.server.max_programs, self.config.server.max_programs_bytes)
        await registry.load()  # so a restarted pod's new workers warm every program it knew
        breakers = AsyncBreakerGuard(BreakerRegistry(breaker_config(self.config)))
        resilience = self.config.resilience
        self.cache = TieredCache(ResultCache(resilience.result_cache_entries, resilience.result_cache_max_bytes), self.store,
                                 resilience.result_cache_store_max_bytes)
        await self.cache.warm(time.time(), resilience.result_cache_warm_entries)
        sessions = self.config.sessions
        # A session keeps no more than a program can receive (older turns would never be read again).
        self.sessions = SessionStore(self.store, SessionLimits(sessions.ttl_s, sessions.max_turns, sessions.max_sessions, sessions.protect_s,
                                                               max_bytes=sessions.history_max_bytes))
        exporter = PoolExporter(self.registry, self.metrics, breakers=breakers, scale_counts=lambda: pool.scale_counts(),
                                cache_levels=lambda: self.cache.levels(), program_arms=lambda: self.service.stats.all())
        pool = self.pool = Pool(
            pool_settings(self.config), worker_settings(self.config, self.sim), scaling_settings(self.config), self.metrics,
            warmup_source=lambda: warmup_programs(registry, breakers), on_health_change=self._on_health_change,
            observers=(exporter.observe,) if self.config.observe.metrics_port >= 0 else (),
            optimizer_workers=self.config.optimize.optimizer_workers,
        )
        await pool.launch()  # exec'd before any gRPC object exists; it imports while we set up
        self.health = health.aio.HealthServicer()
        # No metrics endpoint, no interceptor: it would cost every RPC a wrapper for counts nobody reads.
        interceptors = [MetricsInterceptor(self.registry)] if self.config.observe.metrics_port >= 0 else []
        self.server = grpc.aio.server(interceptors=interceptors, options=grpc_options(self.config, self.front is not None))
        optimize = self.config.optimize
        # Front i of a group keeps its prefix across restarts, so a restarted front interrupts its dead jobs at once.
        owner_prefix = f"{self.front.socket_dir}#front-{self.front.index}/" if self.front is not None else ""
        datasets = Datasets(self.store, optimize.dataset_max_examples, optimize.example_max_bytes, self.config.server.max_input_depth,
                            optimize.max_datasets)
        self.jobs = JobManager(
            self.store, registry, pool,
            JobSettings(max_queue=optimize.optimization_max_queue, owner=owner_prefix + uuid.uuid4().hex, owner_prefix=owner_prefix,
                        allowed_lms=optimize.optimizer_lms,
                        num_threads=optimize.optimizer_threads, lm=self.config.lm.model, trigger_tick_s=optimize.auto_optimize_tick_s,
                        jobs_kept=optimize.optimization_jobs_kept),
            register_version=lambda spec, meta: self.service.register_optimized(spec, meta),
            observe=lambda program: self.service.observe(program),
        ) if optimize.optimizer_workers else None
        self.stats_sync = StatsSync(ProgramStats(), self.store)
        await self.stats_sync.sync()  # the figures every version had: a restart forgets none
        self.service = DSPyPoolService(self.config, pool, registry, self.sessions, breakers, self.cache, self.stats_sync,
                                       up=lambda: not self._stopping and self._sim_up(), datasets=datasets, jobs=self.jobs,
                                       peers=Peers(self.front) if self.front else None)
        add_service(self.service, self.server, self.config.server.max_message_bytes)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), self.server)
        await self._set_health(False)
        # One front listens while it starts, its health saying NOT_SERVING. A front of a group listens once it is
        # ready: the kernel hands each new connection on the shared port to any front listening there, and one still
        # starting answered UNAVAILABLE while the others (and `dspy-pool probe`) said SERVING.
        if self.front is None:
            await self._listen()
        try:
            await pool.start()
        except BaseException:
            await self.stop()
            raise
        if self.jobs is not None:
            await self.jobs.start(runners=self.config.optimize.optimizer_workers)
        if file_specs:
            await self._register_file_programs(file_specs)  # before SERVING: a pod starts with its programs warm
        if self.front is not None:
            await self._listen()
        await self._set_health(pool.healthy)
        loop = asyncio.get_running_loop()
        self._background.append(loop.create_task(self._sweep_expired()))
        self._background.append(loop.create_task(self.stats_sync.run()))
        if self.store.durable:  # another replica (or process) may change the programs: versioned reads
            self._background.append(loop.create_task(registry.watch(_PROGRAM_POLL_S)))
        if self.config.observe.metrics_port >= 0:
            observe = self.config.observe
            self._release("--metrics-port")
            try:
                self.metrics_server, self.metrics_port = start_metrics_server(observe.metrics_port, self.registry, observe.metrics_addr)
            except OSError as exc:
                raise OSError(bind.describe_bind_error(f"{observe.metrics_addr}:{observe.metrics_port}", exc.strerror or str(exc),
                                                       "--metrics-port")) from None
            log.info("metrics_serving", addr=self.config.observe.metrics_addr, port=self.metrics_port)
        initial, minimum, maximum = worker_bounds(self.config)
        log.info("server_serving", listen=self.config.server.listen, port=self.port, workers=initial,
                 pool_size=f"{minimum}" if minimum == maximum else f"{minimum}..{maximum} (autoscaling)")
        return self.port

    async def _listen(self) -> None:
        listen = self.config.server.listen
        try:
            self.port = self.server.add_insecure_port(listen)  # grpc listens from here on, before start()
        except RuntimeError as exc:  # taken since the check above (grpcio raises; older releases returned 0)
            raise RuntimeError(bind.describe_bind_error(listen, str(exc).partition(";")[0], "--listen")) from None
        if self.port == 0 and not listen.startswith("unix:"):
            raise RuntimeError(bind.describe_bind_error(listen, "the address is in use or not available", "--listen"))
        self._release("--listen")
        if self.front is not None:  # where the other fronts reach this one (the shared port lands anywhere)
            self.server.add_insecure_port(self.front.own_socket)
        await self.server.start()

    def _hold(self, flag: str, reserved: socket.socket | None) -> None:
        if reserved is not None:
            self._reserved[flag] = reserved

    def _release(self, flag: str) -> None:
        reserved = self._reserved.pop(flag, None)
        if reserved is not None:
            reserved.close()

    async def _register_file_programs(self, specs: list) -> None:
        """Register --programs-file's specs (idempotent: unchanged content keeps its version); a refusal stops start-up."""
        path = self.config.state.programs_file
        loop = asyncio.get_running_loop()
        for number, spec in enumerate(specs):
            try:
                program = await self.service.register(spec, loop.time() + _FILE_PROGRAM_TIMEOUT_S)
            except errors.PoolError as error:
                await self.stop()
                raise ValueError(f"{path}: program {number} ({spec.name!r}) was refused: {error.message}") from None
            log.info("program_from_file", file=path, program=spec.name, version=program.version, created=program.created)

    def _on_health_change(self, healthy: bool) -> None:
        if not self._stopping:
            # The sim LM is supervised like a worker: while it is down every call would fail.
            asyncio.get_running_loop().create_task(self._set_health(healthy and self._sim_up()))

    def _sim_up(self) -> bool:
        return self.sim is None or self.sim.up

    def _on_sim_change(self, up: bool) -> None:
        self._on_health_change(self.pool is not None and self.pool.healthy)

    async def _set_health(self, serving: bool) -> None:
        if self.health is None:
            return
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _sweep_expired(self) -> None:
        while True:
            await asyncio.sleep(_SESSION_SWEEP_S)
            try:
                await self.sessions.sweep(time.time())
                await self.store.cache_expire(time.time())  # expired results would otherwise stay on disk until read
                await self.store.release_free_space()  # a file keeps its largest size otherwise
            except (errors.PoolError, StateError):
                pass  # the store is down (the registry's watch logs it) or refused a write: expiry also happens on read

    async def stop(self, grace_s: float | None = None) -> None:
        """The shutdown staircase; idempotent."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        for flag in list(self._reserved):  # a start that failed before binding
            self._release(flag)
        if self.sim is not None:
            self.sim.stop_supervising()  # nothing is restarted once shutdown begins
        grace = self.config.server.drain_grace_s if grace_s is None else grace_s
        log.info("server_draining", grace_s=grace, hint="another SIGINT (Ctrl-C) or SIGTERM a second or more later stops without waiting")
        await self._set_health(False)
        for task in self._background:
            task.cancel()
        if self.jobs is not None:
            await self.jobs.stop()  # running jobs are cancelled; they stay in the store as they were (interrupted next start)
        if self.pool is not None:
            drained = await self._drain(grace)
            if not drained:
                view = self.pool.view()
                log.warning("drain_incomplete", queued=view.queue_depth, in_flight=view.in_flight)
                # Answer them now, while the server can still write a status: once it
                # stops, grpc would end each one CANCELLED, which says nothing useful.
                self.pool.abandon(errors.Unavailable(
                    "the server shut down before this call finished (drain grace ran out); it may have partly run",
                    metadata={"may_have_run": "true"},
                ))
        if self.service is not None:
            self.service.close_watches()
        if self.server is not None:
            await self.server.stop(1.0)
        if self.service is not None and self.service.peers is not None:
            await self.service.peers.close()
        if self.pool is not None:
            await self.pool.stop()
        if self.sim is not None:
            await self.sim.stop()
        if self.metrics_server is not None:
            await asyncio.to_thread(stop_metrics_server, self.metrics_server)
        if self.cache is not None:
            await self.cache.flush()
        if self.stats_sync is not None:
            await self.stats_sync.sync()  # the drained calls' counts
        if self.store is not None:
            await self.store.close()  # last: calls finishing during the drain commit their session turns
        log.info("server_stopped")
        self._stopped.set()

    def cut_drain(self) -> None:
        """Stop waiting for in-flight calls: they end UNAVAILABLE now, as when the grace runs out."""
        if self._stopping and not self._drain_cut.is_set():
            log.warning("drain_cut", hint="stopping without waiting for the calls in flight")
        self._drain_cut.set()

    async def _drain(self, grace_s: float) -> bool:
        """pool.drain(grace_s), ended early (False) by cut_drain."""
        draining = asyncio.ensure_future(self.pool.drain(grace_s))
        cut = asyncio.ensure_future(self._drain_cut.wait())
        await asyncio.wait([draining, cut], return_when=asyncio.FIRST_COMPLETED)
        cut.cancel()
        if draining.done():
            return draining.result()
        draining.cancel()
        await asyncio.gather(draining, return_exceptions=True)
        return False

    async def wait_stopped(self) -> None:
        await self._stopped.wait()


async def serve(config: ServerConfig, on_serving=None, front: FrontGroup | None = None) -> None:
    """Run until SIGTERM/SIGINT/SIGHUP, then shut down gracefully; a later signal cuts the drain (stop_signals.py)."""
    app = App(config, front)
    stop_requested = asyncio.Event()
    StopSignals(on_stop=stop_requested.set, on_cut=app.cut_drain).install(asyncio.get_running_loop())
    start = asyncio.ensure_future(app.start())
    waiter = asyncio.ensure_future(stop_requested.wait())
    await asyncio.wait([start, waiter], return_when=asyncio.FIRST_COMPLETED)
    if start.done() and start.exception() is None:
        if on_serving is not None:
            on_serving(app)
        await waiter
    elif not start.done():
        start.cancel()
    await app.stop()
    if start.done() and not start.cancelled() and start.exception() is not None:
        raise start.exception()
