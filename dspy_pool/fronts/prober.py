"""The fronts' health prober: `python -m dspy_pool.fronts.prober --socket-dir D --count N --interval-s S --supervisor-pid P`.

    supervisor ──exec──> prober ──every S: health Check (deadline S)──> unix:D/front-<i>.sock, i in 0..N-1
    supervisor <──stdout: one JSON line per front and round: {"index": i, "answered": true|false}

Why a process of its own: the supervisor starts fronts again (fork+exec) after
one dies, and a process that has created gRPC objects must never fork (gRPC's
core threads and locks do not survive it), so the supervisor holds no gRPC at
all. The prober is exec'd fresh, never forks, and dies with the supervisor.

The check is the standard gRPC health Check, served on the front's event loop,
so a stopped or deadlocked front does not answer it. Any reply counts as an
answer, NOT_SERVING included: the question is whether the front's loop runs,
not whether its workers are up. Each check opens a fresh channel, so a front
that was restarted is reached at once, not after a reconnect backoff.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dspy_pool.lifeline import die_with_parent
from dspy_pool.server.peers import FrontGroup

# The front did not answer in time, or could not be reached; any other outcome came from the front's loop.
_SILENT = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)


async def check(target: str, deadline_s: float) -> bool:
    """True when the front at `target` answered a health Check within `deadline_s`."""
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=deadline_s)
        except grpc.aio.AioRpcError as exc:
            return exc.code() not in _SILENT
    return True


async def probe(group: FrontGroup, interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        answers = await asyncio.gather(*(check(group.socket(index), interval_s) for index in range(group.count)))
        for index, answered in enumerate(answers):
            sys.stdout.write(json.dumps({"index": index, "answered": answered}) + "\n")
        sys.stdout.flush()  # BrokenPipeError once the supervisor is gone: the prober ends
        await asyncio.sleep(max(0.0, interval_s - (loop.time() - began)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dspy_pool.fronts.prober")
    parser.add_argument("--socket-dir", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--interval-s", type=float, required=True)
    parser.add_argument("--supervisor-pid", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent(args.supervisor_pid)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal: the group drains (stop_signals.py); we die with it
    try:
        asyncio.run(probe(FrontGroup(0, args.count, args.socket_dir), args.interval_s))
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
