"""Frame encoding and incremental decoding: bytes in, frames out, no I/O."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_pool.pool.protocol import (
    HEADER_BYTES,
    Frame,
    FrameDecoder,
    FrameType,
    ProtocolError,
    encode,
)

frames_strategy = st.lists(
    st.builds(
        Frame,
        st.sampled_from(list(FrameType)),
        st.integers(min_value=0, max_value=2**64 - 1),
        st.binary(max_size=64),
    ),
    max_size=8,
)


def test_round_trip_one_frame():
    """A frame encoded then fed whole comes back with the same type, id and payload."""
    data = encode(FrameType.REQUEST, 42, b"hello")
    assert FrameDecoder().feed(data) == [Frame(FrameType.REQUEST, 42, b"hello")]


def test_empty_payload_round_trips():
    """A frame with no payload decodes to an empty payload."""
    assert FrameDecoder().feed(encode(FrameType.PING, 7)) == [Frame(FrameType.PING, 7, b"")]


def test_header_is_thirteen_bytes():
    """The header is length u32 + type u8 + request id u64, and length excludes itself."""
    data = encode(FrameType.REPLY, 1, b"abc")
    assert len(data) == HEADER_BYTES + 3 == 16
    assert struct.unpack_from(">I", data)[0] == 1 + 8 + 3


def test_several_frames_in_one_feed():
    """Several frames in one chunk all come out, in order."""
    data = encode(FrameType.REQUEST, 1, b"a") + encode(FrameType.CANCEL, 2) + encode(FrameType.REPLY, 1, b"bb")
    assert FrameDecoder().feed(data) == [
        Frame(FrameType.REQUEST, 1, b"a"),
        Frame(FrameType.CANCEL, 2, b""),
        Frame(FrameType.REPLY, 1, b"bb"),
    ]


def test_partial_frame_waits_for_the_rest():
    """A frame cut in the middle yields nothing until its last byte arrives."""
    data = encode(FrameType.REPLY, 9, b"payload")
    decoder = FrameDecoder()
    assert decoder.feed(data[:5]) == []
    assert decoder.feed(data[5:-1]) == []
    assert decoder.feed(data[-1:]) == [Frame(FrameType.REPLY, 9, b"payload")]


@settings(max_examples=60, deadline=None)
@given(frames=frames_strategy, data=st.data())
def test_split_at_arbitrary_boundaries(frames, data):
    """However a stream of frames is cut into chunks, the same frames come out."""
    stream = b"".join(encode(f.type, f.request_id, f.payload) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[Frame] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        out.extend(decoder.feed(stream[start:cut]))
        start = cut
    assert out == frames
    assert decoder.pending_bytes == 0


def test_pending_bytes_counts_unconsumed_input():
    """pending_bytes is what is buffered towards the next frame, and drops to 0 once it completes."""
    data = encode(FrameType.REPLY, 3, b"xyz")
    decoder = FrameDecoder()
    decoder.feed(data[:10])
    assert decoder.pending_bytes == 10
    decoder.feed(data[10:] + data[:4])
    assert decoder.pending_bytes == 4


def test_frame_over_max_is_protocol_error():
    """A length above max_frame_bytes is rejected from the header alone, before the body arrives."""
    data = encode(FrameType.REQUEST, 1, b"x" * 100)
    with pytest.raises(ProtocolError, match="out of bounds"):
        FrameDecoder(max_frame_bytes=50).feed(data[:HEADER_BYTES])


def test_frame_at_max_is_accepted():
    """A frame whose length field equals max_frame_bytes is still accepted."""
    payload = b"x" * 41  # length field = 9 + 41 = 50
    assert FrameDecoder(max_frame_bytes=50).feed(encode(FrameType.REQUEST, 1, payload)) == [Frame(FrameType.REQUEST, 1, payload)]


def test_unknown_type_is_protocol_error():
    """A type code outside FrameType is rejected."""
    with pytest.raises(ProtocolError, match="unknown frame type 99"):
        FrameDecoder().feed(encode(99, 1, b""))  # type: ignore[arg-type]


def test_length_smaller_than_header_is_protocol_error():
    """A length that cannot even hold the type and request id is rejected."""
    data = struct.pack(">IBQ", 3, int(FrameType.PING), 1)
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(data)


def test_garbage_after_good_frame_raises():
    """A bad header after a good frame still raises rather than resyncing."""
    data = encode(FrameType.PONG, 1) + struct.pack(">IBQ", 9, 200, 1)
    with pytest.raises(ProtocolError):
        FrameDecoder().feed(data)
