"""Per program, per version and per arm: calls, errors, latency (p50/p95 over the last calls), feedback.

Recorded by the front on every Execute that reaches a program; read by
GetProgramStats and the optimization triggers. Two views of the counts:

- this process's own, since it started (`all()`, exported to Prometheus as
  counters, which are per process by convention);
- the shared ones (`view`, `feedback`): the sums in the state store,
  which every front and replica adds its counts to (server/stats_sync.py), plus
  this front's counts not yet added. They survive a restart: a version's figures
  in an A/B test are not lost at every deploy.

Latency windows are this process's only. Bounded: a window of recent latencies
per (program, version, arm), and a deleted version's figures go with it (forget).
"""

from __future__ import annotations

import collections
import math
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from dspy_pool.state import StatsCount
from dspy_pool.state.policy import add_counts, forgotten

_WINDOW = 1000
FEEDBACK_ARM = ""  # feedback is per version: kept under this arm
EXAMPLES_VERSION = 0  # examples added from feedback are per program: kept under this version (and FEEDBACK_ARM)

_Key = tuple[str, int, str]


@dataclass(slots=True)
class _Arm:
    calls: int = 0
    errors: int = 0
    latencies_ms: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_WINDOW))
    failures: collections.deque = field(default_factory=lambda: collections.deque(maxlen=_WINDOW))  # 1 for each failed


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


@dataclass(frozen=True, slots=True)
class Batch:
    id: str  # the store adds a batch id once
    counts: list[StatsCount]


def _summed(counts: Iterable[StatsCount]) -> dict[_Key, StatsCount]:
    out: dict[_Key, StatsCount] = {}
    for count in counts:
        key = (count.program, count.version, count.arm)
        out[key] = add_counts(out.get(key), count)
    return out


class ProgramStats:
    def __init__(self) -> None:
        self._arms: dict[_Key, _Arm] = {}  # this process's, since it started
        # The shared counts: the store's sums as last read, batches added since (not yet in a read), the batch being
        # added, and what this front counted since it took the last batch.
        self._stored: dict[_Key, StatsCount] = {}
        self._added: list[StatsCount] = []
        self._adding: list[StatsCount] = []
        self._adding_id = ""
        self._pending_calls: dict[_Key, list[int]] = {}  # [calls, errors]: the hot path adds to a list, not a record
        self._pending: dict[_Key, StatsCount] = {}  # feedback

    # -- recording (on every call) -------------------------------------------------------------------------------
    def record(self, program: str, version: int, arm: str, latency_ms: float, failed: bool) -> None:
        key = (program, version, arm)
        entry = self._arms.get(key)
        if entry is None:  # not setdefault: that would build an _Arm and its deque on every call
            entry = self._arms[key] = _Arm()
        entry.calls += 1
        entry.errors += failed
        entry.latencies_ms.append(latency_ms)
        entry.failures.append(int(failed))
        pending = self._pending_calls.get(key)
        if pending is None:
            pending = self._pending_calls[key] = [0, 0]
        pending[0] += 1
        pending[1] += failed

    def record_feedback(self, program: str, version: int, score: float | None, example_added: bool) -> None:
        if score is not None and math.isfinite(score):  # the edge refuses others; a NaN sum would poison every read
            self._count(StatsCount(program, version, FEEDBACK_ARM, feedback_count=1, feedback_sum=score))
        if example_added:
            self._count(StatsCount(program, EXAMPLES_VERSION, FEEDBACK_ARM, feedback_examples=1))

    def _count(self, count: StatsCount) -> None:
        key = (count.program, count.version, count.arm)
        self._pending[key] = add_counts(self._pending.get(key), count)

    # -- keeping in step with the store (server/stats_sync.py) ------------------------------------------------------
    def take_pending(self) -> Batch:
        """The batch to add to the store now (its counts are still counted meanwhile): the one whose outcome is not
        known yet, again under its id (the store adds an id once), or else the counts not yet added, under a new id."""
        if self._adding:
            return Batch(self._adding_id, self._adding)
        self._adding, self._adding_id = self._pending_counts(), uuid.uuid4().hex
        self._pending, self._pending_calls = {}, {}
        return Batch(self._adding_id, self._adding)

    def added(self, succeeded: bool) -> None:
        """The batch from take_pending is in the store; or its outcome is unknown (a timeout may come after the store
        had it), and take_pending offers it again."""
        if succeeded:
            self._added += self._adding
            self._adding = []

    def dropped(self) -> None:
        """The batch from take_pending was refused by the store for good: its counts are given up."""
        self._adding = []

    def stored(self, counts: list[StatsCount]) -> None:
        """The store's sums, read after every added batch was committed."""
        self._stored = _summed(counts)
        self._added = []

    def _pending_counts(self) -> list[StatsCount]:
        calls = [StatsCount(*key, calls=pending[0], errors=pending[1]) for key, pending in self._pending_calls.items()]
        return calls + list(self._pending.values())

    def _shared(self, with_stored: bool = True) -> dict[_Key, StatsCount]:
        parts: list[Iterable[StatsCount]] = [self._added, self._adding, self._pending_counts()]
        if with_stored:
            parts.insert(0, self._stored.values())
        return _summed(count for part in parts for count in part)

    # -- reading ---------------------------------------------------------------------------------------------------
    def view(self, program: str, with_stored: bool = True) -> list[ArmView]:
        """Each (version, arm) of the program: the shared counts (without the store's sums: only this front's not yet
        added ones, for a peer front that adds them to its own), and this process's latencies."""
        shared = self._shared(with_stored)
        keys = {key for key in shared if key[0] == program and key[2] != FEEDBACK_ARM}
        keys |= {key for key in self._arms if key[0] == program}
        out = []
        for key in sorted(keys):
            count = shared.get(key)
            entry = self._arms.get(key)
            latencies = list(entry.latencies_ms) if entry is not None else []
            out.append(ArmView(key[1], key[2], count.calls if count else 0, count.errors if count else 0,
                               _percentile(latencies, 0.5), _percentile(latencies, 0.95)))
        return out

    def feedback(self, program: str, version: int, with_stored: bool = True) -> tuple[int, float]:
        """(scores received, their mean) for one version."""
        return self.feedbacks(program, with_stored).get(version, (0, 0.0))

    def feedbacks(self, program: str, with_stored: bool = True) -> dict[int, tuple[int, float]]:
        """Per version of the program that received any: (scores received, their mean)."""
        return {version: (count.feedback_count, count.feedback_sum / count.feedback_count)
                for (name, version, arm), count in self._shared(with_stored).items()
                if name == program and arm == FEEDBACK_ARM and count.feedback_count}

    def examples(self, program: str) -> int:
        """Examples feedback added to the program's dataset, by every front and replica, across restarts."""
        count = self._shared().get((program, EXAMPLES_VERSION, FEEDBACK_ARM))
        return count.feedback_examples if count is not None else 0

    def recent(self, program: str, version: int) -> tuple[int, float]:
        """(calls, error rate) of one version over the last calls each arm served here (up to a window's worth): what
        it does now. The shared sums are its whole life: an outage long past would keep their rate up for good."""
        calls = errors = 0
        for (name, number, _), entry in self._arms.items():
            if name == program and number == version:
                calls += len(entry.failures)
                errors += sum(entry.failures)
        return calls, (errors / calls if calls else 0.0)

    def all(self) -> dict[tuple[str, int, str], ArmView]:
        """Every (program, version, arm) with this process's own figures (for Prometheus)."""
        out = {}
        for (program, version, arm), entry in sorted(self._arms.items()):
            latencies = list(entry.latencies_ms)
            out[(program, version, arm)] = ArmView(version, arm, entry.calls, entry.errors, _percentile(latencies, 0.5),
                                                   _percentile(latencies, 0.95))
        return out

    def forget(self, program: str, versions: Collection[int] | None = None) -> None:
        """Drop the figures of deleted versions (None: the whole program): they would be kept, exported, for ever."""
        chosen = None if versions is None else list(versions)

        self._arms = {key: entry for key, entry in self._arms.items() if not forgotten(key, program, chosen)}
        self._stored = {key: count for key, count in self._stored.items() if not forgotten(key, program, chosen)}
        self._pending = {key: count for key, count in self._pending.items() if not forgotten(key, program, chosen)}
        self._pending_calls = {key: pending for key, pending in self._pending_calls.items() if not forgotten(key, program, chosen)}
        self._added = [c for c in self._added if not forgotten((c.program, c.version, c.arm), program, chosen)]
        self._adding = [c for c in self._adding if not forgotten((c.program, c.version, c.arm), program, chosen)]
