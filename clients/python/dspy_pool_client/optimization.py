"""Optimization values: datasets, jobs and their progress, execution policies, per-arm stats.

    add_examples(dataset, split, [{"inputs": {...}, "outputs": {...}}]) --> AddExamplesRequest --> DatasetInfo
    start_optimization(program, dataset, optimizer, metric, options, budget, ...) --> OptimizationJob (queued)
    WatchOptimization stream --> OptimizationJob after OptimizationJob --> a finished state:
        succeeded (job.result: the new version, dev scores, promoted) | failed | cancelled | interrupted
    set_execution_policy(program, mode=..., ...) = GetExecutionPolicy, change the named fields, SetExecutionPolicy
    record_feedback(request_id, score=..., expected_outputs=...) --> RecordFeedbackRequest --> FeedbackResult

Examples, options and outputs are converted like every other Struct (see convert.py):
integral numbers come back as int.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import grpc

from ._gen import dspy_pool_pb2 as pb
from .convert import Metric, _timestamp, metric_to_proto, to_struct
from .errors import DeadlineExceeded, OptimizationFailed, Unavailable

SPLITS = ("train", "dev")
FINISHED_STATES = ("succeeded", "failed", "cancelled", "interrupted")


# -- datasets ------------------------------------------------------------------------------

def example_to_proto(example: Mapping[str, Any], where: str, split: str = "") -> pb.Example:
    """{"inputs": {...}, "outputs": {...}} -> Example; a "split" key is allowed when it names `split`."""
    if not isinstance(example, Mapping):
        raise TypeError(f"{where}: an example is a dict with inputs and outputs, not {type(example).__name__}")
    unknown = set(example) - {"inputs", "outputs", "split"}
    if unknown:
        raise TypeError(f"{where}: unknown keys {sorted(unknown)} (an example has inputs and outputs)")
    if "split" in example and example["split"] != split:
        raise ValueError(f"{where}: its split is {example['split']!r}, but it is being added to {split!r}")
    message = pb.Example()
    for part in ("inputs", "outputs"):
        value = example.get(part)
        if not isinstance(value, Mapping) or not value:
            raise TypeError(f"{where}.{part}: expected a non-empty dict of field names to values")
        to_struct(value, getattr(message, part))
    return message


def add_examples_request(dataset: str, split: str, examples: Iterable[Mapping[str, Any]]) -> pb.AddExamplesRequest:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    request = pb.AddExamplesRequest(dataset=dataset, split=split)
    for index, example in enumerate(examples):
        request.examples.append(example_to_proto(example, f"examples[{index}]", split))
    if not request.examples:
        raise ValueError("no examples given")
    return request


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    counts: dict[str, int]         # examples per split, e.g. {"train": 40, "dev": 30}
    content_hash: str              # equal content (every example of every split, in order) gives an equal hash
    updated_at: _dt.datetime | None
    raw: pb.Dataset = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, message: pb.Dataset) -> "DatasetInfo":
        return cls(message.name, dict(sorted(message.counts.items())), message.content_hash,
                   _timestamp(message.updated_at), raw=message)


# -- jobs ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """What a job may spend: LM calls in all (never exceeded) and seconds; 0 means no limit."""

    max_lm_calls: int = 0
    max_seconds: float = 0.0


def budget_to_proto(budget: "Budget | Mapping[str, Any] | None") -> pb.OptimizationBudget | None:
    if budget is None:
        return None
    if isinstance(budget, Mapping):
        unknown = set(budget) - {"max_lm_calls", "max_seconds"}
        if unknown:
            raise TypeError(f"budget: unknown keys {sorted(unknown)} (expected max_lm_calls, max_seconds)")
        budget = Budget(**budget)
    if not isinstance(budget, Budget):
        raise TypeError(f"budget must be a Budget or a dict, not {type(budget).__name__}")
    if budget.max_lm_calls < 0 or budget.max_seconds < 0:
        raise ValueError("budget limits must be >= 0 (0: no limit)")
    return pb.OptimizationBudget(max_lm_calls=int(budget.max_lm_calls), max_seconds=float(budget.max_seconds))


def start_request(program: str, dataset: str, optimizer: str, *, metric: "str | Metric | Mapping[str, Any]" = "exact_match",
                  options: Mapping[str, Any] | None = None, budget: "Budget | Mapping[str, Any] | None" = None,
                  priority: int = 0, base_version: int = 0, seed: int = 0) -> pb.StartOptimizationRequest:
    request = pb.StartOptimizationRequest(program=program, dataset=dataset, optimizer=optimizer, priority=priority,
                                          base_version=base_version, seed=seed)
    request.metric.CopyFrom(metric_to_proto(metric))
    to_struct(options, request.options)
    budget_message = budget_to_proto(budget)
    if budget_message is not None:
        request.budget.CopyFrom(budget_message)
    return request


@dataclass(frozen=True)
class OptimizationProgress:
    phase: str                   # "baseline", "optimizing", "evaluating", ...
    trials_done: int
    trials_planned: int          # 0 when the optimizer does not say
    best_score: float | None     # None until a trial was scored
    lm_calls: int
    elapsed_s: float

    @classmethod
    def from_proto(cls, message: pb.OptimizationProgress) -> "OptimizationProgress":
        return cls(message.phase, message.trials_done, message.trials_planned,
                   message.best_score if message.has_best_score else None, message.lm_calls, message.elapsed_s)


@dataclass(frozen=True)
class OptimizationResult:
    version: int             # the new program version
    baseline_score: float    # the base version on the dev split
    optimized_score: float   # the new version on the dev split
    dev_examples: int
    lm_calls: int
    budget_limited: bool     # stopped at the budget; the best result so far was kept
    elapsed_s: float
    promoted: bool           # the program's auto promotion policy made it the optimized version

    @property
    def improvement(self) -> float:
        return self.optimized_score - self.baseline_score

    @classmethod
    def from_proto(cls, message: pb.OptimizationResult) -> "OptimizationResult":
        return cls(message.version, message.baseline_score, message.optimized_score, message.dev_examples,
                   message.lm_calls, message.budget_limited, message.elapsed_s, message.promoted)


@dataclass(frozen=True)
class OptimizationJob:
    job_id: str
    state: str                            # queued, running, succeeded, failed, cancelled, interrupted
    program: str
    optimizer: str
    dataset: str
    base_version: int                     # the version optimized (resolved by the server)
    progress: OptimizationProgress
    result: OptimizationResult | None     # set once it succeeded
    error: str                            # the server's reason when it failed, was cancelled or interrupted
    reused: bool                          # StartOptimization returned an existing identical job
    created_at: _dt.datetime | None
    updated_at: _dt.datetime | None
    raw: pb.OptimizationJob = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "succeeded"

    @classmethod
    def from_proto(cls, message: pb.OptimizationJob) -> "OptimizationJob":
        request = message.request
        return cls(
            job_id=message.job_id, state=message.state, program=request.program, optimizer=request.optimizer,
            dataset=request.dataset, base_version=message.base_version or request.base_version,
            progress=OptimizationProgress.from_proto(message.progress),
            result=OptimizationResult.from_proto(message.result) if message.HasField("result") else None,
            error=message.error, reused=message.reused, created_at=_timestamp(message.created_at),
            updated_at=_timestamp(message.updated_at), raw=message,
        )


def watch_ended_early(job_id: str) -> Unavailable:
    """The server closed a watch before the job finished (it is shutting down): worth watching again."""
    return Unavailable(grpc.StatusCode.UNAVAILABLE, f"the watch of job {job_id} ended before the job did")


def wait_deadline_error(job_id: str, timeout: float, last: OptimizationJob | None) -> DeadlineExceeded:
    state = f"still {last.state}" if last is not None else "state unknown"
    return DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"job {job_id} did not finish within {timeout:g}s ({state}; it keeps running on the server)",
                            reason="CLIENT_DEADLINE")


def outcome(job: OptimizationJob) -> OptimizationJob:
    """The finished job when it succeeded; OptimizationFailed (with the server's error text) otherwise."""
    if not job.succeeded:
        raise OptimizationFailed(job)
    return job


# -- execution policies and stats ------------------------------------------------------------

@dataclass(frozen=True)
class ExecutionPolicy:
    """How a program's calls choose a version.

    mode: traditional (the base version), optimized (the promoted version), hybrid
    (hybrid_percent of calls to the promoted version; sticky_sessions keeps a session on one
    arm), evaluation (run both, answer with the base, return the other as `evaluation`).
    promotion: manual, or auto (a finished job's version is promoted when it beats the base by
    min_improvement on at least min_dev_examples dev examples).
    """

    program: str
    mode: str
    base_version: int            # 0: the latest version a client registered
    optimized_version: int       # 0: none promoted yet
    hybrid_percent: float
    sticky_sessions: bool
    promotion: str
    min_improvement: float
    min_dev_examples: int

    @classmethod
    def from_proto(cls, message: pb.ExecutionPolicy) -> "ExecutionPolicy":
        return cls(message.program, message.mode, message.base_version, message.optimized_version, message.hybrid_percent,
                   message.sticky_sessions, message.promotion, message.min_improvement, message.min_dev_examples)


POLICY_FIELDS = ("mode", "base_version", "optimized_version", "hybrid_percent", "sticky_sessions", "promotion",
                 "min_improvement", "min_dev_examples")


def merged_policy(current: pb.ExecutionPolicy, program: str, changes: Mapping[str, Any]) -> pb.ExecutionPolicy:
    """`current` with the fields in `changes` that are not None replaced: SetExecutionPolicy stores the whole policy."""
    unknown = set(changes) - set(POLICY_FIELDS)
    if unknown:
        raise TypeError(f"unknown policy fields {sorted(unknown)}")
    policy = pb.ExecutionPolicy()
    policy.CopyFrom(current)
    policy.program = program
    for name, value in changes.items():
        if value is not None:
            setattr(policy, name, value)
    return policy


@dataclass(frozen=True)
class ArmStats:
    version: int
    arm: str                 # an execution_mode ("traditional", "hybrid:optimized", ...), "evaluation" for the
                             # other arm of evaluation calls, or "failed" for calls that failed
    calls: int
    errors: int
    latency_p50_ms: float
    latency_p95_ms: float
    error_rate: float
    feedback_count: int = 0           # feedback scores received for this version (every arm of it shows the same)
    feedback_score_mean: float = 0.0  # their mean; 0 when there are none


@dataclass(frozen=True)
class ProgramStats:
    program: str
    arms: list[ArmStats]
    policy: ExecutionPolicy

    @classmethod
    def from_proto(cls, message: pb.ProgramStats) -> "ProgramStats":
        arms = [ArmStats(a.version, a.arm, a.calls, a.errors, a.latency_p50_ms, a.latency_p95_ms, a.error_rate,
                         a.feedback_count, a.feedback_score_mean) for a in message.arms]
        return cls(message.program, arms, ExecutionPolicy.from_proto(message.policy))


# -- feedback ------------------------------------------------------------------------------

def feedback_request(request_id: str, score: float | None, expected_outputs: Mapping[str, Any] | None) -> pb.RecordFeedbackRequest:
    if not request_id:
        raise ValueError("request_id is required: the request_id of a call its program captured (Result.request_id)")
    if score is None and expected_outputs is None:
        raise ValueError("give a score, expected_outputs, or both")
    request = pb.RecordFeedbackRequest(request_id=request_id)
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"score must be a finite number, not {score!r}")
        request.score, request.has_score = float(score), True
    if expected_outputs is not None:
        if not isinstance(expected_outputs, Mapping) or not expected_outputs:
            raise TypeError("expected_outputs must be a non-empty dict of output field names to values")
        to_struct(expected_outputs, request.expected_outputs)
    return request


@dataclass(frozen=True)
class FeedbackResult:
    """What RecordFeedback did with a captured call."""

    example_added: bool      # the call became an example (expected outputs given, or a score >= the capture's good_score)
    dataset: str             # where the example went ("" when none was added)
    program: str             # the call's program and version, whose stats count the feedback
    version: int

    @classmethod
    def from_proto(cls, message: pb.RecordFeedbackResponse) -> "FeedbackResult":
        return cls(message.example_added, message.dataset, message.program, message.version)
