"""What an optimizer worker is asked to do and what it answers: plain values, no DSPy.

The front builds an `OptimizeTask` from a job and the state store; the optimizer
worker's `runner.run` receives it (through the internal protocol), reports
`Progress` while it works, and returns an `OptimizeResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True, slots=True)
class Example:
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]  # the expected outputs


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A declarative metric: a kind from the catalog (or one the operator registered) and its options."""

    kind: str  # exact_match | f1 | contains | numeric_close | llm_judge | an operator's kind
    fields: tuple[str, ...] = ()  # output fields compared; () = every expected output field
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Budget:
    max_lm_calls: int = 0  # 0: no limit
    max_seconds: float = 0.0  # 0: no limit


@dataclass(frozen=True, slots=True)
class OptimizeTask:
    spec: bytes  # serialized dspy_pool.v1.ProgramSpec of the base version
    train: tuple[Example, ...]
    dev: tuple[Example, ...]
    optimizer: str  # a name from catalog.OPTIMIZERS
    options: Mapping[str, Any]  # checked against the catalog's declaration
    metric: MetricSpec
    budget: Budget = Budget()
    seed: int = 0
    num_threads: int = 4  # concurrent LM calls of this job (the optimizer worker's own cap)
    allowed_lms: tuple[str, ...] = ()  # "MODEL" or "MODEL@API_BASE": the LMs a judge or GEPA's reflection may use


@dataclass(frozen=True, slots=True)
class Progress:
    phase: str  # "baseline", "optimizing", "evaluating", ...
    trials_done: int = 0
    trials_planned: int = 0
    best_score: float | None = None
    lm_calls: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True, slots=True)
class OptimizeResult:
    state_json: str  # the optimized module's saved state (dspy.Module.dump_state), loadable as ProgramSpec.state_json
    baseline_score: float  # the base program on the dev split
    optimized_score: float  # the optimized program on the dev split
    dev_examples: int
    lm_calls: int
    budget_limited: bool  # stopped at the budget; the best result so far is kept
    elapsed_s: float


class Cancelled(Exception):
    """The job was cancelled while it ran."""
