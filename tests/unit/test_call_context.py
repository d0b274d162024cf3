"""Work a call sets off but does not own (the deadline timer, a cancel's grace timer, a respawn) logs without its request_id."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from dspy_pool import errors, logs
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.dispatcher import Dispatcher, Job
from dspy_pool.pool.handle import WorkerHandle, WorkerState

pytestmark = pytest.mark.timeout(10)


class _Transport:
    """Takes frames and never answers: the worker behind it is stopped."""

    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: bytes) -> None:
        pass

    def abort(self) -> None:
        self.closing = True


@pytest.mark.asyncio
async def test_a_kill_after_a_calls_deadline_does_not_log_as_that_call():
    """A call times out on a worker that never answers; the worker is killed for cancel_timeout after the grace.

    The kill is the worker's, not the call's: scheduled from the call's context (as it was), the
    worker_stopped line and everything the respawn logs carried the call's request_id.
    """
    stopped: list[str] = []
    dispatcher = Dispatcher(max_queue=10, worker_concurrency=4)
    handle = WorkerHandle(1, max_frame_bytes=1 << 20, cancel_grace_s=0.05,
                          on_dead=lambda _handle, reason: stopped.append(reason), on_slot_free=dispatcher.pump)
    handle.connection_made(_Transport())
    handle.state = WorkerState.READY
    dispatcher.add_worker(handle)
    loop = asyncio.get_running_loop()
    with capture_logs(processors=[logs.merge_call]) as lines:
        token = logs.bind_call("req-of-the-call", "qa")
        try:
            job = Job("qa#1", b"", wire.WorkRequest(program_key="qa#1"), loop.time() + 0.05)
            with pytest.raises(errors.PoolError) as caught:
                await dispatcher.run(job)
        finally:
            logs.reset_call(token)
        assert caught.value.kind is errors.ErrorKind.DEADLINE_EXCEEDED
        while not stopped:
            await asyncio.sleep(0.01)
    assert stopped == ["cancel_timeout"]
    worker_lines = [line for line in lines if line["event"] == "worker_stopped"]
    assert worker_lines and all("request_id" not in line for line in worker_lines)


def test_without_call_keeps_everything_but_the_call():
    import structlog

    structlog.contextvars.bind_contextvars(front=2)
    token = logs.bind_call("req-1", "qa")
    try:
        context = logs.without_call()
        assert context.run(lambda: logs.merge_call(None, None, {"event": "x"})) == {"event": "x"}
        assert context.run(structlog.contextvars.get_contextvars) == {"front": 2}
        assert logs.merge_call(None, None, {"event": "x"})["request_id"] == "req-1"  # the caller's own context keeps it
    finally:
        logs.reset_call(token)
        structlog.contextvars.clear_contextvars()
