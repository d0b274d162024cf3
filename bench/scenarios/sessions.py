"""Many concurrent sessions, each a few turns long, on a program that takes the session history.

    python bench/scenarios/sessions.py                        # scaled down: 500 sessions x 3 turns, 2 workers
    python bench/scenarios/sessions.py --sessions 10000 --turns 3 --workers 8 --processes 4   # the full run

Registers "question, history: dspy.History -> answer" (so every call after the
first receives its session's earlier turns), opens --sessions conversations
at once from spawned client processes, each making --turns calls in a row on
its own session_id. Then checks a sample of sessions on the server (each must
hold --turns turns), counts the sessions the server holds, closes them all and
times that. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time

import grpc

from _common import emit, load, rss_mb

from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=500)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--lm", choices=("dummy", "sim"), default="dummy")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--duration", type=float, default=60.0, help="upper bound on the run, seconds")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--check", type=int, default=50, help="sessions whose history is checked on the server")
    parser.add_argument("--state", default="memory", help="memory, sqlite (a file in a temporary folder) or redis://...")
    args = parser.parse_args()

    state_dir = tempfile.mkdtemp(prefix="bench-sessions-")
    app = await load.spawn_app(args.workers, args.lm, args.worker_concurrency, max_queue=args.sessions + 100,
                               max_sessions=max(10_000, 2 * args.sessions), session_max_turns=max(50, args.turns),
                               state=args.state, state_dir=state_dir)
    try:
        target = f"127.0.0.1:{app.port}"
        await load.register(target, "chat", "question, history: dspy.History -> answer")
        await load.warm_up(target, "chat", {"question": "warm {n}"}, 10, args.timeout)
        plan = load.Plan(target=target, program="chat", inputs={"question": "turn {n}"}, concurrency=args.sessions,
                         session_turns=args.turns, max_calls=args.sessions * args.turns, duration_s=args.duration,
                         timeout_s=args.timeout, session_prefix="conv", close_sessions=False)
        merged = await load.run_clients(plan, args.processes)
        front_rss = rss_mb(os.getpid())
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            held = (await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)).sessions
            ids = [f"conv-{p.index}-{i}" for p in load.split_plan(plan, args.processes, 0.0) for i in range(p.concurrency)]
            sample = random.Random(0).sample(ids, min(args.check, len(ids)))
            turns = [len((await stub.GetSession(pb.GetSessionRequest(session_id=s), timeout=10)).turns) for s in sample]
            started = time.perf_counter()
            limit = asyncio.Semaphore(256)

            async def close(session_id: str) -> bool:
                async with limit:
                    try:
                        await stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=args.timeout)
                        return True
                    except grpc.aio.AioRpcError:
                        return False

            closed = sum(await asyncio.gather(*(close(s) for s in ids)))
            close_s = time.perf_counter() - started
            left = (await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)).sessions
    finally:
        await app.stop(grace_s=1.0)
        shutil.rmtree(state_dir, ignore_errors=True)
    emit({
        "bench": "scenario_sessions", "sessions": args.sessions, "turns": args.turns, "workers": args.workers,
        "lm": args.lm, "state": args.state, "processes": args.processes, "cpus": os.cpu_count(),
        **load.public_figures(merged),
        "server_sessions_after_run": held,
        "history_checked": len(sample),
        "history_complete": sum(1 for t in turns if t == args.turns),
        "history_turns_seen": sorted(set(turns)),
        "closed": closed, "close_all_s": round(close_s, 3), "server_sessions_after_close": left,
        "front_rss_mb": round(front_rss, 1) if front_rss else None,
    })


if __name__ == "__main__":
    asyncio.run(main())
