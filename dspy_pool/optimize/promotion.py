"""When a finished optimization's version is promoted (pure)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    baseline_score: float
    optimized_score: float
    dev_examples: int
    # The dev score of the version promoted now, when it was scored on the same dataset's dev split (None: none
    # promoted, or scored on another dataset, so not comparable).
    served_score: float | None = None


def should_promote(promotion: str, min_improvement: float, min_dev_examples: int, outcome: Outcome) -> bool:
    """Auto promotion: the optimized version beat the base by `min_improvement` on at least `min_dev_examples`, and
    scores no lower than the version promoted now (a later, weaker job must not replace a better version)."""
    if promotion != "auto":
        return False
    if outcome.dev_examples < max(1, min_dev_examples):
        return False
    if outcome.served_score is not None and outcome.optimized_score < outcome.served_score:
        return False
    return outcome.optimized_score - outcome.baseline_score >= min_improvement
