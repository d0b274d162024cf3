"""Sustained load for a fixed time, with front and worker memory sampled every second.

    python bench/scenarios/sustained.py                       # scaled down: 300 calls/s for 15 s, 2 workers
    python bench/scenarios/sustained.py --rate 5000 --duration 300 --warmup 30 \\
        --workers 8 --processes 4                             # the full run (16-core machine)

Starts a server in this process (--lm dummy by default: no HTTP, the sidecar
itself is measured), runs an open-loop load from spawned client processes at
--rate calls/s for --duration seconds, and samples the RSS of this process (the
front) and of every worker once a second. Memory growth is measured from the
first sample after --warmup seconds to the median of the last three samples;
`within_bound` says whether the front and every worker grew less than
--max-growth-mb. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from _common import emit, load, rss_mb, worker_pids


def growth(samples: list[dict], key: str, warmup_s: float) -> dict:
    values = [(s["t"], s[key]) for s in samples if s.get(key) is not None]
    if not values:
        return {}
    after = [v for t, v in values if t >= warmup_s] or [values[-1][1]]
    end = statistics.median([v for _, v in values[-3:]])
    return {"start": round(values[0][1], 1), "after_warmup": round(after[0], 1), "end": round(end, 1),
            "max": round(max(v for _, v in values), 1), "growth_mb": round(end - after[0], 1)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300.0, help="calls per second (open loop)")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the memory baseline")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--lm", choices=("dummy", "sim"), default="dummy")
    parser.add_argument("--processes", type=int, default=1, help="client processes")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--max-growth-mb", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between memory samples")
    args = parser.parse_args()

    app = await load.spawn_app(args.workers, args.lm, args.worker_concurrency, max_queue=max(1000, int(args.rate * args.timeout)))
    try:
        target = f"127.0.0.1:{app.port}"
        await load.register(target, "sustained", "question -> answer")
        await load.warm_up(target, "sustained", {"question": "warm {n}"}, 20, args.timeout)
        plan = load.Plan(target=target, program="sustained", inputs={"question": "sustained {n}"},
                         schedule=(load.load_stats.Step(args.rate, args.duration),), duration_s=args.duration,
                         timeout_s=args.timeout, max_calls=int(args.rate * args.duration) + 1, max_in_flight=20_000)
        start_at = time.time() + 1.0 + 0.4 * args.processes
        running = asyncio.create_task(load.run_clients(plan, args.processes, start_at=start_at))
        samples = []
        front = os.getpid()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        while not running.done():
            pids = worker_pids(app)
            workers = [m for m in (rss_mb(pid) for pid in pids) if m is not None]
            samples.append({"t": round(time.time() - start_at, 2), "front": rss_mb(front),
                            "workers_total": sum(workers) if workers else None, "worker_max": max(workers) if workers else None})
            await asyncio.wait({running}, timeout=args.interval)
        merged = running.result()
        status_restarts = app.pool.worker_pool.restarts
    finally:
        await app.stop(grace_s=1.0)
    front_growth = growth(samples, "front", args.warmup)
    worker_growth = growth(samples, "worker_max", args.warmup)
    within = all(g.get("growth_mb", 0.0) < args.max_growth_mb for g in (front_growth, worker_growth))
    emit({
        "bench": "scenario_sustained", "rate": args.rate, "duration_s": args.duration, "warmup_s": args.warmup,
        "workers": args.workers, "lm": args.lm, "processes": args.processes, "cpus": os.cpu_count(),
        **load.public_figures(merged),
        "worker_restarts": status_restarts,
        "memory_mb": {"front": front_growth, "worker_max": worker_growth, "workers_total": growth(samples, "workers_total", args.warmup),
                      "bound_mb": args.max_growth_mb, "within_bound": within, "samples": len(samples)},
    })


if __name__ == "__main__":
    asyncio.run(main())
