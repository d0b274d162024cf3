"""Captured calls and their feedback: a sample of a program's calls kept in the front, turned into examples.

    Execute (program captures, sampled by its request id) ──> Captures.keep(request_id, program, version, inputs, outputs)
    RecordFeedback(request_id, score?, expected_outputs?) ──> the captured call
        expected outputs ──> an example (inputs, expected) ; a good score ──> an example (inputs, its own outputs)
        a score ──> the version's feedback statistics (and the triggers)

Bounded: at most `max_examples` calls per program (the oldest go first),
`max_total` in all, and `max_bytes` of inputs and outputs in all (a call too
large to become an example is kept for its score only, without them). Captures live in this front only: feedback must reach the
replica that served the call (the response names it in its worker ref... and
its request id); a capture lost to a restart makes RecordFeedback NOT_FOUND.
"""

from __future__ import annotations

import collections
import hashlib
import math
from dataclasses import dataclass
from typing import Any

from dspy_pool.optimize.datasets import NAME_PATTERN, SPLITS


@dataclass(frozen=True, slots=True)
class Captured:
    program: str
    version: int
    inputs: dict[str, Any] | None  # None: kept for its score only (too large to become an example)
    outputs: dict[str, Any] | None
    size_bytes: int = 0  # what the inputs and outputs take (their encoded size)


def dataset_for(program: str, dataset: str) -> str:
    """The dataset a program's feedback examples go to: the capture's, or the program's own."""
    return dataset or f"{program}-feedback"


def check_capture(program: str, sample_rate: float, max_examples: int, dataset: str, split: str, good_score: float) -> None:
    """A program's capture policy, checked when it is registered (ValueError saying what is wrong): a policy that
    fails later would fail every RecordFeedback on the program, for a fault of its spec and not of the caller."""
    if not (math.isfinite(sample_rate) and 0 <= sample_rate <= 1):
        raise ValueError(f"capture.sample_rate must be within 0..1, not {sample_rate}")
    if max_examples < 0:
        raise ValueError(f"capture.max_examples must be >= 0 (0: the default), not {max_examples}")
    if not math.isfinite(good_score):
        raise ValueError(f"capture.good_score must be a finite number, not {good_score}")
    if split and split not in SPLITS:
        raise ValueError(f"capture.split must be one of {', '.join(SPLITS)} (empty: train), not {split!r}")
    name = dataset_for(program, dataset)
    if not NAME_PATTERN.fullmatch(name):
        given = "capture.dataset" if dataset else f"the default dataset name {name!r} (the program's name + '-feedback')"
        raise ValueError(f"{given} must match {NAME_PATTERN.pattern}" + ("" if dataset else "; name a dataset in capture.dataset"))


def sampled(request_id: str, sample_rate: float) -> bool:
    """Whether a call is kept: a stable draw from its request id (a retried id draws the same)."""
    if sample_rate <= 0:
        return False
    if sample_rate >= 1:
        return True
    digest = hashlib.sha256(request_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < sample_rate


class Captures:
    def __init__(self, max_total: int = 10_000, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_total = max_total
        self.max_bytes = max_bytes
        self.total_bytes = 0
        self._calls: collections.OrderedDict[str, Captured] = collections.OrderedDict()
        self._per_program: dict[str, collections.deque] = {}

    def keep(self, request_id: str, captured: Captured, max_examples: int) -> None:
        self._forget(request_id)  # the same request id again: the newer call
        ids = self._per_program.setdefault(captured.program, collections.deque())
        self._calls[request_id] = captured
        self.total_bytes += captured.size_bytes
        ids.append(request_id)
        while len(ids) > max(1, max_examples):
            self._forget(ids[0])
        while len(self._calls) > self.max_total or self.total_bytes > self.max_bytes:
            self._forget(next(iter(self._calls)))

    def peek(self, request_id: str) -> Captured | None:
        return self._calls.get(request_id)

    def take(self, request_id: str) -> Captured | None:
        """The captured call, forgotten once used (one feedback per call)."""
        return self._forget(request_id)

    def _forget(self, request_id: str) -> Captured | None:
        captured = self._calls.pop(request_id, None)
        if captured is not None:
            self.total_bytes -= captured.size_bytes
            ids = self._per_program.get(captured.program)
            if ids and request_id in ids:
                ids.remove(request_id)
            if not ids:  # a queue per program that ever captured a call grew with every program registered
                self._per_program.pop(captured.program, None)
        return captured

    def __len__(self) -> int:
        return len(self._calls)
