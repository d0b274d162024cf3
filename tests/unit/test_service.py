"""The servicer's per-call helpers (the servicer itself is tested end to end in tests/integration/test_server.py)."""

from __future__ import annotations

import re

from dspy_pool.server.service import _RequestIds


def test_request_ids_are_32_hex_digits_and_distinct_across_buffers():
    """Ids drawn past several urandom buffers are all 128-bit hex strings, and none repeats."""
    ids = _RequestIds()
    drawn = [ids.next() for _ in range(1000)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in drawn)
    assert len(set(drawn)) == len(drawn)
