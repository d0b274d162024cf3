"""Throughput of the simulated LM server: requests/s with fixed:0 latency.

Starts `python -m dspy_pool.simlm` as its own process, then drives it from
aiohttp clients (keep-alive, `--concurrency` connections in all, split over
`--procs` client processes) for `--duration` seconds per run. GET /health is
the baseline (HTTP framing only); POST /v1/chat/completions with a DSPy
ChatAdapter prompt is the figure of interest. Prints one JSON object.

    python bench/simlm.py [--concurrency 100] [--duration 3] [--runs 3] [--procs 1] [--no-uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

SYSTEM = (
    "Your input fields are:\n1. `question` (str):\nYour output fields are:\n1. `reasoning` (str): \n"
    "2. `answer` (int):\nAll interactions will be structured in the following way, with the appropriate "
    "values filled in.\n\n[[ ## question ## ]]\n{question}\n\n[[ ## reasoning ## ]]\n{reasoning}\n\n"
    "[[ ## answer ## ]]\n{answer}        # note: the value you produce must be a single int value\n\n"
    "[[ ## completed ## ]]\nIn adhering to this structure, your objective is: \n"
    "        Given the fields `question`, produce the fields `reasoning`, `answer`."
)
USER = (
    "[[ ## question ## ]]\nHow many legs do {n} spiders have?\n\nRespond with the corresponding output fields, "
    "starting with the field `[[ ## reasoning ## ]]`, then `[[ ## answer ## ]]` (must be formatted as a valid "
    "Python int), and then ending with the marker for `[[ ## completed ## ]]`."
)


async def _drive(port: int, path: str, concurrency: int, duration: float) -> int:
    import aiohttp

    url = f"http://127.0.0.1:{port}{path}"
    deadline = time.perf_counter() + duration
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(w: int) -> int:
            done = 0
            while time.perf_counter() < deadline:
                if path == "/health":
                    async with session.get(url) as resp:
                        await resp.read()
                else:
                    body = {"model": "sim", "messages": [
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": USER.format(n=w * 1_000_000 + done)},
                    ]}
                    async with session.post(url, json=body) as resp:
                        await resp.read()
                done += resp.status == 200
            return done

        return sum(await asyncio.gather(*(worker(w) for w in range(concurrency))))


def _client(args: tuple[int, str, int, float]) -> int:
    return asyncio.run(_drive(*args))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process (Linux /proc); 0 elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def measure(pid: int, port: int, path: str, concurrency: int, duration: float, procs: int) -> tuple[float, float]:
    """(requests/s completed with status 200, server CPU microseconds per request) over one run."""
    per = [concurrency // procs + (i < concurrency % procs) for i in range(procs)]
    cpu, start = cpu_seconds(pid), time.perf_counter()
    if procs == 1:
        total = _client((port, path, concurrency, duration))
    else:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            total = sum(pool.map(_client, [(port, path, c, duration) for c in per]))
    elapsed, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
    return total / elapsed, cpu / max(total, 1) * 1e6


def summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values)), "min": round(min(values)), "max": round(max(values))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "dspy_pool.simlm", "--listen", "127.0.0.1:0"] + (["--no-uvloop"] * args.no_uvloop)
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        health, chat = [], []
        for _ in range(args.runs):
            health.append(measure(server.pid, port, "/health", args.concurrency, args.duration, args.procs))
            chat.append(measure(server.pid, port, "/v1/chat/completions", args.concurrency, args.duration, args.procs))
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps({
        "bench": "simlm",
        "cpus": os.cpu_count(),
        "concurrency": args.concurrency,
        "client_procs": args.procs,
        "duration_s": args.duration,
        "runs": args.runs,
        "server_loop": "asyncio" if args.no_uvloop else "uvloop",
        "health_rps": summary([rps for rps, _ in health]),
        "chat_rps": summary([rps for rps, _ in chat]),
        "chat_vs_health": round(statistics.median(r for r, _ in chat) / statistics.median(r for r, _ in health), 3),
        # Server CPU per request bounds what one server process can carry (1e6 / us = rps per core),
        # whatever the client could drive.
        "health_server_cpu_us": summary([us for _, us in health]),
        "chat_server_cpu_us": summary([us for _, us in chat]),
    }))


if __name__ == "__main__":
    main()
