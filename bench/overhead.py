"""dspy-pool against the floor forwarder (bench/floor.py), in one run: throughput, latency, CPU per call.

    python bench/overhead.py [--seconds 4] [--repeats 5] [--slice-s 1] [--warmup-s 2] [--in-flight 64]
                             [--workers 2] [--baseline-tree DIR] [--pool-arg=--flag ...]

Servers, each its own process tree, all alive together:
- floor: `python bench/floor.py --workers N` (grpc.aio -> socketpair -> N forked workers running dspy.Predict on
  the same in-process LM as `--lm dummy`, 64 calls at once each; nothing else);
- dspy_pool: `dspy-pool serve --lm dummy --workers N --fixed-workers N --state memory --optimizer-workers 0`
  from this checkout (uvloop front, the default log level; the Prometheus endpoint off, as by default);
- dspy_pool_before (with --baseline-tree DIR): the same, from another copy of the tree (PYTHONPATH=DIR), for a
  before/after in the same run.

The load generator is its own process (this file with --load-child), so its CPU is counted apart: the front's
CPU is its process (every thread: grpc core's too), the workers' the sum of the worker processes (the zygote,
idle under load, is left out). Two phases, --in-flight calls in flight and 1 in flight, each a closed loop of
`question -> answer` calls; within a phase the servers take turns every --slice-s seconds (the order rotated
each repeat) until each had --seconds, so the machine's drift hits all alike. calls_per_s and latencies count
only calls that ended inside a slice; CPU per call divides a slice's CPU by every call it completed (the
drain after the window included).

Figures per server and phase: the median (and min/max) over --repeats of calls_per_s, p50/p99 latency and CPU
per call (front, workers, client). Ratios against the floor are computed per repeat (same slices, same
drift) and their median is reported with the issue's targets (issue 12): calls/s >= 0.9x the floor at
--in-flight; front and worker CPU per call <= 1.15x the floor's; at 1 in flight p50 <= floor + 0.3 ms.

stdout carries one JSON object; the log goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from load_child import LoadChild, free_port  # bench/ is sys.path[0] when run as a script
from load_stats import spread

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PROGRAM = "bench"
SIGNATURE = "question -> answer"
TARGETS = {  # issue 12, against the floor measured in the same run
    "calls_per_s": (">=", 0.9),
    "front_cpu_per_call": ("<=", 1.15),
    "worker_cpu_per_call": ("<=", 1.15),
    "p50_1_in_flight_over_floor_ms": ("<=", 0.3),
}


def log(message: str) -> None:
    print(f"bench/overhead: {message}", file=sys.stderr, flush=True)



def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


# -- the load generator (its own process) -------------------------------------------
async def _load_child() -> None:
    """Commands as JSON lines on stdin, one JSON line back per command on stdout."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from dspy_pool.v1 import dspy_pool_pb2 as pb
    from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    channels: dict[str, grpc.aio.Channel] = {}
    stubs: dict = {}

    async def wait_serving(channel, timeout_s: float) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        give_up = time.monotonic() + timeout_s
        while True:
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > give_up:
                raise TimeoutError("not SERVING in time")
            await asyncio.sleep(0.2)

    async def drive(stub, in_flight: int, seconds: float, tag: str) -> dict:
        from closed_loop import window_loop

        figures = await window_loop([stub], in_flight, seconds, program=PROGRAM, tag=tag)
        return {**figures, "seconds": seconds}

    while True:
        line = await reader.readline()
        if not line:
            return
        command = json.loads(line)
        op, name = command["op"], command.get("name")
        try:
            if op == "connect":
                channel = channels[name] = grpc.aio.insecure_channel(command["target"])
                stubs[name] = pb_grpc.DSPyPoolStub(channel)
                if command.get("health", True):
                    await wait_serving(channel, command.get("timeout_s", 120))
                answer: dict = {"ok": True}
            elif op == "register":
                await stubs[name].RegisterProgram(pb.RegisterProgramRequest(
                    spec=pb.ProgramSpec(name=PROGRAM, signature=SIGNATURE)), timeout=60)
                answer = {"ok": True}
            elif op == "workers":
                status = await stubs[name].GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)
                answer = {"ok": True, "pids": [w.pid for w in status.workers]}
            elif op == "drive":
                answer = {"ok": True, **await drive(stubs[name], command["in_flight"], command["seconds"], command["tag"])}
            elif op == "quit":
                for channel in channels.values():
                    await channel.close()
                print(json.dumps({"ok": True}), flush=True)
                return
            else:
                answer = {"ok": False, "error": f"unknown op {op}"}
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


# -- servers ----------------------------------------------------------------------------
class Server:
    """One server process tree; `front` and `workers` are psutil processes once started."""

    def __init__(self, name: str, logdir: str) -> None:
        self.name = name
        self.logfile = open(os.path.join(logdir, f"{name}.log"), "w+")
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.front = None
        self.workers: list = []

    def cpu(self) -> tuple[float, float]:
        import psutil

        def seconds(process) -> float:
            try:
                times = process.cpu_times()
                return times.user + times.system
            except psutil.Error:
                return 0.0

        return seconds(self.front), sum(seconds(worker) for worker in self.workers)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.logfile.close()


def start_floor(args, logdir: str) -> Server:
    import psutil

    server = Server("floor", logdir)
    out_path = os.path.join(logdir, "floor.out")
    with open(out_path, "w") as out:
        server.process = subprocess.Popen(
            [sys.executable, str(HERE / "floor.py"), "--workers", str(args.workers), "--concurrency", str(args.concurrency),
             "--signature", SIGNATURE], stdout=out, stderr=server.logfile, cwd=ROOT)
    give_up = time.monotonic() + 120
    while True:
        text = pathlib.Path(out_path).read_text()
        if text.strip():
            info = json.loads(text.splitlines()[0])
            break
        if server.process.poll() is not None or time.monotonic() > give_up:
            raise RuntimeError(f"the floor did not start; see {server.logfile.name}")
        time.sleep(0.1)
    server.port = info["port"]
    server.front = psutil.Process(info["pid"])
    server.workers = [psutil.Process(pid) for pid in info["workers"]]
    return server


def start_pool(name: str, args, logdir: str, tree: pathlib.Path | None) -> Server:
    server = Server(name, logdir)
    server.port = free_port()
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    command = [sys.executable, "-m", "dspy_pool.cli", "serve", "--lm", "dummy", "--workers", str(args.workers),
               "--fixed-workers", str(args.workers), "--worker-concurrency", str(args.concurrency), "--state", "memory",
               "--optimizer-workers", "0", "--listen", f"127.0.0.1:{server.port}", *args.pool_arg]
    server.process = subprocess.Popen(command, stdout=server.logfile, stderr=subprocess.STDOUT, env=env,
                                      cwd=tree if tree is not None else ROOT)
    return server


def wait_listening(server: Server, timeout_s: float = 120.0) -> None:
    """Until the server's port takes connections; fails at once if its process exits (see its log)."""
    give_up = time.monotonic() + timeout_s
    while True:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", server.port)) == 0:
                return
        if server.process.poll() is not None or time.monotonic() > give_up:
            server.logfile.flush()
            tail = pathlib.Path(server.logfile.name).read_text()[-2000:]
            raise RuntimeError(f"{server.name} did not start (exit code {server.process.poll()}); its log ends:\n{tail}")
        time.sleep(0.1)


def attach_pool(server: Server, load: LoadChild) -> None:
    import psutil

    wait_listening(server)
    load.ask(op="connect", name=server.name, target=f"127.0.0.1:{server.port}")
    load.ask(op="register", name=server.name)
    server.front = psutil.Process(server.process.pid)
    server.workers = [psutil.Process(pid) for pid in load.ask(op="workers", name=server.name)["pids"]]


# -- the run ------------------------------------------------------------------------------
def merged(slices: list[dict]) -> dict:
    """One server's slices of one phase in one repeat, as one measurement."""
    latencies = sorted(ms for s in slices for ms in s["latencies"])
    errors: collections.Counter = collections.Counter()
    for s in slices:
        errors.update(s["errors"])
    window = sum(s["window_calls"] for s in slices)
    total = max(1, sum(s["total_calls"] for s in slices))
    cpu = {part: sum(s["cpu"][part] for s in slices) / total * 1e6 for part in ("front", "workers", "client")}
    return {"calls_per_s": window / sum(s["seconds"] for s in slices), "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99), "cpu_us_per_call": cpu, "errors": dict(errors)}


def client_cpu(load: LoadChild) -> float:
    import psutil

    times = psutil.Process(load.process.pid).cpu_times()
    return times.user + times.system


def run_phase(servers: list[Server], load: LoadChild, in_flight: int, args, repeat: int, phase: str) -> dict[str, dict]:
    order = servers[repeat % len(servers):] + servers[:repeat % len(servers)]
    slices = max(1, round(args.seconds / args.slice_s))
    taken: dict[str, list[dict]] = {s.name: [] for s in servers}
    for number in range(slices):
        for server in order:
            front, workers = server.cpu()
            client = client_cpu(load)
            figures = load.ask(op="drive", name=server.name, in_flight=in_flight, seconds=args.seconds / slices,
                               tag=f"{phase}.{repeat}.{number}")
            front_after, workers_after = server.cpu()
            figures["cpu"] = {"front": front_after - front, "workers": workers_after - workers,
                              "client": client_cpu(load) - client}
            taken[server.name].append(figures)
    return {name: merged(slices_taken) for name, slices_taken in taken.items()}


def judged(name: str, value: float | None) -> dict:
    direction, target = TARGETS[name]
    met = None if value is None else (value >= target if direction == ">=" else value <= target)
    return {"value": None if value is None else round(value, 3), "target": f"{direction} {target}", "met": met}


def comparisons(runs: dict[str, dict[str, list[dict]]], name: str, high: str) -> dict:
    """`name` against the floor, per repeat (same slices), medians with the targets beside them."""
    mine, floor = runs[name], runs["floor"]

    def per_repeat(phase: str, pick) -> list[float]:
        return [pick(a) / pick(b) for a, b in zip(mine[phase], floor[phase]) if pick(b)]

    calls = per_repeat(high, lambda r: r["calls_per_s"])
    front = per_repeat(high, lambda r: r["cpu_us_per_call"]["front"])
    workers = per_repeat(high, lambda r: r["cpu_us_per_call"]["workers"])
    p50_delta = [a["p50_ms"] - b["p50_ms"] for a, b in zip(mine["single"], floor["single"])
                 if a["p50_ms"] is not None and b["p50_ms"] is not None]
    out = {}
    for key, values in (("calls_per_s", calls), ("front_cpu_per_call", front), ("worker_cpu_per_call", workers),
                        ("p50_1_in_flight_over_floor_ms", p50_delta)):
        out[key] = {**judged(key, statistics.median(values) if values else None), "per_repeat": spread(values)}
    return out


def summary(phase_runs: list[dict]) -> dict:
    errors: collections.Counter = collections.Counter()
    for r in phase_runs:
        errors.update(r["errors"])
    return {
        "calls_per_s": spread([r["calls_per_s"] for r in phase_runs], 1),
        "p50_ms": spread([r["p50_ms"] for r in phase_runs], 3),
        "p99_ms": spread([r["p99_ms"] for r in phase_runs], 3),
        "cpu_us_per_call": {part: spread([r["cpu_us_per_call"][part] for r in phase_runs], 0)
                            for part in ("front", "workers", "client")},
        "errors": dict(errors),
    }


def run(args) -> dict:
    import psutil

    logdir = tempfile.mkdtemp(prefix="dspy-pool-bench-overhead-")
    log(f"server logs in {logdir}")
    servers: list[Server] = []
    load: LoadChild | None = None
    high = f"in_flight_{args.in_flight}"
    runs: dict[str, dict[str, list[dict]]] = {}
    try:
        servers.append(start_floor(args, logdir))
        pools = [start_pool("dspy_pool", args, logdir, None)]
        if args.baseline_tree:
            pools.append(start_pool("dspy_pool_before", args, logdir, pathlib.Path(args.baseline_tree).resolve()))
        load = LoadChild(__file__, ROOT)
        load.ask(op="connect", name="floor", target=f"127.0.0.1:{servers[0].port}", health=False)
        for pool in pools:
            attach_pool(pool, load)
            servers.append(pool)
            log(f"{pool.name}: serving on {pool.port}, front {pool.front.pid}, workers {[w.pid for w in pool.workers]}")
        log(f"floor: serving on {servers[0].port}, front {servers[0].front.pid}, workers {[w.pid for w in servers[0].workers]}")
        for server in servers:  # warm-up: connections, program builds, DSPy's first calls
            load.ask(op="drive", name=server.name, in_flight=args.in_flight, seconds=args.warmup_s, tag="warm")
        runs = {s.name: {high: [], "single": []} for s in servers}
        for repeat in range(args.repeats):
            for phase, in_flight in ((high, args.in_flight), ("single", 1)):
                for name, figures in run_phase(servers, load, in_flight, args, repeat, phase).items():
                    runs[name][phase].append(figures)
                    cpu = figures["cpu_us_per_call"]
                    log(f"repeat {repeat} {phase:12} {name:16} {figures['calls_per_s']:7.1f} calls/s p50 {figures['p50_ms']:.2f} ms "
                        f"p99 {figures['p99_ms']:.2f} ms cpu/call front {cpu['front']:.0f} us workers {cpu['workers']:.0f} us "
                        f"client {cpu['client']:.0f} us errors {figures['errors']}")
        for server in servers:  # the same processes throughout: no worker was replaced
            if any(not w.is_running() for w in server.workers):
                raise RuntimeError(f"{server.name}: a worker died during the run; see {server.logfile.name}")
    finally:
        if load is not None:
            load.close()
        for server in servers:
            server.stop()
    result = {
        "bench": "overhead", "lm": "dummy", "workers": args.workers, "worker_concurrency": args.concurrency,
        "in_flight": args.in_flight, "seconds": args.seconds, "slice_s": args.slice_s, "repeats": args.repeats,
        "warmup_s": args.warmup_s, "cpus": psutil.cpu_count(), "baseline_tree": args.baseline_tree,
        "servers": {name: {phase: summary(phase_runs) for phase, phase_runs in by_phase.items()} for name, by_phase in runs.items()},
        "vs_floor": {name: comparisons(runs, name, high) for name in runs if name != "floor"},
    }
    result["targets_met"] = {name: all(figure["met"] is True for figure in figures.values())
                             for name, figures in result["vs_floor"].items()}
    result["setup"] = {
        "floor": f"bench/floor.py --workers {args.workers} --concurrency {args.concurrency}: grpc.aio front and forked workers "
                 "(uvloop), dspy.Predict on simlm.engine.make_dummy_lm, DSPy cache off, track_usage on, acall",
        "dspy_pool": f"dspy-pool serve --lm dummy --workers {args.workers} --fixed-workers {args.workers} --state memory "
                     f"--optimizer-workers 0 {' '.join(args.pool_arg)}".strip(),
        "cpu_us_per_call": "psutil cpu_times per call completed: front = the front process (all its threads), workers = the "
                           "worker processes (zygote left out), client = the load generator (its own process)",
    }
    if "dspy_pool_before" in runs:  # after / before, per repeat
        after, before = runs["dspy_pool"], runs["dspy_pool_before"]
        result["after_vs_before"] = {
            "calls_per_s": spread([a["calls_per_s"] / b["calls_per_s"] for a, b in zip(after[high], before[high])]),
            "front_cpu_per_call": spread([a["cpu_us_per_call"]["front"] / b["cpu_us_per_call"]["front"] for a, b in zip(after[high], before[high])]),
            "worker_cpu_per_call": spread([a["cpu_us_per_call"]["workers"] / b["cpu_us_per_call"]["workers"] for a, b in zip(after[high], before[high])]),
            "p50_1_in_flight_delta_ms": spread([a["p50_ms"] - b["p50_ms"] for a, b in zip(after["single"], before["single"])]),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of load per server, phase and repeat")
    # 5, not 3: on a shared 2-core machine one repeat's front CPU ratio swings by +-10 %, and the median of 3
    # moved by ~0.05 between runs of the same code.
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slice-s", type=float, default=1.0, help="the servers alternate every this many seconds within a phase")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="worker processes, the same for dspy-pool and the floor")
    parser.add_argument("--concurrency", type=int, default=64, help="calls one worker runs at once, both servers")
    parser.add_argument("--baseline-tree", help="another copy of this repository (say, before a change), run as dspy_pool_before")
    parser.add_argument("--pool-arg", action="append", default=[], help="one more `dspy-pool serve` flag, as --pool-arg=--flag=value")
    parser.add_argument("--load-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_child:
        sys.path.insert(0, str(ROOT))
        try:
            import uvloop

            uvloop.run(_load_child())
        except ImportError:
            asyncio.run(_load_child())
        return
    if args.repeats < 1 or args.in_flight < 1 or args.seconds <= 0 or args.slice_s <= 0 or args.workers < 1:
        parser.error("--repeats, --in-flight and --workers must be >= 1, --seconds and --slice-s > 0")
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
