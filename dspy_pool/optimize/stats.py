"""Per program, per version and per arm: calls, errors, latency (p50/p95 over the last calls).

Recorded by the front on every Execute that reaches a program; read by
GetProgramStats. Bounded: a window of recent latencies per (program, version, arm),
and a deleted version's figures go with it (forget).
"""

from __future__ import annotations

import collections
from collections.abc import Collection
from dataclasses import dataclass, field

_WINDOW = 1000


@dataclass(slots=True)
class _Arm:
    calls: int = 0
    errors: int = 0
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_WINDOW))


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass(frozen=True, slots=True)
class ArmView:
    version: int
    arm: str
    calls: int
    errors: int
    p50_ms: float
    p95_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.calls if self.calls else 0.0


class ProgramStats:
    def __init__(self) -> None:
        self._arms: dict[tuple[str, int, str], _Arm] = {}
        self._feedback: dict[tuple[str, int], list[float]] = {}  # (program, version) -> [count, score sum]
        self.feedback_examples: dict[str, int] = {}  # program -> examples feedback added (a counter)

    def record_feedback(self, program: str, version: int, score: float | None, example_added: bool) -> None:
        if score is not None:
            entry = self._feedback.setdefault((program, version), [0, 0.0])
            entry[0] += 1
            entry[1] += score
        if example_added:
            self.feedback_examples[program] = self.feedback_examples.get(program, 0) + 1

    def forget(self, program: str, versions: Collection[int] | None = None) -> None:
        """Drop the figures of deleted versions (None: the whole program): they would be kept, exported, for ever."""
        def gone(name: str, version: int) -> bool:
            return name == program and (versions is None or version in versions)

        self._arms = {key: entry for key, entry in self._arms.items() if not gone(key[0], key[1])}
        self._feedback = {key: entry for key, entry in self._feedback.items() if not gone(*key)}
        if versions is None:
            self.feedback_examples.pop(program, None)

    def feedback(self, program: str, version: int) -> tuple[int, float]:
        """(scores received, their mean) for one version."""
        count, total = self._feedback.get((program, version), (0, 0.0))
        return int(count), (total / count if count else 0.0)

    def totals(self, program: str, version: int) -> tuple[int, float]:
        """(calls, error rate) of one version over every arm it served."""
        calls = errors = 0
        for (name, number, _), entry in self._arms.items():
            if name == program and number == version:
                calls += entry.calls
                errors += entry.errors
        return calls, (errors / calls if calls else 0.0)

    def record(self, program: str, version: int, arm: str, latency_ms: float, failed: bool) -> None:
        key = (program, version, arm)
        entry = self._arms.get(key)
        if entry is None:  # not setdefault: that would build an _Arm and its deque on every call
            entry = self._arms[key] = _Arm()
        entry.calls += 1
        entry.errors += failed
        entry.latencies_ms.append(latency_ms)

    def view(self, program: str) -> list[ArmView]:
        out = []
        for (name, version, arm), entry in sorted(self._arms.items()):
            if name == program:
                latencies = list(entry.latencies_ms)
                out.append(ArmView(version, arm, entry.calls, entry.errors, _percentile(latencies, 0.5), _percentile(latencies, 0.95)))
        return out

    def all(self) -> dict[tuple[str, int, str], ArmView]:
        """Every (program, version, arm) with its figures (for Prometheus)."""
        out = {}
        for program in sorted({key[0] for key in self._arms}):
            for view in self.view(program):
                out[(program, view.version, view.arm)] = view
        return out
