"""When a program optimizes itself (pure): thresholds on feedback, score drift and errors, with a minimum interval.

    decide(config, state, observation, now) -> (reason or "", new state)
    started(state, job_id) / after_job(state, failed): a failed automatic job doubles the wait before the next

Tested tick by tick like the scaler; the job manager feeds it what the front
observed every few seconds and starts the program's template job when a
reason comes back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TriggerConfig:
    after_feedback_examples: int = 0  # 0: off
    on_score_drop: float = 0.0  # 0: off; mean feedback score this far below the served version's dev score
    on_error_rate: float = 0.0  # 0: off
    min_interval_s: float = 3600.0
    min_calls: int = 20  # the rates need this many calls (and the score this many feedbacks) to mean anything


@dataclass(frozen=True, slots=True)
class Observation:
    feedback_examples: int  # examples feedback added in all (a counter that only grows)
    feedback_count: int  # feedback scores received for the served version
    feedback_score_mean: float
    dev_score: float  # what the served version scored on dev (0 when never measured)
    calls: int
    error_rate: float
    job_active: bool  # a job for this program is queued or running


@dataclass(frozen=True, slots=True)
class TriggerState:
    last_started_at: float | None = None
    examples_at_last_start: int = 0
    last_job_id: str = ""  # the automatic job started last, until it is seen to end
    failures: int = 0  # automatic jobs in a row that failed: each doubles the wait before the next


_MAX_DOUBLINGS = 6  # at most 64 x min_interval_s between jobs that keep failing (an LM outage)


def interval_s(config: TriggerConfig, state: TriggerState) -> float:
    """The wait after a start: min_interval_s, doubled for each automatic job in a row that failed (each failed job
    called a provider that was likely down, and would again)."""
    return config.min_interval_s * 2 ** min(state.failures, _MAX_DOUBLINGS)


def after_job(state: TriggerState, failed: bool) -> TriggerState:
    """The automatic job started last has ended."""
    return dataclasses.replace(state, last_job_id="", failures=state.failures + 1 if failed else 0)


def started(state: TriggerState, job_id: str) -> TriggerState:
    return dataclasses.replace(state, last_job_id=job_id)


def decide(config: TriggerConfig, state: TriggerState, seen: Observation, now: float) -> tuple[str, TriggerState]:
    """The reason to start a job now ("" for none) and the state after."""
    if seen.job_active:
        return "", state
    if state.last_started_at is not None and now - state.last_started_at < interval_s(config, state):
        return "", state
    reason = ""
    new_examples = seen.feedback_examples - state.examples_at_last_start
    if config.after_feedback_examples and new_examples >= config.after_feedback_examples:
        reason = f"{new_examples} new feedback examples"
    elif (config.on_score_drop and seen.dev_score and seen.feedback_count >= config.min_calls
          and seen.dev_score - seen.feedback_score_mean >= config.on_score_drop):
        reason = f"feedback score {seen.feedback_score_mean:.3f} is {seen.dev_score - seen.feedback_score_mean:.3f} below the dev score"
    elif config.on_error_rate and seen.calls >= config.min_calls and seen.error_rate >= config.on_error_rate:
        reason = f"error rate {seen.error_rate:.3f}"
    if not reason:
        return "", state
    return reason, dataclasses.replace(state, last_started_at=now, examples_at_last_start=seen.feedback_examples)
