"""Captured calls and their feedback: a sample of a program's calls kept in the front, turned into examples.

    Execute (program captures, sampled by its request id) ──> Captures.keep(request_id, program, version, inputs, outputs)
    RecordFeedback(request_id, score?, expected_outputs?) ──> the captured call
        expected outputs ──> an example (inputs, expected) ; a good score ──> an example (inputs, its own outputs)
        a score ──> the version's feedback statistics (and the triggers)

Bounded: at most `max_examples` calls per program (the oldest go first) and
`max_total` in all. Captures live in this front only: feedback must reach the
replica that served the call (the response names it in its worker ref... and
its request id); a capture lost to a restart makes RecordFeedback NOT_FOUND.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Captured:
    program: str
    version: int
    inputs: dict[str, Any]
    outputs: dict[str, Any]


def sampled(request_id: str, sample_rate: float) -> bool:
    """Whether a call is kept: a stable draw from its request id (a retried id draws the same)."""
    if sample_rate <= 0:
        return False
    if sample_rate >= 1:
        return True
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < sample_rate


class Captures:
    def __init__(self, max_total: int = 10_000) -> None:
        self.max_total = max_total
        self._calls: collections.OrderedDict[str, Captured] = collections.OrderedDict()
        self._per_program: dict[str, collections.deque] = {}

    def keep(self, request_id: str, captured: Captured, max_examples: int) -> None:
        ids = self._per_program.setdefault(captured.program, collections.deque())
        self._calls[request_id] = captured
        ids.append(request_id)
        while len(ids) > max(1, max_examples):
            self._calls.pop(ids.popleft(), None)
        while len(self._calls) > self.max_total:
            old_id, old = self._calls.popitem(last=False)
            program_ids = self._per_program.get(old.program)
            if program_ids and old_id in program_ids:
                program_ids.remove(old_id)

    def take(self, request_id: str) -> Captured | None:
        """The captured call, forgotten once used (one feedback per call)."""
        captured = self._calls.pop(request_id, None)
        if captured is not None:
            ids = self._per_program.get(captured.program)
            if ids and request_id in ids:
                ids.remove(request_id)
        return captured

    def __len__(self) -> int:
        return len(self._calls)
