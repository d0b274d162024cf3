"""Breaker benchmark: what callers see while the LM provider is down, and how fast service returns.

    python bench/breaker.py [--runs 3] [--wait-s 1.0] [--open-s 2.5] [--clients 1]

One server (App, sim LM with 20 ms latency, 2 workers). Each run uses a fresh
program (breakers and the result cache are per program) with the fallback chain
cache -> static, and goes through four phases:

    healthy   primary calls; the first few prime the result cache       -> healthy p50/p99
    failing   the sim LM answers 500 to everything; calls until the breaker opens
    open      --open-s seconds of calls: half on primed inputs (served by
              `cache`), half on new ones (served by `static`)            -> open p50/p99 per step,
              sim LM requests in this phase against half-open probe calls
    recovery  the sim LM is healthy again; calls continue (half-open needs
              3 successful probes) until GetPoolStatus says closed       -> recovery_to_closed_s

Figures are the median (and min/max) over --runs runs, plus ratios against the
healthy primary calls of the same run. Targets: open p99 < 5 ms; no LM request
while open except the half-open probes (each probe call may make up to
retry_max_attempts LM requests); closed within 2 wait periods of recovery (the
wait period in force when the provider recovered: it doubles with each
consecutive trip, so the base wait is reported too).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time

import grpc
import psutil
from google.protobuf import struct_pb2

from dspy_pool import logs
from dspy_pool.server.app import App
from dspy_pool.server.config import build as server_config
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc
from load_stats import spread  # bench/ is sys.path[0] when run as a script

PRIMED = 50  # distinct inputs whose answers the result cache holds before the outage
MAX_ATTEMPTS = 3



def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def request(program: str, question: str) -> pb.ExecuteRequest:
    message = pb.ExecuteRequest(program=program)
    message.inputs.update({"question": question})
    return message


async def breaker_of(stub, program: str) -> pb.BreakerStatus | None:
    status = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    return next((b for b in status.breakers if b.program == program), None)


def wait_in_force(app: App, program: str, base_wait_s: float, opened_since_close: int) -> float:
    """The open wait now in force: read from the breaker when reachable, else from the doubling rule."""
    try:
        for key, snapshot in app.service.resilient.breakers.snapshots().items():
            if key.program == program:
                trips = snapshot.consecutive_trips
                break
        else:
            trips = opened_since_close
    except AttributeError:
        trips = opened_since_close
    return min(base_wait_s * 2 ** max(0, trips - 1), max(base_wait_s, 60.0))


async def timed(stub, message: pb.ExecuteRequest) -> tuple[float, pb.ExecuteResponse | None, str]:
    started = time.perf_counter()
    try:
        response = await stub.Execute(message, timeout=30)
        return (time.perf_counter() - started) * 1000, response, ""
    except grpc.aio.AioRpcError as error:
        return (time.perf_counter() - started) * 1000, None, error.code().name


async def one_run(app: App, stub, program: str, args) -> dict:
    static = struct_pb2.Struct()
    static.update({"answer": "static fallback"})
    await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(
        name=program, signature="question -> answer", fallback=pb.FallbackSpec(chain=["cache", "static"], static_outputs=static))))
    counter = itertools.count()
    errors: dict[str, int] = {}

    # healthy: prime the cache, then measure primary calls at --clients in flight
    for i in range(PRIMED):
        await stub.Execute(request(program, f"primed {i}"), timeout=30)
    healthy: list[float] = []

    async def healthy_client(calls: int) -> None:
        for _ in range(calls):
            ms, response, code = await timed(stub, request(program, f"healthy {next(counter)}"))
            if response is not None and response.served_by == "primary":
                healthy.append(ms)
            elif code:
                errors[code] = errors.get(code, 0) + 1

    await asyncio.gather(*(healthy_client(args.healthy_calls // args.clients) for _ in range(args.clients)))

    # failing: 100% LM errors until the breaker opens
    await app.sim.set_faults(error_rate=1.0)
    failed_at = time.monotonic()
    while (await breaker_of(stub, program)).state != "open":
        await asyncio.gather(*(stub.Execute(request(program, f"failing {next(counter)}"), timeout=30) for _ in range(args.clients)))
    time_to_open_s = time.monotonic() - failed_at

    # open: cache and static fallbacks; count what still reaches the LM
    lm_before = (await app.sim.stats())["requests"]
    open_ms: dict[str, list[float]] = {"cache": [], "static": []}
    probes = 0
    phase_ends = time.monotonic() + args.open_s

    async def open_client(number: int) -> None:
        nonlocal probes
        for i in itertools.count():
            if time.monotonic() >= phase_ends:
                return
            question = f"primed {(number + i) % PRIMED}" if i % 2 == 0 else f"open {next(counter)}"
            ms, response, code = await timed(stub, request(program, question))
            if response is None:
                errors[code] = errors.get(code, 0) + 1
            elif response.fallback_reason == "breaker_open":
                open_ms[response.served_by].append(ms)
            else:
                probes += 1  # admitted while half-open: reached the (still failing) LM

    await asyncio.gather(*(open_client(n) for n in range(args.clients)))
    lm_while_open = (await app.sim.stats())["requests"] - lm_before
    breaker = await breaker_of(stub, program)
    current_wait_s = wait_in_force(app, program, args.wait_s, breaker.opened_total)

    # recovery: the provider is back; keep calling until the breaker closes
    await app.sim.set_faults(error_rate=0.0)
    recovered_at = time.monotonic()
    closed_at: float | None = None

    async def recovery_client() -> None:
        while closed_at is None and time.monotonic() - recovered_at < 60:
            await timed(stub, request(program, f"recovery {next(counter)}"))

    async def watch() -> None:
        nonlocal closed_at
        while time.monotonic() - recovered_at < 60:
            if (await breaker_of(stub, program)).state == "closed":
                closed_at = time.monotonic()
                return
            await asyncio.sleep(0.005)

    await asyncio.gather(watch(), *(recovery_client() for _ in range(args.clients)))
    recovery_s = None if closed_at is None else closed_at - recovered_at

    healthy.sort()
    result = {
        "healthy_p50_ms": percentile(healthy, 0.5), "healthy_p99_ms": percentile(healthy, 0.99),
        "time_to_open_s": time_to_open_s,
        "lm_requests_while_open": lm_while_open, "probe_calls_while_open": probes,
        "recovery_to_closed_s": recovery_s, "wait_in_force_s": current_wait_s,
        "recovery_in_waits": None if recovery_s is None else recovery_s / current_wait_s,
        "errors": errors,
    }
    for step, values in open_ms.items():
        values.sort()
        result[f"open_{step}_p50_ms"] = percentile(values, 0.5)
        result[f"open_{step}_p99_ms"] = percentile(values, 0.99)
        result[f"open_{step}_calls"] = len(values)
    result["open_p99_ms"] = percentile(sorted(open_ms["cache"] + open_ms["static"]), 0.99)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--wait-s", type=float, default=1.0, help="breaker wait (the first open period)")
    parser.add_argument("--open-s", type=float, default=2.5, help="how long to keep calling while the LM is down")
    parser.add_argument("--clients", type=int, default=1, help="calls in flight (1: latency without queueing in this 2-core process)")
    parser.add_argument("--healthy-calls", type=int, default=200)
    parser.add_argument("--sim-latency", default="fixed:20")
    args = parser.parse_args()
    logs.configure("console", "error")  # stdout carries the one JSON object; errors go to stderr
    config = server_config(state="memory", listen="127.0.0.1:0", workers=2, worker_concurrency=64, lm="sim", sim_latency=args.sim_latency,
                          breaker_window=20, breaker_minimum_calls=10, breaker_wait_s=args.wait_s,
                          retry_max_attempts=MAX_ATTEMPTS, log_level="error")
    app = App(config)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            runs = [await one_run(app, stub, f"bench-breaker-{n}", args) for n in range(args.runs)]
    finally:
        await app.stop(grace_s=1.0)

    def figure(key: str) -> dict:
        return spread([r[key] for r in runs], 4)

    open_p99 = statistics.median(r["open_p99_ms"] for r in runs)
    healthy_p50 = statistics.median(r["healthy_p50_ms"] for r in runs)
    healthy_p99 = statistics.median(r["healthy_p99_ms"] for r in runs)
    recoveries = [r["recovery_in_waits"] for r in runs]
    result = {
        "bench": "breaker", "runs": args.runs, "clients": args.clients, "sim_latency": args.sim_latency,
        "breaker_wait_s": args.wait_s, "open_phase_s": args.open_s, "cpus": psutil.cpu_count(),
        **{key: figure(key) for key in ("healthy_p50_ms", "healthy_p99_ms", "open_cache_p50_ms", "open_cache_p99_ms",
                                        "open_static_p50_ms", "open_static_p99_ms", "open_p99_ms", "open_cache_calls",
                                        "open_static_calls", "time_to_open_s", "recovery_to_closed_s", "wait_in_force_s",
                                        "recovery_in_waits", "lm_requests_while_open", "probe_calls_while_open")},
        "ratio_open_p50_to_healthy_p50": round(statistics.median(
            statistics.median([r["open_cache_p50_ms"], r["open_static_p50_ms"]]) for r in runs) / healthy_p50, 4),
        "ratio_open_p99_to_healthy_p99": round(open_p99 / healthy_p99, 4),
        "targets": {
            "open_p99_under_5ms": open_p99 < 5.0,
            "only_probes_reached_lm": all(r["lm_requests_while_open"] <= r["probe_calls_while_open"] * MAX_ATTEMPTS for r in runs),
            "closed_within_2_waits": all(w is not None and w <= 2.0 for w in recoveries),
        },
        "errors": [r["errors"] for r in runs],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
