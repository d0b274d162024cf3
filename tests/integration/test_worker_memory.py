"""A worker keeps nothing of a call once it is answered: DSPy's process-wide trace list held every predictor
call's module, signature class, inputs and outputs for the next 10,000 calls, so programs evicted from the build
cache (and callers' data) stayed in memory. Run in a fresh process: the worker's own request path, the in-process
dummy LM, distinct programs past a small build cache."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.timeout(120)

_SCRIPT = textwrap.dedent('''
    import asyncio, gc, json
    import dspy
    from google.protobuf import struct_pb2
    from dspy_pool import kinds
    from dspy_pool.internal import worker_pb2 as wire
    from dspy_pool.pool import lms
    from dspy_pool.pool.protocol import FrameType
    from dspy_pool.pool.worker import Worker
    from dspy_pool.v1 import dspy_pool_pb2 as pb

    class Sent:
        replies = errors = 0
        def send(self, frame_type, request_id, payload=b""):
            if frame_type is FrameType.REPLY:
                Sent.replies += 1
            else:
                Sent.errors += 1

    def live_signatures():
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, type) and issubclass(o, dspy.Signature))

    kinds.load_builtins()
    config = wire.ZygoteConfig(lm="dummy", worker_concurrency=4, program_cache_entries=16)
    worker = Worker(0, config)
    worker.channel = Sent()

    async def main():
        worker.lm = lms.configure(config)
        before = live_signatures()
        for n in range(CYCLES):
            spec = pb.ProgramSpec(name=f"p{n}", signature=f"question{n}, context -> answer")
            inputs = struct_pb2.Struct()
            inputs.update({f"question{n}": "x", "context": "y" * 4096})
            request = wire.WorkRequest(program_key=f"p{n}#1", spec=spec.SerializeToString(), inputs=inputs, timeout_s=30,
                                       request_id=f"r{n}")
            await worker._run_request(n, request.SerializeToString())
        after = live_signatures()
        worker.threads.shutdown(wait=True)
        worker.builder.shutdown(wait=True)
        print(json.dumps({"replies": Sent.replies, "errors": Sent.errors, "trace": len(dspy.settings.trace),
                          "cached": len(worker.programs), "added_signatures": after - before}))

    asyncio.run(main())
''')


def test_calls_leave_no_trace_and_evicted_programs_are_freed():
    """After 200 calls on distinct programs with a build cache of 16, DSPy's global trace is empty and at most the
    cached programs' signature classes are still alive (before: 200 of them, and every call's inputs)."""
    done = subprocess.run([sys.executable, "-c", _SCRIPT.replace("CYCLES", "200")], capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["replies"] == 200 and figures["errors"] == 0, figures
    assert figures["trace"] == 0, figures
    assert figures["cached"] == 16 and figures["added_signatures"] <= 16 * 2, figures
