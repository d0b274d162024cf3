"""The dispatcher's deadlines (dspy_pool/pool/dispatcher.py): one heap and one timer, not a timer per call."""

from __future__ import annotations

import asyncio

import pytest

from dspy_pool import errors
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.dispatcher import Dispatcher, Job
from dspy_pool.pool.handle import WorkerHandle, WorkerState


class _Transport:
    """Keeps what the handle writes; nothing reaches a process."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:
        pass


def _dispatcher(concurrency: int = 1) -> tuple[Dispatcher, WorkerHandle]:
    dispatcher = Dispatcher(max_queue=10, worker_concurrency=concurrency)
    handle = WorkerHandle(1, max_frame_bytes=1 << 20, cancel_grace_s=60.0, on_dead=lambda h, reason: None,
                          on_slot_free=dispatcher.pump)
    handle.connection_made(_Transport())
    handle.state = WorkerState.READY
    handle.loaded_programs.add("p")
    dispatcher.add_worker(handle)
    return dispatcher, handle


def _job(seconds: float) -> Job:
    return Job("p", b"", wire.WorkRequest(program_key="p"), asyncio.get_running_loop().time() + seconds)


async def test_running_and_queued_calls_expire_at_their_own_deadlines_in_order():
    """Deadlines submitted out of order still expire earliest first, each with its phase."""
    dispatcher, _ = _dispatcher(concurrency=1)
    running = asyncio.ensure_future(dispatcher.run(_job(0.3)))
    late = asyncio.ensure_future(dispatcher.run(_job(0.6)))  # queued behind the running one
    early = asyncio.ensure_future(dispatcher.run(_job(0.1)))  # queued, but due first
    with pytest.raises(errors.DeadlineExceeded) as caught:
        await asyncio.wait_for(early, 5)
    assert caught.value.metadata["phase"] == "queued" and not running.done() and not late.done()
    with pytest.raises(errors.DeadlineExceeded) as caught:
        await asyncio.wait_for(running, 5)
    assert caught.value.metadata["phase"] == "running" and not late.done()
    with pytest.raises(errors.DeadlineExceeded):
        await asyncio.wait_for(late, 5)
    assert dispatcher.expired_in_queue == 2


async def test_finished_calls_do_not_stay_in_the_deadline_heap():
    """Calls answered long before their deadline leave the heap, so it stays near the calls in flight."""
    dispatcher, handle = _dispatcher(concurrency=4)
    for _ in range(300):
        job = _job(30.0)
        task = asyncio.ensure_future(dispatcher.run(job))
        await asyncio.sleep(0)
        handle.in_flight.pop(job.request_id).complete(handle, wire.WorkReply(), None)
        reply, answered_by = await task
        assert answered_by is handle
    assert len(dispatcher._deadlines) <= 64 and dispatcher._timed == 0


async def test_a_deadline_already_past_never_ran_and_says_so():
    """A call whose deadline passed before it was queued did not run: phase queued, may_have_run false, and it says
    nothing about the LM (the clients may send it again; the breaker does not count it)."""
    dispatcher, handle = _dispatcher()
    with pytest.raises(errors.DeadlineExceeded) as caught:
        await dispatcher.run(_job(-0.001))
    assert caught.value.metadata["phase"] == errors.PHASE_QUEUED
    assert not caught.value.may_have_run and caught.value.queued_only
    assert not handle.in_flight


async def test_a_reply_that_cannot_be_decoded_fails_its_call_at_once():
    """The worker is killed for a protocol error, and the call whose reply it was fails WORKER_CRASHED now, with the
    worker's other calls (it used to be forgotten and wait out its whole deadline as DEADLINE_EXCEEDED)."""
    from dspy_pool.pool.protocol import FrameType, encode

    dispatcher, handle = _dispatcher(concurrency=2)
    garbled, other = asyncio.ensure_future(dispatcher.run(_job(30))), asyncio.ensure_future(dispatcher.run(_job(30)))
    await asyncio.sleep(0)
    request_id = min(handle.in_flight)
    handle.data_received(encode(FrameType.REPLY, request_id, b"\xff\xff\xff\xff"))
    for call in (garbled, other):
        with pytest.raises(errors.WorkerCrashed, match="undecodable result"):
            await asyncio.wait_for(call, 1)
    assert handle.state.name == "STOPPED"
