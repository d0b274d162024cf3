"""Framing for the front <-> worker and front <-> zygote channels: bytes in, bytes out, no I/O.

A frame on the wire:

    +----------------+--------+----------------+-----------------+
    | length: u32 BE | type:u8| request id: u64| payload (bytes) |
    +----------------+--------+----------------+-----------------+

`length` counts everything after itself (1 + 8 + len(payload)). The payload is
a serialized message from dspy_pool/internal/worker.proto chosen by the type.
A frame longer than the agreed maximum, or an unknown type, is a protocol
error: the caller must poison the channel (kill the peer), never resync.
"""

from __future__ import annotations

import enum
import struct
from typing import NamedTuple

_HEADER = struct.Struct(">IBQ")
HEADER_BYTES = _HEADER.size  # 13
_LENGTH_BYTES = 4
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024


class FrameType(enum.IntEnum):
    # front <-> worker
    REQUEST = 1
    REPLY = 2
    ERROR = 3
    CANCEL = 4
    PING = 5
    PONG = 6
    # 7 was STATS: stats travel in PONG payloads
    HELLO = 8
    SHUTDOWN = 9
    # front <-> optimizer worker
    OPTIMIZE = 10  # front -> worker: OptimizeWork
    PROGRESS = 11  # worker -> front: OptimizeProgress
    OPTIMIZED = 12  # worker -> front: OptimizeReply (the job's result; errors come as ERROR)
    # front <-> zygote
    ZYGOTE_CONFIG = 20
    ZYGOTE_READY = 21
    SPAWN = 22
    SPAWNED = 23
    EXITED = 24
    ZYGOTE_ERROR = 25


_BY_CODE = {int(t): t for t in FrameType}  # a dict lookup per frame instead of an enum call


class ProtocolError(Exception):
    """The peer sent bytes that cannot be a frame; the channel is unusable."""


class Frame(NamedTuple):
    """One decoded frame (a named tuple: one is built per frame, and a tuple is the cheapest immutable value)."""

    type: FrameType
    request_id: int
    payload: bytes = b""


_new_frame = tuple.__new__  # Frame's own __new__ is a Python function; one is built per frame


def encode(frame_type: FrameType, request_id: int, payload: bytes = b"") -> bytes:
    """One frame as bytes, ready to write."""
    return _HEADER.pack(HEADER_BYTES - _LENGTH_BYTES + len(payload), frame_type, request_id) + payload


class FrameDecoder:
    """Incremental decoder: feed it whatever the socket gave, get whole frames back."""

    __slots__ = ("_buffer", "_max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self._buffer = bytearray()
        self._max_frame_bytes = max_frame_bytes

    def feed(self, data: bytes) -> list[Frame]:
        buffer = self._buffer
        # Nothing held over (the usual case: a read ends on a frame boundary): frames are cut straight
        # out of `data`, one copy per payload, and only an unfinished tail is kept.
        if buffer or type(data) is not bytes:
            buffer += data
            source = buffer
        else:
            source = data
        frames: list[Frame] = []
        size = len(source)
        offset = 0
        while size - offset >= HEADER_BYTES:
            length, type_code, request_id = _HEADER.unpack_from(source, offset)
            if length < HEADER_BYTES - _LENGTH_BYTES or length > self._max_frame_bytes:
                if source is data:
                    buffer += data  # held, as if buffered first (the channel is dead anyway)
                raise ProtocolError(f"frame length {length} out of bounds")
            frame_type = _BY_CODE.get(type_code)
            if frame_type is None:
                if source is data:
                    buffer += data
                raise ProtocolError(f"unknown frame type {type_code}")
            end = offset + _LENGTH_BYTES + length
            if size < end:
                break
            payload = source[offset + HEADER_BYTES : end]
            frames.append(_new_frame(Frame, (frame_type, request_id, payload if source is data else bytes(payload))))
            offset = end
        if source is data:
            if offset < size:
                buffer += memoryview(data)[offset:]
        elif offset:
            del buffer[:offset]
        return frames

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)
