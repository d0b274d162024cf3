"""Pool benchmark: cold start against `import dspy`, throughput and memory, one JSON object.

    python bench/pool.py [--workers 4] [--in-flight 256] [--calls 3000] [--runs 3] [--lm dummy]

Figures, each the median (and min/max) of --runs runs in this one process:
- import_dspy_s: a fresh `python -c "import dspy"` (the baseline);
- time_to_serving_s: App.start() until health SERVING with --workers workers;
  ratio_to_import: the two divided (the target is about 1: workers cost ~nothing extra);
- worker_boot_ms: fork to HELLO per worker, from the log;
- calls_per_s, latency p50/p99 at --in-flight calls in flight, over gRPC on 127.0.0.1;
- rss: per-worker RSS and USS (unique memory; the rest is shared with the zygote).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import grpc
import psutil
from structlog.testing import capture_logs

from dspy_pool.server.app import App
from dspy_pool.server.config import build as server_config
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc
from load_stats import spread  # bench/ is sys.path[0] when run as a script



def import_dspy_s() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dspy"], check=True, env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"})
    return time.perf_counter() - started


async def load(stub, calls: int, in_flight: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    remaining = iter(range(calls))

    async def client() -> None:
        nonlocal errors
        for number in remaining:
            request = pb.ExecuteRequest(program="bench")
            request.inputs.update({"question": f"question {number}"})
            started = time.perf_counter()
            try:
                await stub.Execute(request, timeout=30)
                latencies.append((time.perf_counter() - started) * 1000)
            except grpc.aio.AioRpcError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(in_flight)))
    return time.perf_counter() - started, latencies, errors


async def one_run(args) -> dict:
    config = server_config(state="memory", listen="127.0.0.1:0", workers=args.workers, worker_concurrency=args.concurrency, lm=args.lm,
                          sim_latency=args.sim_latency, max_queue=max(1000, args.in_flight), log_level="warning")
    app = App(config)
    with capture_logs() as logs:
        started = time.perf_counter()
        await app.start()
        serving_s = time.perf_counter() - started
    boots = [e["boot_ms"] for e in logs if e["event"] == "worker_spawned"]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="bench", signature="question -> answer")))
            await load(stub, min(200, args.calls), args.in_flight)  # warm-up
            elapsed, latencies, errors = await load(stub, args.calls, args.in_flight)
        latencies.sort()
        workers = [psutil.Process(h.pid) for h in app.pool.worker_pool.handles()]
        memory = [w.memory_full_info() for w in workers]
        return {
            "time_to_serving_s": serving_s,
            "worker_boot_ms": statistics.median(boots) if boots else None,
            "calls_per_s": len(latencies) / elapsed,
            "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
            "errors": errors,
            "worker_rss_mb": statistics.median(m.rss for m in memory) / 2**20,
            "worker_uss_mb": statistics.median(m.uss for m in memory) / 2**20,
        }
    finally:
        await app.stop(grace_s=1.0)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lm", default="dummy")
    parser.add_argument("--sim-latency", default="fixed:20")
    args = parser.parse_args()
    imports = [import_dspy_s() for _ in range(args.runs)]
    runs = [await one_run(args) for _ in range(args.runs)]
    serving = [r["time_to_serving_s"] for r in runs]
    result = {
        "bench": "pool", "workers": args.workers, "worker_concurrency": args.concurrency, "in_flight": args.in_flight,
        "calls": args.calls, "lm": args.lm, "cpus": psutil.cpu_count(),
        "import_dspy_s": spread(imports, 4),
        "time_to_serving_s": spread(serving, 4),
        "ratio_to_import": round(statistics.median(serving) / statistics.median(imports), 3),
        **{key: spread([r[key] for r in runs], 4) for key in ("worker_boot_ms", "calls_per_s", "p50_ms", "p99_ms", "worker_rss_mb", "worker_uss_mb")},
        "errors": sum(r["errors"] for r in runs),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
