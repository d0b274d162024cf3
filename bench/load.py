"""Load generator for dspy-pool on grpc.aio: closed loop, open loop with a schedule, or sessions.

    # against a running server (loopback only)
    python bench/load.py --target 127.0.0.1:50051 --concurrency 64 --duration 10
    # start a server in this process first (dummy LM: no HTTP, measures the sidecar itself)
    python bench/load.py --spawn-server --workers 2 --lm dummy --schedule 200:5,400:5 --processes 2
    # sessions: 100 concurrent conversations of 3 turns each
    python bench/load.py --spawn-server --session-turns 3 --concurrency 100 --program chat \\
        --signature "question, history: dspy.History -> answer"

Workloads (one per run):
- closed loop (default): --concurrency calls in flight per run, each client
  starting its next call when the last one ends. Latency: send to reply.
- open loop (--schedule RATE:SECONDS,...): calls start at the scheduled rate
  whether or not earlier ones finished. Latency is measured from each call's
  scheduled start, so a client or server that falls behind shows it
  (no coordinated omission). --max-in-flight caps outstanding calls; calls
  over the cap are not sent and are counted as "dropped".
- sessions (--session-turns T): --concurrency conversations at once, each T
  calls in a row on its own session_id, then CloseSession.

Bounds: every run stops at --duration seconds and --max-calls calls, whichever
comes first; each call has a --timeout deadline; stragglers are cancelled.
--processes N runs N client processes (spawned, never forked: this process may
hold gRPC objects) sharing the concurrency, rate and call budget; their
histograms are merged exactly. The target must be a loopback address or a
unix socket.

Prints one JSON object: count (calls that ended), ok, calls_per_s, ok_per_s,
latency_ms {min, mean, p50, p90, p95, p99, max} of OK calls, status_codes,
sent, dropped, errors (samples, one per distinct code and message), and the
settings. Server logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Any

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import load_stats  # noqa: E402
from load_stats import LatencyHistogram, Step, Timeline  # noqa: E402

from dspy_pool.v1 import dspy_pool_pb2 as pb  # noqa: E402
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc  # noqa: E402

ERROR_SAMPLES = 10


@dataclass(frozen=True)
class Plan:
    """What one client process does (its share of the run)."""

    target: str
    program: str
    inputs: dict[str, Any]
    concurrency: int = 0                 # closed loop / sessions: calls or conversations at once
    schedule: tuple[Step, ...] = ()      # open loop when set
    session_turns: int = 0               # sessions workload when > 0
    max_calls: int = 1_000_000
    duration_s: float = 10.0
    timeout_s: float = 10.0
    max_in_flight: int = 10_000
    start_at: float = 0.0                # wall clock; every process starts together
    index: int = 0
    bucket_s: float = 0.25
    session_prefix: str = "load"
    close_sessions: bool = True


def _fill(template: Any, number: int) -> Any:
    if isinstance(template, str):
        return template.replace("{n}", str(number))
    if isinstance(template, dict):
        return {k: _fill(v, number) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, number) for v in template]
    return template


class Recorder:
    def __init__(self, bucket_s: float) -> None:
        self.histogram = LatencyHistogram()
        self.timeline = Timeline(bucket_s)
        self.codes: dict[str, int] = {}
        self.errors: list[dict] = []
        self._error_keys: set[tuple[str, str]] = set()
        self._wall0 = time.time()
        self._perf0 = time.perf_counter()

    def record(self, code: str, latency_ms: float, ended_perf: float, message: str = "") -> None:
        self.codes[code] = self.codes.get(code, 0) + 1
        self.timeline.record(self._wall0 + (ended_perf - self._perf0), code == "OK")
        if code == "OK":
            self.histogram.record(latency_ms)
        elif len(self.errors) < ERROR_SAMPLES and (code, message) not in self._error_keys:
            self._error_keys.add((code, message))
            self.errors.append({"code": code, "message": message[:300]})


async def _client(plan: Plan) -> dict:
    recorder = Recorder(plan.bucket_s)
    sent = dropped = 0
    async with grpc.aio.insecure_channel(plan.target) as channel:
        stub = pb_grpc.DSPyPoolStub(channel)
        with contextlib.suppress(asyncio.TimeoutError, grpc.FutureTimeoutError):
            await asyncio.wait_for(channel.channel_ready(), 10)
        await asyncio.sleep(max(0.0, plan.start_at - time.time()))
        started_wall, started = time.time(), time.perf_counter()
        stop_at = started + plan.duration_s

        async def call(number: int, session_id: str = "", scheduled: float | None = None) -> None:
            request = pb.ExecuteRequest(program=plan.program, session_id=session_id)
            request.inputs.update(_fill(plan.inputs, number))
            began = time.perf_counter() if scheduled is None else scheduled
            message = ""
            try:
                await stub.Execute(request, timeout=plan.timeout_s)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code, message = error.code().name, error.details() or ""
            except asyncio.CancelledError:
                raise
            ended = time.perf_counter()
            recorder.record(code, (ended - began) * 1000.0, ended, message)

        if plan.schedule:
            steps = list(plan.schedule)
            end = min(stop_at, started + load_stats.schedule_seconds(steps))
            tasks: set[asyncio.Task] = set()
            while sent + dropped < plan.max_calls:
                due_at = load_stats.call_time_s(steps, sent + dropped)
                if due_at is None or started + due_at >= end:
                    break
                delay = started + due_at - time.perf_counter()
                if delay > 0.001:
                    await asyncio.sleep(delay)
                if len(tasks) >= plan.max_in_flight:
                    dropped += 1
                    continue
                task = asyncio.create_task(call(sent, scheduled=started + due_at))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
                if delay <= 0.001 and sent % 64 == 0:
                    await asyncio.sleep(0)  # behind schedule: still let replies in
            if tasks:
                _, pending = await asyncio.wait(set(tasks), timeout=plan.timeout_s + 1.0)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        else:
            counter = iter(range(plan.max_calls))

            async def closed_loop() -> None:
                nonlocal sent
                for number in counter:
                    if time.perf_counter() >= stop_at:
                        return
                    sent += 1
                    await call(number)

            async def conversation(index: int) -> None:
                nonlocal sent
                session_id = f"{plan.session_prefix}-{plan.index}-{index}"
                opened = False
                for _ in range(plan.session_turns):
                    number = next(counter, None)
                    if number is None or time.perf_counter() >= stop_at:
                        break
                    sent += 1
                    opened = True
                    await call(number, session_id)
                if opened and plan.close_sessions:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        await stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=plan.timeout_s)

            body = conversation if plan.session_turns else (lambda _i: closed_loop())
            runners = [asyncio.create_task(body(i)) for i in range(plan.concurrency)]
            _, pending = await asyncio.wait(runners, timeout=plan.duration_s + plan.timeout_s + 1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        ended_wall = started_wall + (time.perf_counter() - started)
    return {"started": started_wall, "ended": ended_wall, "histogram": recorder.histogram.to_dict(),
            "timeline": recorder.timeline.to_dict(), "codes": recorder.codes, "errors": recorder.errors,
            "sent": sent, "dropped": dropped}


def run_client(plan: Plan) -> dict:
    """Entry point of one client process."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_client(plan))


def split_plan(plan: Plan, processes: int, start_delay_s: float) -> list[Plan]:
    """Each process's share: concurrency, rate and call budget divided; one common start time."""
    concurrency = load_stats.split_evenly(plan.concurrency, processes)
    calls = load_stats.split_evenly(plan.max_calls, processes)
    in_flight = load_stats.split_evenly(plan.max_in_flight, processes)
    start_at = time.time() + start_delay_s
    schedule = tuple(load_stats.scale_schedule(list(plan.schedule), 1.0 / processes)) if plan.schedule else ()
    return [dataclasses.replace(plan, concurrency=concurrency[i], max_calls=calls[i], max_in_flight=max(1, in_flight[i]),
                                schedule=schedule, start_at=start_at, index=i)
            for i in range(processes) if plan.schedule or concurrency[i] > 0]


async def run_clients(plan: Plan, processes: int = 1, start_at: float | None = None) -> dict:
    """Run the plan in `processes` spawned client processes and merge their figures.

    start_at: wall-clock time at which every process starts sending (default:
    soon enough for the processes to have started). The returned dict holds
    internal keys "_timeline" (a Timeline) and "_started" (wall seconds) besides
    the reported figures; public_figures() drops them.
    """
    load_stats.check_loopback(plan.target)
    delay = 1.0 + 0.4 * processes if start_at is None else start_at - time.time()
    plans = split_plan(plan, processes, start_delay_s=delay)
    loop = asyncio.get_running_loop()
    limit = plan.duration_s + plan.timeout_s + 30.0 + 2.0 * processes
    with concurrent.futures.ProcessPoolExecutor(len(plans), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [loop.run_in_executor(pool, run_client, p) for p in plans]
        results = await asyncio.wait_for(asyncio.gather(*futures), limit)
    return load_stats.merge_client_results(results)


def public_figures(merged: dict) -> dict:
    return {k: v for k, v in merged.items() if not k.startswith("_")}


# -- the server, when this process starts one ----------------------------------

async def spawn_app(workers: int = 2, lm: str = "dummy", worker_concurrency: int = 64, max_queue: int = 10_000,
                    sim_latency: str = "fixed:20", log_level: str = "warning", **overrides):
    """Start an App on 127.0.0.1:0 in this process (logs to stderr); returns it started."""
    from dspy_pool import logs
    from dspy_pool.server.app import App
    from dspy_pool.server.config import build as server_config

    logs.configure("console", log_level)
    settings = {"state": "memory", "optimizer_workers": 0, **overrides}  # a bench may name a durable store (state=, state_dir=)
    config = server_config(listen="127.0.0.1:0", workers=workers, worker_concurrency=worker_concurrency, max_queue=max_queue,
                          lm=lm, sim_latency=sim_latency, log_level=log_level, **settings)
    app = App(config)
    await app.start()
    return app


async def register(target: str, program: str, signature: str, module: str = "predict", timeout_s: float = 60.0) -> pb.Program:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DSPyPoolStub(channel)
        spec = pb.ProgramSpec(name=program, signature=signature, module=module)
        return await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=timeout_s)


async def warm_up(target: str, program: str, inputs: dict, calls: int, timeout_s: float) -> None:
    """A few calls first, so workers have built the program and connections are open."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DSPyPoolStub(channel)

        async def one(number: int) -> None:
            request = pb.ExecuteRequest(program=program)
            request.inputs.update(_fill(inputs, number))
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub.Execute(request, timeout=timeout_s)

        await asyncio.gather(*(one(-1 - i) for i in range(calls)))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="HOST:PORT of a running server (loopback only) or unix:///path.sock")
    where.add_argument("--spawn-server", action="store_true", help="start a server in this process first")
    parser.add_argument("--workers", type=int, default=2, help="with --spawn-server")
    parser.add_argument("--worker-concurrency", type=int, default=64, help="with --spawn-server")
    parser.add_argument("--max-queue", type=int, default=10_000, help="with --spawn-server")
    parser.add_argument("--lm", choices=("dummy", "sim"), default="dummy", help="with --spawn-server")
    parser.add_argument("--sim-latency", default="fixed:20", help="with --spawn-server --lm sim")
    parser.add_argument("--program", default="load")
    parser.add_argument("--signature", default="question -> answer")
    parser.add_argument("--module", default="predict")
    parser.add_argument("--no-register", action="store_true", help="the program is already registered")
    parser.add_argument("--inputs", default='{"question": "load question {n}"}', help='JSON; "{n}" becomes the call number')
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds, at most")
    parser.add_argument("--max-calls", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of each call, seconds")
    parser.add_argument("--warmup-calls", type=int, default=20)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--concurrency", type=int, default=32, help="closed loop: calls in flight; sessions: conversations at once")
    parser.add_argument("--schedule", help="open loop: RATE:SECONDS[,RATE:SECONDS...], e.g. 100:5,200:5")
    parser.add_argument("--max-in-flight", type=int, default=10_000, help="open loop: cap on outstanding calls")
    parser.add_argument("--session-turns", type=int, default=0, help="sessions workload: calls per conversation")
    args = parser.parse_args()
    if args.processes < 1 or args.concurrency < 1 or args.max_calls < 1 or args.duration <= 0 or args.timeout <= 0:
        parser.error("--processes, --concurrency, --max-calls must be >= 1; --duration, --timeout > 0")
    if args.schedule and args.session_turns:
        parser.error("--schedule and --session-turns are different workloads; pick one")
    try:
        schedule = tuple(load_stats.parse_schedule(args.schedule)) if args.schedule else ()
        if args.target:
            load_stats.check_loopback(args.target)
        inputs = json.loads(args.inputs)
    except (ValueError, json.JSONDecodeError) as error:
        parser.error(str(error))
    app = None
    try:
        if args.spawn_server:
            app = await spawn_app(args.workers, args.lm, args.worker_concurrency, args.max_queue, args.sim_latency)
            target = f"127.0.0.1:{app.port}"
        else:
            target = args.target
        if not args.no_register:
            await register(target, args.program, args.signature, args.module)
        if args.warmup_calls and not args.session_turns:
            await warm_up(target, args.program, inputs, args.warmup_calls, args.timeout)
        plan = Plan(target=target, program=args.program, inputs=inputs, concurrency=args.concurrency, schedule=schedule,
                    session_turns=args.session_turns, max_calls=args.max_calls, duration_s=args.duration,
                    timeout_s=args.timeout, max_in_flight=args.max_in_flight)
        merged = await run_clients(plan, args.processes)
    finally:
        if app is not None:
            await app.stop(grace_s=1.0)
    mode = "open" if schedule else ("sessions" if args.session_turns else "closed")
    report = {
        "bench": "load", "mode": mode, "target": "spawned" if args.spawn_server else args.target,
        "processes": args.processes, "concurrency": None if schedule else args.concurrency,
        "schedule": args.schedule, "session_turns": args.session_turns or None,
        "duration_limit_s": args.duration, "max_calls": args.max_calls, "timeout_s": args.timeout,
        "server": {"workers": args.workers, "worker_concurrency": args.worker_concurrency, "lm": args.lm} if args.spawn_server else None,
        **public_figures(merged),
    }
    if schedule:
        report["target_calls"] = int(sum(s.rate * s.seconds for s in schedule))
        report["steps"] = load_stats.per_step(merged["_timeline"].series(), merged["_started"], list(schedule))
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
