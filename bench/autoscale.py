"""Autoscaling benchmark: a load step against an autoscaled pool and two fixed pools, one JSON object.

    python bench/autoscale.py [--low 5 --high 60 --phase-s 8 --latency-ms 500 --concurrency 8 --min 1 --max 8]

Issue 4's full size is --low 10 --high 400 --latency-ms 200 (a 16-core machine); the
defaults are scaled to this 2-core machine, where DSPy's ~5 ms of CPU per call caps
the total rate. Load runs low -> high -> low (closed loop: N calls in flight) against:
autoscaled (min..max), fixed at min, fixed at max. For each: p50/p99 per phase, time
from the step up until the pool reached the size the load needs, scale-direction
reversals within each steady phase, and worker-seconds. Target: autoscaled p99 within
1.2x of fixed-max while using at most 60% of its worker-seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time

import grpc

from closed_loop import closed_loop, percentile_ms

from dspy_pool import logs
from dspy_pool.server.app import App
from dspy_pool.server.config import build as server_config
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc


async def run_pool(label: str, args, minimum: int, maximum: int) -> dict:
    config = server_config(state="memory",
        listen="127.0.0.1:0", lm="sim", sim_latency=f"fixed:{args.latency_ms}", workers=minimum, min_workers=minimum,
        max_workers=maximum, worker_concurrency=args.concurrency, max_queue=10000, downscale_window_s=args.downscale_s,
        upscale_cooldown_s=1.0, upscale_step_max=args.step_max, controller_interval_s=0.25, log_level="warning",
    )
    app = App(config)
    await app.start()
    sizes: list[tuple[float, int]] = []
    sampling = True

    async def sample() -> None:
        while sampling:
            sizes.append((time.monotonic(), len(app.pool.worker_pool.handles())))
            await asyncio.sleep(0.1)

    sampler = asyncio.ensure_future(sample())
    phases = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="bench", signature="question -> answer")))
            marks = {}
            for name, load in (("low_1", args.low), ("high", args.high), ("low_2", args.low)):
                marks[name] = time.monotonic()
                latencies, queue_waits, codes = await closed_loop(stub, load, args.phase_s)
                phases[name] = {
                    "calls": len(latencies), "errors": sum(codes.values()),
                    "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99),
                    "queue_wait_p99_ms": percentile_ms(queue_waits, 99),
                }
            marks["end"] = time.monotonic()
    finally:
        sampling = False
        await sampler
        scale_events = app.pool.scale_counts()[0]
        await app.stop(grace_s=2.0)
    needed = min(maximum, math.ceil(args.high / args.concurrency))
    reached = next((t for t, n in sizes if t >= marks["high"] and n >= needed), None)
    worker_seconds = sum(n * 0.1 for _, n in sizes)
    return {
        "pool": label, "min": minimum, "max": maximum, "phases": phases,
        "time_to_enough_workers_s": None if reached is None else round(reached - marks["high"], 2),
        "reversals_in_phase": {name: reversals([n for t, n in sizes if marks[name] <= t < marks[nxt]])
                               for name, nxt in (("low_1", "high"), ("high", "low_2"), ("low_2", "end"))},
        "worker_seconds": round(worker_seconds, 1),
        "peak_workers": max(n for _, n in sizes),
        "scale_events": scale_events,
    }


def reversals(series: list[int]) -> int:
    """How often the size changed direction (up then down, or down then up)."""
    directions = [1 if b > a else -1 for a, b in zip(series, series[1:]) if a != b]
    return sum(1 for a, b in zip(directions, directions[1:]) if a != b)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--low", type=int, default=5)
    parser.add_argument("--high", type=int, default=60)
    parser.add_argument("--phase-s", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--min", type=int, default=1)
    parser.add_argument("--max", type=int, default=8)
    parser.add_argument("--downscale-s", type=float, default=4.0)
    parser.add_argument("--step-max", type=int, default=8, help="most workers added in one scale-up step")
    args = parser.parse_args()
    logs.configure("console", "warning")  # stdout carries the one JSON object; the log goes to stderr
    results = [await run_pool("autoscaled", args, args.min, args.max),
               await run_pool("fixed_min", args, args.min, args.min),
               await run_pool("fixed_max", args, args.max, args.max)]
    auto, _, fixed_max = results
    p99_ratio = auto["phases"]["high"]["p99_ms"] / fixed_max["phases"]["high"]["p99_ms"]
    print(json.dumps({
        "bench": "autoscale", "load": [args.low, args.high, args.low], "phase_s": args.phase_s, "latency_ms": args.latency_ms,
        "worker_concurrency": args.concurrency, "results": results,
        "high_phase_p99_ratio_auto_vs_fixed_max": round(p99_ratio, 3),
        "worker_seconds_ratio_auto_vs_fixed_max": round(auto["worker_seconds"] / fixed_max["worker_seconds"], 3),
        "targets": {"p99_ratio_max": 1.2, "worker_seconds_ratio_max": 0.6},
    }))


if __name__ == "__main__":
    asyncio.run(main())
