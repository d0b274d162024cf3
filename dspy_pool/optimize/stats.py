"""Per program, per version and per arm: calls, errors, latency (p50/p95 over the last calls).

Recorded by the front on every Execute that reaches a program; read by
GetProgramStats. Bounded: a window of recent latencies per (program, version, arm).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

_WINDOW = 1000


@dataclass
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

    def record(self, program: str, version: int, arm: str, latency_ms: float, failed: bool) -> None:
        entry = self._arms.setdefault((program, version, arm), _Arm())
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
        return {key: view for name in {k[0] for k in self._arms} for view in self.view(name)
                for key in [(name, view.version, view.arm)]}
