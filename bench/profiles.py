"""Measured characteristics of the shipped profiles, one JSON object.

    python bench/profiles.py [--in-flight 64 --seconds 10 --latency-ms 100 --profiles balanced,low-latency]

For each profile (dspy_pool/profiles/NAME.toml, with the simulated LM at a
fixed latency instead of whatever LM the profile names): time from start to
SERVING, workers at start, their memory at idle (RSS and USS, the pages unique
to each worker), then the same closed-loop load (N calls in flight) for a
while: calls/s, p50/p99 latency, p99 queue wait, errors by status code, and
the most workers the pool grew to. Same load for every profile, so the figures
compare the profiles, not the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import grpc
import psutil

from closed_loop import closed_loop, percentile_ms

from dspy_pool import logs
from dspy_pool.server.app import App
from dspy_pool.server.config import from_sources, load_profile, profile_names
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

MB = 2**20


def worker_memory_mb(app: App) -> dict:
    rss = uss = 0.0
    for handle in app.pool.worker_pool.handles():
        try:
            info = psutil.Process(handle.pid).memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss, uss = rss + info.rss / MB, uss + info.uss / MB
    return {"rss_mb": round(rss, 1), "uss_mb": round(uss, 1)}


async def measure(profile: str, args) -> dict:
    flags = {"listen": "127.0.0.1:0", "lm": "sim", "sim_latency": f"fixed:{args.latency_ms}", "log_level": "warning"}
    config = from_sources(load_profile(profile), {}, {}, {**flags, "state": "memory"})
    app = App(config)
    started = time.monotonic()
    await app.start()
    start_s = time.monotonic() - started
    peak_workers = len(app.pool.worker_pool.handles())
    try:
        idle = worker_memory_mb(app)
        workers_at_start = len(app.pool.worker_pool.handles())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="bench", signature="question -> answer")))
            load = asyncio.ensure_future(closed_loop(stub, args.in_flight, args.seconds, error_pause_s=0.01))
            while not load.done():
                peak_workers = max(peak_workers, len(app.pool.worker_pool.handles()))
                await asyncio.wait([load], timeout=0.1)
            latencies, queue_waits, codes = load.result()
        loaded = worker_memory_mb(app)
    finally:
        await app.stop(grace_s=2.0)
    return {
        "profile": profile,
        "start_to_serving_s": round(start_s, 2),
        "workers_at_start": workers_at_start,
        "max_workers": config.pool.max_workers,
        "worker_concurrency": config.pool.worker_concurrency,
        "idle_workers_memory": idle,
        "calls_per_s": round(len(latencies) / args.seconds, 1),
        "p50_ms": percentile_ms(latencies, 50),
        "p99_ms": percentile_ms(latencies, 99),
        "queue_wait_p99_ms": percentile_ms(queue_waits, 99),
        "errors": dict(codes),
        "peak_workers": peak_workers,
        "loaded_workers_memory": loaded,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default=",".join(profile_names()))
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--latency-ms", type=int, default=100)
    args = parser.parse_args()
    logs.configure("console", "warning")  # stdout carries the one JSON object; the log goes to stderr
    results = [await measure(name, args) for name in args.profiles.split(",") if name]
    print(json.dumps({"bench": "profiles", "in_flight": args.in_flight, "seconds": args.seconds,
                      "latency_ms": args.latency_ms, "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
