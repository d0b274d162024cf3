"""One front process against N (--front-processes N), in one run: throughput, latency, CPU per call.

    python bench/fronts.py [--fronts 2] [--workers 2] [--seconds 4] [--repeats 3] [--in-flight 1,8,64]
                           [--connections 16] [--lm-arg=--lm=dummy ...]

Two servers, both alive for the whole run, each its own process tree on its own port:
- fronts_1: `dspy-pool serve --lm dummy --fixed-workers W --state sqlite` (one front);
- fronts_N: the same with `--front-processes N` (each front runs W/N workers, rounded up).

The load generator is its own process (this file with --load-child) and spreads its calls over
--connections gRPC connections (each its own subchannel), as many clients would: SO_REUSEPORT
spreads connections, not calls, over the fronts. Per phase (calls in flight) the servers take turns
of --seconds each, the order rotated each repeat, so the machine's drift hits both alike. CPU per
call is the whole tree's (supervisor, fronts, zygotes, workers) over the calls it completed.

What to expect: on a machine with spare cores, N fronts raise the ceiling a single front's core
sets (grpc and Python on one core); on this 2-core machine the point is that N=2 costs nothing at
low load. stdout carries one JSON object; the log goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from load_child import LoadChild, free_port  # bench/ is sys.path[0] when run as a script

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PROGRAM = "bench"


def log(message: str) -> None:
    print(f"bench/fronts: {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# -- the load generator (its own process) ----------------------------------------------------
async def _load_child() -> None:
    """Commands as JSON lines on stdin, one JSON line back per command on stdout."""
    import grpc

    from dspy_pool.v1 import dspy_pool_pb2 as pb
    from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    stubs: dict[str, list] = {}
    channels: list = []

    async def connect(name: str, port: int, connections: int) -> dict:
        stubs[name] = []
        for _ in range(connections):
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
            channels.append(channel)
            await asyncio.wait_for(channel.channel_ready(), 60)
            stubs[name].append(pb_grpc.DSPyPoolStub(channel))
        await stubs[name][0].RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name=PROGRAM, signature="question -> answer")),
                                             timeout=60)
        status = await stubs[name][0].GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)
        return {"fronts": [f.pid for f in status.fronts], "workers": [w.pid for w in status.workers]}

    async def drive(name: str, in_flight: int, seconds: float) -> dict:
        from closed_loop import window_loop

        return await window_loop(stubs[name], in_flight, seconds, program=PROGRAM)

    while True:
        line = await reader.readline()
        if not line:
            return
        command = json.loads(line)
        try:
            if command["op"] == "connect":
                answer = {"ok": True, **await connect(command["name"], command["port"], command["connections"])}
            elif command["op"] == "drive":
                answer = {"ok": True, **await drive(command["name"], command["in_flight"], command["seconds"])}
            else:
                for channel in channels:
                    await channel.close()
                print(json.dumps({"ok": True}), flush=True)
                return
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which stops
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


# -- servers --------------------------------------------------------------------------------
class Server:
    def __init__(self, name: str, fronts: int, args, workdir: str) -> None:
        self.name = name
        self.fronts = fronts
        self.port = free_port()
        self.logfile = open(os.path.join(workdir, f"{name}.log"), "w+")
        command = [sys.executable, "-m", "dspy_pool.cli", "serve", "--fixed-workers", str(args.workers), "--workers", str(args.workers),
                   "--front-processes", str(fronts), "--state-dir", os.path.join(workdir, name), "--optimizer-workers", "0",
                   "--listen", f"127.0.0.1:{self.port}", *args.lm_arg]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.logfile, cwd=ROOT, start_new_session=True)

    def wait_listening(self, timeout_s: float = 120.0) -> None:
        """Until the log says every front serves (a group's supervisor says so once, after all of them)."""
        ready = b"fronts_serving" if self.fronts > 1 else b"server_serving"
        give_up = time.monotonic() + timeout_s
        while ready not in pathlib.Path(self.logfile.name).read_bytes():
            if self.process.poll() is not None or time.monotonic() > give_up:
                raise RuntimeError(f"{self.name} did not start; its log ends:\n{pathlib.Path(self.logfile.name).read_text()[-2000:]}")
            time.sleep(0.2)

    def cpu_s(self) -> float:
        """CPU seconds of the whole tree: the supervisor or lone front, every front, zygote and worker."""
        import psutil

        total = 0.0
        try:
            root = psutil.Process(self.process.pid)
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = process.cpu_times()
                    total += times.user + times.system
        except psutil.Error:
            pass
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
        self.logfile.close()


# -- the run -----------------------------------------------------------------------------------
def measure(server: Server, load: LoadChild, in_flight: int, seconds: float) -> dict:
    before = server.cpu_s()
    result = load.ask(op="drive", name=server.name, in_flight=in_flight, seconds=seconds)
    cpu = server.cpu_s() - before
    latencies = sorted(result["latencies"])
    return {
        "calls_per_s": result["window_calls"] / seconds,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "cpu_us_per_call": cpu / max(1, result["total_calls"]) * 1e6,
        "errors": result["errors"],
    }


def median_of(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run[key] is not None]
    return round(statistics.median(values), 3) if values else None


def run(args) -> dict:
    phases = [int(part) for part in args.in_flight.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-fronts-") as workdir:
        servers = [Server("fronts_1", 1, args, workdir), Server(f"fronts_{args.fronts}", args.fronts, args, workdir)]
        load = LoadChild(__file__, ROOT)
        try:
            pids = {}
            for server in servers:
                server.wait_listening()
                pids[server.name] = load.ask(op="connect", name=server.name, port=server.port, connections=args.connections)
                log(f"{server.name} on port {server.port}: fronts {pids[server.name]['fronts'] or 'one'}, workers {pids[server.name]['workers']}")
            results: dict[int, dict[str, list[dict]]] = {p: {s.name: [] for s in servers} for p in phases}
            for repeat in range(args.repeats):
                order = servers if repeat % 2 == 0 else servers[::-1]
                for in_flight in phases:
                    for server in order:
                        load.ask(op="drive", name=server.name, in_flight=in_flight, seconds=0.5)  # warm this phase
                        results[in_flight][server.name].append(measure(server, load, in_flight, args.seconds))
                log(f"repeat {repeat + 1}/{args.repeats} done")
        finally:
            load.close()
            for server in servers:
                server.stop()
    return summarize(results, [s.name for s in servers], args)


def summarize(results: dict[int, dict[str, list[dict]]], names: list[str], args) -> dict:
    one, many = names
    report: dict = {"machine_cores": os.cpu_count(), "workers": args.workers, "fronts": args.fronts, "connections": args.connections,
                    "seconds": args.seconds, "repeats": args.repeats, "phases": {}}
    for in_flight, per_server in results.items():
        phase: dict = {}
        for name in names:
            runs = per_server[name]
            phase[name] = {key: median_of(runs, key) for key in ("calls_per_s", "p50_ms", "p99_ms", "cpu_us_per_call")}
            phase[name]["errors"] = sum(sum(run["errors"].values()) for run in runs)
        ratios = [m["calls_per_s"] / o["calls_per_s"] for o, m in zip(per_server[one], per_server[many]) if o["calls_per_s"]]
        cpu = [m["cpu_us_per_call"] / o["cpu_us_per_call"] for o, m in zip(per_server[one], per_server[many]) if o["cpu_us_per_call"]]
        p50 = [m["p50_ms"] - o["p50_ms"] for o, m in zip(per_server[one], per_server[many]) if o["p50_ms"] and m["p50_ms"]]
        phase["many_over_one"] = {
            "calls_per_s": round(statistics.median(ratios), 3) if ratios else None,
            "cpu_per_call": round(statistics.median(cpu), 3) if cpu else None,
            "p50_delta_ms": round(statistics.median(p50), 3) if p50 else None,
        }
        report["phases"][str(in_flight)] = phase
    return report


def main() -> None:
    if sys.argv[1:] == ["--load-child"]:
        asyncio.run(_load_child())
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fronts", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--in-flight", default="1,8,64")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--lm-arg", action="append", default=None, help="server flags for the LM (default: --lm dummy)")
    args = parser.parse_args()
    args.lm_arg = args.lm_arg or ["--lm", "dummy"]
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
