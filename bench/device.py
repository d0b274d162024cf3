"""Issue 12's large-machine figures in one run, one JSON object on stdout (the log on stderr).

    python bench/device.py                       # scaled to a 2-core machine: about 2 minutes
    python bench/device.py --full                # a 16-core machine: about 9 minutes
    python bench/device.py --full --part sustained   # one part: sustained, sessions or fronts

Parts, each its own servers (real `dspy-pool serve` process trees on 127.0.0.1, `--lm dummy`):
- sustained: a front group (--front-processes F, W workers in all) under an open-loop load of
  --rate calls/s for --duration seconds from `bench/load.py` (P client processes; latency from each
  call's scheduled start, so falling behind shows). Figures: calls/s, p50/p99, status codes, and CPU
  per call of the fronts (supervisor and front processes) and of the zygotes and workers.
  --full: 5,000 calls/s for 300 s on 2 fronts and 8 workers.
- sessions: `bench/scenarios/sessions.py`: S concurrent conversations of 3 turns on SQLite, the
  histories checked on the server. --full: 10,000.
- fronts: `bench/fronts.py`: one front against N on the same workers. --full: N=4, 8 workers.

Targets the issue names: 5,000 calls/s sustained for 5 minutes with no errors, 10,000 concurrent
sessions with every turn kept; the p50/p99 and CPU per call are reported, not judged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

from fronts import Server  # bench/ is sys.path[0] when run as a script

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent

SCALED = {"rate": 300.0, "duration": 20.0, "fronts": 2, "workers": 2, "processes": 2, "sessions": 1000, "front_group": 2}
FULL = {"rate": 5000.0, "duration": 300.0, "fronts": 2, "workers": 8, "processes": 6, "sessions": 10000, "front_group": 4}


def log(message: str) -> None:
    print(f"bench/device: {message}", file=sys.stderr, flush=True)


def tree_cpu_s(root_pid: int) -> dict[str, float]:
    """CPU seconds of a server tree: fronts (the supervisor and its fronts) apart from zygotes and their workers."""
    import psutil

    split = {"fronts": 0.0, "workers": 0.0}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(root_pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                part = "workers" if "zygote" in " ".join(process.cmdline()) else "fronts"
                split[part] += times.user + times.system
    return split


def json_of(command: list[str], timeout_s: float) -> dict:
    """Run a bench script; its stdout's last JSON object (they print one)."""
    log(" ".join(command[1:]))
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout_s)
    text = done.stdout.strip()
    if done.returncode != 0 or not text:
        return {"failed": f"exit code {done.returncode}", "stdout_tail": text[-500:]}
    try:
        return json.loads(text)
    except json.JSONDecodeError:  # a script that logged to stdout before its JSON line
        return json.loads(text.splitlines()[-1])


def sustained(plan: dict) -> dict:
    settings = SimpleNamespace(workers=plan["workers"], lm_arg=["--lm", "dummy"])
    with tempfile.TemporaryDirectory(prefix="bench-device-") as workdir:
        server = Server("sustained", plan["fronts"], settings, workdir)
        try:
            server.wait_listening()
            before = tree_cpu_s(server.process.pid)
            report = json_of([sys.executable, str(HERE / "load.py"), "--target", f"127.0.0.1:{server.port}",
                              "--schedule", f"{plan['rate']:g}:{plan['duration']:g}", "--processes", str(plan["processes"]),
                              "--program", "bench", "--signature", "question -> answer", "--timeout", "10",
                              "--max-in-flight", str(int(plan["rate"]))],
                             timeout_s=plan["duration"] + 180)
            after = tree_cpu_s(server.process.pid)
        finally:
            server.stop()
    calls = max(1, int(report.get("ok", 0)))
    report["cpu_us_per_call"] = {part: round((after[part] - before[part]) / calls * 1e6, 1) for part in after}
    report["setup"] = (f"--front-processes {plan['fronts']} --workers {plan['workers']} --lm dummy; open loop "
                       f"{plan['rate']:g} calls/s for {plan['duration']:g} s from {plan['processes']} client processes")
    return report


def sessions(plan: dict) -> dict:
    return json_of([sys.executable, str(HERE / "scenarios" / "sessions.py"), "--sessions", str(plan["sessions"]),
                    "--turns", "3", "--workers", str(plan["workers"]), "--processes", str(plan["processes"]),
                    "--state", "sqlite"], timeout_s=600)


def fronts(plan: dict) -> dict:
    return json_of([sys.executable, str(HERE / "fronts.py"), "--fronts", str(plan["front_group"]), "--workers",
                    str(plan["workers"]), "--seconds", "4", "--repeats", "2", "--in-flight", "64,256",
                    "--connections", "32"], timeout_s=600)


PARTS = {"sustained": sustained, "sessions": sessions, "fronts": fronts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="the 16-core figures (about 9 minutes)")
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    for name, value in SCALED.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=None,
                            help=f"default {value} (--full: {FULL[name]})")
    args = parser.parse_args()
    plan = {name: getattr(args, name) if getattr(args, name) is not None else (FULL if args.full else SCALED)[name]
            for name in SCALED}
    out = {"bench": "device", "cpus": os.cpu_count(), "plan": plan, "parts": {}}
    for name, part in PARTS.items():
        if args.part in (name, "all"):
            started = time.monotonic()
            out["parts"][name] = part(plan)
            out["parts"][name]["wall_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
