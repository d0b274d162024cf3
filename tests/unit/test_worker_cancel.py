"""A worker answers every request it was sent, even one cancelled before its task ever ran."""

from __future__ import annotations

import asyncio

import pytest

from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.protocol import Frame, FrameType
from dspy_pool.pool.worker import Worker


class _Sent:
    def __init__(self) -> None:
        self.frames: list[tuple[FrameType, int, bytes]] = []

    def send(self, frame_type: FrameType, request_id: int, payload: bytes = b"") -> None:
        self.frames.append((frame_type, request_id, payload))


@pytest.mark.asyncio
async def test_a_request_and_its_cancel_read_together_are_answered_cancelled():
    worker = Worker(1, wire.ZygoteConfig())
    worker.channel = sent = _Sent()  # what the worker's connection does for it
    request = wire.WorkRequest(program_key="never#built", request_id="r1", timeout_s=5.0)
    # One read brought both frames: the cancel lands before the request's task has run at all.
    worker.on_frame(Frame(FrameType.REQUEST, 7, request.SerializeToString()))
    worker.on_frame(Frame(FrameType.CANCEL, 7, b""))
    for _ in range(10):
        await asyncio.sleep(0)
    assert [(frame_type, request_id) for frame_type, request_id, _ in sent.frames] == [(FrameType.ERROR, 7)]
    assert wire.WorkError.FromString(sent.frames[0][2]).kind == "cancelled"
    assert worker.tasks == {}
