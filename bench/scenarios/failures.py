"""Failure injection during load: a worker killed, then the simulated LM failing; recovery times.

    python bench/scenarios/failures.py                     # scaled down: 50 calls/s for 16 s, 2 workers
    python bench/scenarios/failures.py --rate 2000 --duration 60 --workers 8 --processes 4 \\
        --kill-at 10 --faults-at 25 --faults-for 10         # a larger run

Starts a server with the simulated LM (--lm sim: faults need the HTTP LM) and
an open-loop load. During the load:
1. at --kill-at seconds, SIGKILL one worker. Reported: how long until the pool
   has --workers ready workers again (worker_replaced_s), the calls that failed
   meanwhile, and how long until calls succeed again (recovery_s: the first
   moment after the event from which two 250 ms buckets in a row have <= 5%
   failed calls);
2. at --faults-at seconds, set the simulated LM to answer every request with
   HTTP 500 (--fault error_rate; or rate_limit_rate, disconnect_rate, ...) for
   --faults-for seconds, then clear it. Reported: failures by status code in
   the fault window and the recovery time after the fault is cleared (it
   includes the circuit breaker's wait when the breaker opened).
A timeline of ok/failed calls per second is included. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time

from _common import emit, load, load_stats, ready_workers


async def wait_replaced(app, killed_pid: int, workers: int, timeout_s: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        ready = ready_workers(app)
        if len(ready) >= workers and all(h.pid != killed_pid for h in ready):
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    return None


def window(series, start: float, end: float) -> dict:
    ok = sum(o for t, o, _ in series if start <= t < end)
    failed = sum(f for t, _, f in series if start <= t < end)
    return {"ok": ok, "failed": failed}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--duration", type=float, default=16.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--sim-latency", default="fixed:20")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--kill-at", type=float, default=2.0)
    parser.add_argument("--faults-at", type=float, default=5.0)
    parser.add_argument("--faults-for", type=float, default=2.0)
    parser.add_argument("--fault", default="error_rate", help="simulated LM fault to set to 1.0 (error_rate, rate_limit_rate, disconnect_rate, ...)")
    parser.add_argument("--breaker-wait", type=float, default=None, help="server breaker_wait_s (default: the server's)")
    args = parser.parse_args()
    if not args.kill_at < args.faults_at < args.faults_at + args.faults_for < args.duration:
        parser.error("need --kill-at < --faults-at < --faults-at + --faults-for < --duration")

    overrides = {} if args.breaker_wait is None else {"breaker_wait_s": args.breaker_wait}
    app = await load.spawn_app(args.workers, "sim", args.worker_concurrency, max_queue=max(1000, int(args.rate * args.timeout)),
                               sim_latency=args.sim_latency, log_level="error", **overrides)
    events: dict = {}
    try:
        target = f"127.0.0.1:{app.port}"
        await load.register(target, "flaky", "question -> answer")
        await load.warm_up(target, "flaky", {"question": "warm {n}"}, 20, args.timeout)
        plan = load.Plan(target=target, program="flaky", inputs={"question": "failure {n}"},
                         schedule=(load_stats.Step(args.rate, args.duration),), duration_s=args.duration,
                         timeout_s=args.timeout, max_calls=int(args.rate * args.duration) + 1, bucket_s=0.25)
        start_at = time.time() + 1.0 + 0.4 * args.processes
        running = asyncio.create_task(load.run_clients(plan, args.processes, start_at=start_at))

        await asyncio.sleep(max(0.0, start_at + args.kill_at - time.time()))
        victim = ready_workers(app)[0].pid
        events["kill"] = time.time()
        os.kill(victim, signal.SIGKILL)
        replaced_s = await wait_replaced(app, victim, args.workers, timeout_s=30.0)

        await asyncio.sleep(max(0.0, start_at + args.faults_at - time.time()))
        events["faults_on"] = time.time()
        await app.sim.set_faults(**{args.fault: 1.0})
        await asyncio.sleep(max(0.0, start_at + args.faults_at + args.faults_for - time.time()))
        await app.sim.set_faults(**{args.fault: 0.0})
        events["faults_off"] = time.time()
        merged = await running
        breakers = [{"state": str(s.state), "opened_total": s.opened_total}
                    for s in app.service.resilient.breakers.snapshots().values()] if hasattr(app, "service") else []
        restarts = app.pool.worker_pool.restarts
    finally:
        await app.stop(grace_s=1.0)

    series = merged["_timeline"].series()
    recovery_kill = load_stats.recovery_s(series, events["kill"])
    recovery_faults = load_stats.recovery_s(series, events["faults_off"])
    origin = merged["_started"]
    per_second: dict[int, list[int]] = {}
    for t, ok, failed in series:
        second = int(t - origin)
        entry = per_second.setdefault(second, [0, 0])
        entry[0] += ok
        entry[1] += failed
    emit({
        "bench": "scenario_failures", "rate": args.rate, "duration_s": args.duration, "workers": args.workers,
        "lm": "sim", "sim_latency": args.sim_latency, "processes": args.processes, "cpus": os.cpu_count(),
        **load.public_figures(merged),
        "worker_kill": {
            "at_s": round(events["kill"] - origin, 2), "worker_replaced_s": None if replaced_s is None else round(replaced_s, 3),
            "recovery_s": None if recovery_kill is None else round(recovery_kill, 2),
            "calls_in_next_2s": window(series, events["kill"], events["kill"] + 2.0),
        },
        "lm_faults": {
            "fault": args.fault, "at_s": round(events["faults_on"] - origin, 2), "for_s": args.faults_for,
            "during": window(series, events["faults_on"], events["faults_off"]),
            "recovery_s": None if recovery_faults is None else round(recovery_faults, 2),
        },
        "worker_restarts": restarts,
        "breakers": breakers,
        "timeline_per_s": [[s, ok, failed] for s, (ok, failed) in sorted(per_second.items())],
    })


if __name__ == "__main__":
    asyncio.run(main())
