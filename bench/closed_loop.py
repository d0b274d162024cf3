"""A closed-loop load for the bench scripts: N clients calling one program back to back.

Shared by bench/autoscale.py and bench/profiles.py (both run from bench/, so
`import closed_loop` finds this file).
"""

from __future__ import annotations

import asyncio
import collections
import time

import grpc

from load_stats import percentile

from dspy_pool.v1 import dspy_pool_pb2 as pb


async def closed_loop(stub, in_flight: int, seconds: float, *, program: str = "bench",
                      error_pause_s: float = 0.0) -> tuple[list[float], list[float], collections.Counter]:
    """`in_flight` clients calling `program` (input `question`) for `seconds`.

    Returns the sorted latencies and queue waits (ms) of the calls that
    succeeded, and the failed ones by status code. `error_pause_s` keeps a
    client from spinning on calls refused at once (a full queue).
    """
    latencies: list[float] = []
    queue_waits: list[float] = []
    codes: collections.Counter = collections.Counter()
    stop_at = time.monotonic() + seconds

    async def client(number: int) -> None:
        call = 0
        while time.monotonic() < stop_at:
            request = pb.ExecuteRequest(program=program)
            request.inputs.update({"question": f"c{number} q{call}"})
            call += 1
            started = time.monotonic()
            try:
                response = await stub.Execute(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
                if error_pause_s:
                    await asyncio.sleep(error_pause_s)
                continue
            latencies.append((time.monotonic() - started) * 1000)
            queue_waits.append(response.timings.queue_wait_ms)

    await asyncio.gather(*(client(n) for n in range(in_flight)))
    return sorted(latencies), sorted(queue_waits), codes


def percentile_ms(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) rounded to 0.1 ms; None when nothing was measured."""
    return round(percentile(sorted_values, q), 1) if sorted_values else None


async def window_loop(stubs: list, in_flight: int, seconds: float, *, program: str = "bench", tag: str = "",
                      session_of=None) -> dict:
    """`in_flight` clients calling `program` back to back for `seconds`, client n on stubs[n % len(stubs)]
    (and, with `session_of`, in session session_of(n)).

    Only calls that ended inside the window count as latencies (every client starts at once, so the
    drain after the window weighs on nothing); `total_calls` counts every success, for CPU per call.
    A refused call pauses its client 10 ms, so a full queue is not spun on.
    """
    latencies: list[float] = []
    codes: collections.Counter = collections.Counter()
    total = 0
    stop_at = time.monotonic() + seconds

    async def client(number: int) -> None:
        nonlocal total
        stub, call = stubs[number % len(stubs)], 0
        session_id = session_of(number) if session_of else ""
        while time.monotonic() < stop_at:
            request = pb.ExecuteRequest(program=program, session_id=session_id)
            request.inputs.update({"question": f"{tag} c{number} q{call}"})
            call += 1
            sent = time.monotonic()
            try:
                await stub.Execute(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
                await asyncio.sleep(0.01)
                continue
            ended = time.monotonic()
            total += 1
            if ended <= stop_at:
                latencies.append(round((ended - sent) * 1000, 4))

    await asyncio.gather(*(client(n) for n in range(in_flight)))
    return {"window_calls": len(latencies), "total_calls": total, "latencies": latencies, "errors": dict(codes)}
