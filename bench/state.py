"""State store benchmark: memory, SQLite and Redis in one run, one JSON object.

    python bench/state.py [--seconds 3] [--repeats 3] [--in-flight 64] [--slice-s 0.5] [--warmup-s 1]
                          [--max-turns 50] [--registrations 20] [--cache-calls 20]

One App per backend (`--lm dummy`, 2 workers, gRPC on 127.0.0.1:0), all three
in this process and started once: memory; SQLite in a temporary folder; Redis
on a redis-server this script starts on a free loopback port with persistence
off (skipped, with a note, when redis-server is not installed). Figures:

- calls_per_s at --in-flight calls in flight (a closed loop, `question -> answer`,
  no history input so the worker's cost is the same for every call):
  (a) no_session: calls without a session;
  (b) session: each client has its own session (one of --in-flight), filled to
      session_max_turns before measuring, so every call opens a session at its
      cap and appends a turn that trims the oldest;
  median and spread of --repeats runs. Within a phase the backends take turns
  every --slice-s seconds (in an order rotated each repeat) until each had
  --seconds, so the machine's noise hits all of them alike; only calls that
  ended inside a slice count (the drain after it weighs on no one);
- register_ms: RegisterProgram latency, one call at a time, of distinct specs
  (each is also built once on a worker, which costs the same for every backend);
- cache_hit_ms: a `cache: {mode: serve}` program; the Execute latency of an
  identical call answered by the memory level, and (SQLite, Redis) by the store
  level: the App is restarted on the same file / database with
  result_cache_warm_entries=0, so the first identical call of each input is
  answered from the store (every response's cache_level is checked and counted);
  primary_ms is the same program's uncached call, for scale;
- cpu_us_per_call: per phase, CPU per counted call of the event-loop thread
  (the front and the load generator), this process's other threads (gRPC's
  and SQLite's), the workers and redis-server; on a machine whose cores are
  all busy, store CPU anywhere (even redis-server's) costs calls/s;
- ratios against memory from this same run, with the issue's targets (issue 10):
  SQLite >= 0.95x memory without a session, >= 0.85x with one; Redis >= 0.8x with one.

The load generator shares this process (and event loop) with the fronts, as
bench/pool.py does: an equal cost for every backend. stdout carries the one
JSON object; the log goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import pathlib
import shutil
import statistics
import sys
import tempfile
import threading
import time

import grpc
import psutil

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # tests.redis_server

from closed_loop import percentile_ms, window_loop  # noqa: E402  (bench/, as bench/autoscale.py and bench/profiles.py do)
from load_stats import spread  # noqa: E402

from dspy_pool import logs  # noqa: E402
from dspy_pool.server.app import App  # noqa: E402
from dspy_pool.server.config import build as server_config  # noqa: E402
from dspy_pool.v1 import dspy_pool_pb2 as pb  # noqa: E402
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc  # noqa: E402
from tests.redis_server import RedisServer, redis_server_path  # noqa: E402

PROGRAM = "bench"
CACHED = "cached"
TARGETS = {  # issue 10: ratio of calls/s against memory, measured in the same run
    "sqlite_vs_memory_no_session": 0.95,
    "sqlite_vs_memory_session": 0.85,
    "redis_vs_memory_session": 0.80,
}


def log(message: str) -> None:
    print(f"bench/state: {message}", file=sys.stderr, flush=True)



CPU_PARTS = ("front_loop", "front_threads", "workers", "redis_server")


def cpu_seconds(app: App, redis: RedisServer | None) -> tuple[float, ...]:
    """CPU seconds so far of: this process's event-loop thread (front and load generator), its other threads (gRPC's,
    SQLite's), the App's workers, and redis-server (on this same machine, so it competes for the same cores)."""
    main_thread = threading.main_thread().native_id
    loop = other = 0.0
    for thread in psutil.Process().threads():
        if thread.id == main_thread:
            loop += thread.user_time + thread.system_time
        else:
            other += thread.user_time + thread.system_time
    workers = 0.0
    for handle in app.pool.worker_pool.handles():
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(handle.pid).cpu_times()
            workers += times.user + times.system
    server = 0.0
    if redis is not None and redis.process is not None:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(redis.process.pid).cpu_times()
            server = times.user + times.system
    return loop, other, workers, server


class Backend:
    """One App on one state store, with a channel to it."""

    def __init__(self, name: str, state: str, args) -> None:
        self.name = name
        self.state = state
        self.args = args
        self.app: App | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub = None
        self.runs: dict[str, list[dict]] = {"no_session": [], "session": []}
        self.start_s = 0.0

    def config(self, **overrides):
        return server_config(state=self.state, lm="dummy", workers=self.args.workers, listen="127.0.0.1:0", log_level="warning",
                             max_queue=max(1000, 2 * self.args.in_flight), session_max_turns=self.args.max_turns, **overrides)

    async def start(self, **overrides) -> None:
        self.app = App(self.config(**overrides))
        started = time.perf_counter()
        await self.app.start()
        self.start_s = time.perf_counter() - started
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.app.port}")
        self.stub = pb_grpc.DSPyPoolStub(self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.app is not None:
            await self.app.stop(grace_s=2.0)
            self.app = None


async def drive(stub, in_flight: int, seconds: float, sessions: bool, tag: str) -> dict:
    """`in_flight` clients calling PROGRAM back to back for `seconds`; with `sessions`, client n always uses session s{n}.

    Only calls that ended within the window count (the ramp is instant: every client sends at once), so the
    drain after it (the last calls finishing) weighs on no backend.
    """
    figures = await window_loop([stub], in_flight, seconds, program=PROGRAM, tag=tag,
                                session_of=(lambda number: f"s{number}") if sessions else None)
    return {"calls": figures["window_calls"], "seconds": seconds, "latencies": figures["latencies"], "errors": figures["errors"]}


async def fill_sessions(stub, in_flight: int, turns: int) -> None:
    """Each client's session gets `turns` turns, so the measured session calls run at the history's cap."""

    async def client(number: int) -> None:
        for call in range(turns):
            request = pb.ExecuteRequest(program=PROGRAM, session_id=f"s{number}")
            request.inputs.update({"question": f"fill c{number} q{call}"})
            await stub.Execute(request, timeout=30)

    await asyncio.gather(*(client(n) for n in range(in_flight)))


def merged(slices: list[dict]) -> dict:
    """One backend's slices of one phase in one repeat, as one measurement."""
    latencies = sorted(ms for s in slices for ms in s["latencies"])
    errors: collections.Counter = collections.Counter()
    for s in slices:
        errors.update(s["errors"])
    calls = sum(s["calls"] for s in slices)
    cpu = {part: round(sum(s["cpu"][n] for s in slices) / max(1, calls) * 1e6) for n, part in enumerate(CPU_PARTS)}
    return {"calls_per_s": calls / sum(s["seconds"] for s in slices), "p50_ms": percentile_ms(latencies, 50),
            "p99_ms": percentile_ms(latencies, 99), "errors": dict(errors), "cpu_us_per_call": cpu}


async def registrations(backends: list[Backend], count: int) -> dict[str, list[float]]:
    """RegisterProgram of `count` distinct specs per backend, one at a time, the backends taking turns."""
    times: dict[str, list[float]] = {b.name: [] for b in backends}
    for number in range(count):
        for backend in backends:
            spec = pb.ProgramSpec(name=f"reg{number}", signature="question -> answer", instructions=f"registration {number}")
            started = time.perf_counter()
            program = await backend.stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
            times[backend.name].append((time.perf_counter() - started) * 1000)
            assert program.created, f"{backend.name}: reg{number} was not new"
    return times


async def timed_execute(stub, question: str) -> tuple[float, pb.ExecuteResponse]:
    request = pb.ExecuteRequest(program=CACHED)
    request.inputs.update({"question": question})
    started = time.perf_counter()
    response = await stub.Execute(request, timeout=30)
    return (time.perf_counter() - started) * 1000, response


async def cache_levels(backend: Backend, count: int) -> dict:
    """Primary calls of `count` inputs, then the same inputs again (memory level); see store_level for the store."""
    await backend.stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(
        name=CACHED, signature="question -> answer", cache=pb.CachePolicy(mode="serve", ttl_s=3600))), timeout=30)
    questions = [f"cached question {n}" for n in range(count)]
    primary, memory, levels = [], [], collections.Counter()
    for question in questions:
        ms, response = await timed_execute(backend.stub, question)
        levels[f"first:{response.served_by}:{response.cache_level or '-'}"] += 1
        primary.append(ms)
    for question in questions:
        ms, response = await timed_execute(backend.stub, question)
        levels[f"again:{response.served_by}:{response.cache_level or '-'}"] += 1
        if response.cache_level == "memory":
            memory.append(ms)
    return {"questions": questions, "primary": primary, "memory": memory, "levels": levels}


async def store_level(backend: Backend, questions: list[str]) -> tuple[list[float], collections.Counter]:
    """Restart on the same store without warming: each input's first identical call is answered by the store level."""
    await backend.stop()
    await backend.start(result_cache_warm_entries=0)
    store, levels = [], collections.Counter()
    for question in questions:
        ms, response = await timed_execute(backend.stub, question)
        levels[f"restarted:{response.served_by}:{response.cache_level or '-'}"] += 1
        if response.cache_level == "store":
            store.append(ms)
    return store, levels


async def session_turns(backend: Backend, in_flight: int) -> list[int]:
    """Turns held by a few of the sessions at the end (they grow to session_max_turns)."""
    turns = []
    for number in sorted({0, in_flight // 2, in_flight - 1}):
        session = await backend.stub.GetSession(pb.GetSessionRequest(session_id=f"s{number}"), timeout=10)
        turns.append(len(session.turns))
    return turns


def ratio_figures(by_name: dict[str, Backend], name: str, phase: str) -> dict | None:
    if name not in by_name:
        return None
    mine = [r["calls_per_s"] for r in by_name[name].runs[phase]]
    memory = [r["calls_per_s"] for r in by_name["memory"].runs[phase]]
    ratio = statistics.median(mine) / statistics.median(memory)
    target = TARGETS.get(f"{name}_vs_memory_{phase}")
    return {"ratio": round(ratio, 3), "per_repeat": spread([a / b for a, b in zip(mine, memory)]),
            "target": target, "met": None if target is None else ratio >= target}


async def run(args) -> dict:
    workdir = tempfile.mkdtemp(prefix="dspy-pool-bench-state-")
    redis: RedisServer | None = None
    notes = ["memory has no store level of the result cache (cache_hit_ms.store is null)",
             "no_session calls never touch the store: their ratios show this run's noise"]
    specs = [("memory", "memory"), ("sqlite", f"sqlite:///{workdir}/state.db")]
    if redis_server_path() is None:
        notes.append("redis skipped: redis-server is not on PATH")
    else:
        redis = RedisServer.launch()  # a free 127.0.0.1 port, persistence off (tests/redis_server.py)
        specs.append(("redis", redis.url))
    backends = [Backend(name, state, args) for name, state in specs]
    by_name = {b.name: b for b in backends}
    try:
        for backend in backends:
            await backend.start()
            await backend.stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name=PROGRAM, signature="question -> answer")), timeout=30)
            log(f"{backend.name}: serving on port {backend.app.port} ({backend.state}) after {backend.start_s:.1f}s")
        for backend in backends:  # warm-up: connections, worker builds; every session filled to max_turns
            await drive(backend.stub, args.in_flight, args.warmup_s, False, "warm")
            await fill_sessions(backend.stub, args.in_flight, args.max_turns)
        slices = max(1, round(args.seconds / args.slice_s))
        for repeat in range(args.repeats):
            order = backends[repeat % len(backends):] + backends[:repeat % len(backends)]
            for phase in ("no_session", "session"):
                taken: dict[str, list[dict]] = {b.name: [] for b in backends}
                for number in range(slices):  # the backends take turns slice by slice: noise bursts hit all alike
                    for backend in order:
                        server = redis if backend.name == "redis" else None
                        before = cpu_seconds(backend.app, server)
                        figures = await drive(backend.stub, args.in_flight, args.seconds / slices, phase == "session", f"r{repeat}.{number}")
                        # The last calls' drain is in the CPU time too: a little over the calls counted, alike for all.
                        figures["cpu"] = [after - first for after, first in zip(cpu_seconds(backend.app, server), before)]
                        taken[backend.name].append(figures)
                for backend in order:
                    figures = merged(taken[backend.name])
                    backend.runs[phase].append(figures)
                    log(f"repeat {repeat} {phase:10} {backend.name:6} {figures['calls_per_s']:7.1f} calls/s "
                        f"p50 {figures['p50_ms']} ms p99 {figures['p99_ms']} ms errors {figures['errors']}")
        turns = {b.name: await session_turns(b, args.in_flight) for b in backends}
        register = await registrations(backends, args.registrations)
        log("registrations: " + ", ".join(f"{n} {statistics.median(v):.1f} ms" for n, v in register.items()))
        cache = {b.name: await cache_levels(b, args.cache_calls) for b in backends}
        for backend in backends:
            if backend.app.store.durable:
                store, levels = await store_level(backend, cache[backend.name]["questions"])
                cache[backend.name]["store"] = store
                cache[backend.name]["levels"].update(levels)
        log("cache: " + ", ".join(f"{n} memory {statistics.median(c['memory']):.2f} ms" + (
            f" store {statistics.median(c['store']):.2f} ms" if c.get("store") else "") for n, c in cache.items()))
    finally:
        for backend in backends:
            with contextlib.suppress(Exception):
                await backend.stop()
        if redis is not None:
            redis.close()
        shutil.rmtree(workdir, ignore_errors=True)

    results = {}
    for backend in backends:
        runs, c = backend.runs, cache[backend.name]
        errors: collections.Counter = collections.Counter()
        for phase_runs in runs.values():
            for r in phase_runs:
                errors.update(r["errors"])
        results[backend.name] = {
            "state": backend.state.replace(workdir, "$TMP"),
            "calls_per_s": {phase: spread([r["calls_per_s"] for r in phase_runs], 1) for phase, phase_runs in runs.items()},
            "p50_ms": {phase: spread([r["p50_ms"] for r in phase_runs if r["p50_ms"] is not None], 1) for phase, phase_runs in runs.items()},
            "p99_ms": {phase: spread([r["p99_ms"] for r in phase_runs if r["p99_ms"] is not None], 1) for phase, phase_runs in runs.items()},
            "cpu_us_per_call": {phase: {part: statistics.median(r["cpu_us_per_call"][part] for r in phase_runs) for part in CPU_PARTS}
                                for phase, phase_runs in runs.items()},
            "errors": dict(errors),
            "session_turns_at_end": turns[backend.name],
            "register_ms": spread(register[backend.name], 2),
            "cache_hit_ms": {"memory": spread(c["memory"], 3), "store": spread(c.get("store", []), 3) if backend.name != "memory" else None,
                             "primary_ms": spread(c["primary"], 3), "responses": dict(sorted(c["levels"].items()))},
        }
    ratios = {}
    for name in ("sqlite", "redis"):
        for phase in ("no_session", "session"):
            figures = ratio_figures(by_name, name, phase)
            if figures is not None:
                ratios[f"{name}_vs_memory_{phase}"] = figures
    if "redis" not in by_name:
        ratios["redis_vs_memory_session"] = {"ratio": None, "target": TARGETS["redis_vs_memory_session"], "met": None}
    return {
        "bench": "state", "lm": "dummy", "workers": args.workers, "in_flight": args.in_flight, "seconds": args.seconds,
        "repeats": args.repeats, "slice_s": args.slice_s, "warmup_s": args.warmup_s, "session_max_turns": args.max_turns, "cpus": psutil.cpu_count(),
        "backends": results, "ratios": ratios,
        "targets_met": all(r["met"] is True for r in ratios.values() if r["target"] is not None),  # a skipped backend is not met
        "notes": notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds of load per backend, phase and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64, help="calls in flight (and sessions, in the session phase)")
    parser.add_argument("--slice-s", type=float, default=0.5, help="the backends alternate every this many seconds within a phase")
    parser.add_argument("--warmup-s", type=float, default=1.0, help="seconds of calls without a session per backend before measuring")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-turns", type=int, default=50, help="session_max_turns (the server's default is 50)")
    parser.add_argument("--registrations", type=int, default=20, help="RegisterProgram calls per backend")
    parser.add_argument("--cache-calls", type=int, default=20, help="distinct inputs timed per cache level")
    args = parser.parse_args()
    if args.repeats < 1 or args.in_flight < 1 or args.seconds <= 0 or args.slice_s <= 0:
        parser.error("--repeats and --in-flight must be >= 1, --seconds and --slice-s > 0")
    logs.configure("console", "warning")  # stdout carries the one JSON object; the log goes to stderr
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
