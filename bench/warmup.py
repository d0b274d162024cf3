"""The first call on a worker that joins a running pool, by warm-up mode, one JSON object.

    python bench/warmup.py [--joins 5 --latency-ms 50]

For each `--warmup` mode (off, build, calls) a server starts with one worker
and a ChainOfThought program whose spec declares one warm-up input. Then,
`--joins` times: one worker joins (spawned as a scale-up would), and once it
takes traffic the bench sends it a first and a second call (pinned by session affinity). Reported
per mode: how long the joining worker took from the resize to taking traffic,
and the median first-call and second-call latency on it. The first-minus-second
gap is what a user's call pays for a cold worker; warm-up moves it before the
worker takes traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import grpc

from dspy_pool import logs
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.dispatcher import Job
from dspy_pool.server.app import App
from dspy_pool.server.config import build as server_config
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

PROGRAM = "warm_cot"


async def joining_worker(app: App) -> tuple[object, float]:
    """Add one worker; return it once it takes traffic (booted and warmed up), and the seconds that took."""
    started = time.monotonic()
    handle = await app.pool.worker_pool.spawn(extra=True)  # beside the target, as a recycle's replacement joins
    assert handle is not None and handle.state.value == "ready", "the joining worker did not come up"
    return handle, time.monotonic() - started


async def call_on(app: App, handle, question: str) -> float:
    """One call pinned to `handle` (affinity holds while it has a free slot); its latency in ms."""
    entry = app.service.registry.get(PROGRAM)
    request = wire.WorkRequest(program_key=entry.key)
    request.inputs.update({"question": question})
    job = Job(entry.key, entry.ref.spec, request, asyncio.get_running_loop().time() + 30.0, affinity=handle.worker_id)
    started = time.perf_counter()
    _, served_by = await app.pool.worker_pool.dispatcher.run(job)
    assert served_by is handle, "the pinned call ran elsewhere"
    return (time.perf_counter() - started) * 1000.0


async def measure(mode: str, args) -> dict:
    config = server_config(state="memory", listen="127.0.0.1:0", lm="sim", sim_latency=f"fixed:{args.latency_ms}", workers=1,
                          fixed_workers=1, warmup=mode, log_level="warning")
    app = App(config)
    await app.start()
    joins, firsts, seconds = [], [], []
    try:
        spec = pb.ProgramSpec(name=PROGRAM, signature="question -> answer", module="chain_of_thought")
        spec.warmup_inputs.add().update({"question": "warm-up"})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            await pb_grpc.DSPyPoolStub(channel).RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
        for number in range(args.joins):
            handle, joined_s = await joining_worker(app)
            joins.append(joined_s * 1000.0)
            firsts.append(await call_on(app, handle, f"first {number}"))
            seconds.append(await call_on(app, handle, f"second {number}"))
            handle.drain()  # back to the one worker the pool is asked to hold
    finally:
        await app.stop(grace_s=2.0)
    return {
        "warmup": mode,
        "join_to_traffic_ms": round(statistics.median(joins), 1),
        "first_call_ms": round(statistics.median(firsts), 1),
        "second_call_ms": round(statistics.median(seconds), 1),
        "first_minus_second_ms": round(statistics.median(f - s for f, s in zip(firsts, seconds)), 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--joins", type=int, default=5)
    parser.add_argument("--latency-ms", type=int, default=50)
    args = parser.parse_args()
    logs.configure("console", "warning")  # stdout carries the one JSON object; the log goes to stderr
    results = [await measure(mode, args) for mode in ("off", "build", "calls")]
    print(json.dumps({"bench": "warmup", "joins": args.joins, "latency_ms": args.latency_ms, "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
