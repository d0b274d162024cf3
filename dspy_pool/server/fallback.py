"""Fallback planning (pure): which steps to try, in order, when the primary call fails.

    primary fails (error kind) --classify--> failure reason --plan(chain)--> [steps]

    cache    the last good result for the same program version and inputs
    lm       the same program on a fallback LM (another model or endpoint)
    program  a named simpler program (for example the unoptimized version)
    static   fixed outputs from the spec
    fail     the original error, with its status code

A chain is set per program at RegisterProgram (with a server-wide default) and
validated once, here. The caller walks the planned steps inside the remaining
deadline, holding a `FallbackBudget` slot for work that needs a worker, and
stops at the first step that answers.

The caller's bad input (`invalid_argument`, `not_found`) and cancellations never
fall back: answering them from a cache or a static value would hide their error.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dspy_pool.errors import ErrorKind


class Step(enum.StrEnum):
    CACHE = "cache"
    LM = "lm"
    PROGRAM = "program"
    STATIC = "static"
    FAIL = "fail"


class FailureReason(enum.StrEnum):
    """Why the primary did not answer; also the `fallback_reason` a response reports."""

    BREAKER_OPEN = "breaker_open"
    TIMEOUT = "timeout"
    LM_ERROR = "lm_error"
    WORKER_CRASH = "worker_crash"
    RATE_LIMITED = "rate_limited"
    MALFORMED_OUTPUT = "malformed_output"
    QUEUE_FULL = "queue_full"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    # The caller's own doing: never falls back.
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    CANCELLED = "cancelled"


NO_FALLBACK_REASONS: frozenset[FailureReason] = frozenset(
    {FailureReason.INVALID_ARGUMENT, FailureReason.NOT_FOUND, FailureReason.CANCELLED}
)

_STEP_NAMES_IN_ORDER: tuple[str, ...] = tuple(step.value for step in Step)
_STEP_NAMES: frozenset[str] = frozenset(_STEP_NAMES_IN_ORDER)

# Steps that run on a worker, and so are pointless when no worker can take work.
WORKER_STEPS: frozenset[Step] = frozenset({Step.LM, Step.PROGRAM})
_NO_WORKER_REASONS: frozenset[FailureReason] = frozenset({FailureReason.QUEUE_FULL, FailureReason.UNAVAILABLE})

_REASON_BY_KIND: dict[str, FailureReason] = {
    ErrorKind.LM_ERROR.value: FailureReason.LM_ERROR,
    ErrorKind.LM_CONNECTION.value: FailureReason.LM_ERROR,
    ErrorKind.LM_RATE_LIMITED.value: FailureReason.RATE_LIMITED,
    ErrorKind.LM_TIMEOUT.value: FailureReason.TIMEOUT,
    ErrorKind.DEADLINE_EXCEEDED.value: FailureReason.TIMEOUT,
    ErrorKind.LM_MALFORMED_OUTPUT.value: FailureReason.MALFORMED_OUTPUT,
    ErrorKind.WORKER_CRASHED.value: FailureReason.WORKER_CRASH,
    # A hung worker is killed and replaced: from the call's view its worker died.
    ErrorKind.WORKER_HUNG.value: FailureReason.WORKER_CRASH,
    ErrorKind.QUEUE_FULL.value: FailureReason.QUEUE_FULL,
    ErrorKind.RESOURCE_EXHAUSTED.value: FailureReason.QUEUE_FULL,
    ErrorKind.UNAVAILABLE.value: FailureReason.UNAVAILABLE,
    ErrorKind.INVALID_ARGUMENT.value: FailureReason.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND.value: FailureReason.NOT_FOUND,
    ErrorKind.CANCELLED.value: FailureReason.CANCELLED,
    ErrorKind.PROGRAM_ERROR.value: FailureReason.INTERNAL,
    ErrorKind.PROGRAM_NOT_LOADED.value: FailureReason.INTERNAL,
    ErrorKind.INTERNAL.value: FailureReason.INTERNAL,
}

# What says something about the (program, LM endpoint) health. Not the caller's
# input, not cancellations, not our own queue or draining, not the program's own bugs.
BREAKER_FAILURE_KINDS: frozenset[str] = frozenset(
    {
        ErrorKind.LM_ERROR.value,
        ErrorKind.LM_CONNECTION.value,
        ErrorKind.LM_RATE_LIMITED.value,
        ErrorKind.LM_TIMEOUT.value,
        ErrorKind.LM_MALFORMED_OUTPUT.value,
        ErrorKind.DEADLINE_EXCEEDED.value,
        ErrorKind.WORKER_CRASHED.value,
        ErrorKind.WORKER_HUNG.value,
    }
)


def classify(error_kind: str) -> FailureReason:
    """The failure reason for an error kind the pool raised; unknown kinds are `internal`."""
    return _REASON_BY_KIND.get(error_kind, FailureReason.INTERNAL)


def counts_as_breaker_failure(error_kind: str) -> bool:
    """True for system failures (LM errors, timeouts, worker crashes, malformed output).

    A deadline that expired while the call still waited in the queue says nothing
    about the endpoint: the caller should record that one as ignored.
    """
    return error_kind in BREAKER_FAILURE_KINDS


@dataclass(frozen=True)
class FallbackChain:
    """A validated chain and what its steps need; step names may be given as plain strings."""

    steps: tuple[Step, ...] = ()
    lm: str = ""
    lm_api_base: str = ""
    program: str = ""
    static_outputs: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        validate_chain(self.steps, lm=self.lm, program=self.program, static_outputs=self.static_outputs)
        # Frozen, so normalise through object.__setattr__: callers pass FallbackSpec.chain strings.
        object.__setattr__(self, "steps", tuple(Step(name) for name in self.steps))


def validate_chain(
    steps: Iterable[str],
    *,
    lm: str = "",
    program: str = "",
    static_outputs: Mapping[str, Any] | None = None,
) -> None:
    """Raise ValueError naming the first problem with a chain."""
    names = list(steps)
    seen: set[str] = set()
    for position, name in enumerate(names):
        if name not in _STEP_NAMES:
            raise ValueError(f"unknown fallback step {name!r}; known steps: {', '.join(_STEP_NAMES_IN_ORDER)}")
        if name in seen:
            raise ValueError(f"fallback step {name!r} appears more than once")
        seen.add(name)
        if name == Step.FAIL and position != len(names) - 1:
            raise ValueError("fallback step 'fail' must be the last step: nothing after it can run")
    if Step.LM in seen and not lm:
        raise ValueError("fallback step 'lm' needs a fallback LM (FallbackSpec.lm)")
    if Step.PROGRAM in seen and not program:
        raise ValueError("fallback step 'program' needs a program name (FallbackSpec.program)")
    if Step.STATIC in seen and not static_outputs:
        raise ValueError("fallback step 'static' needs outputs (FallbackSpec.static_outputs)")


# Programs registered without a chain: the primary's error is the answer.
NO_FALLBACK = FallbackChain()


def plan(chain: FallbackChain, failure_reason: str) -> list[Step]:
    """The steps worth trying, in chain order, for this failure; [] when it must not fall back."""
    reason = FailureReason(failure_reason)
    if reason in NO_FALLBACK_REASONS:
        return []
    if reason in _NO_WORKER_REASONS:
        return [step for step in chain.steps if step not in WORKER_STEPS]
    return list(chain.steps)


class FallbackBudget:
    """At most `max_concurrent` fallbacks doing work at once, apart from the primary's capacity.

    So a slow primary that fills the queue cannot also starve the fallbacks
    meant to cover for it; and a burst of fallbacks cannot take over the pool.
    """

    def __init__(self, max_concurrent: int) -> None:
        if not isinstance(max_concurrent, int) or max_concurrent < 0:
            raise ValueError(f"max_concurrent must be an integer >= 0, not {max_concurrent!r}")
        self.max_concurrent = max_concurrent
        self.in_use = 0
        self.rejected = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.max_concurrent:
            self.rejected += 1
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        # Releasing more than was acquired is a bug in the caller; hiding it would let the bound drift.
        if self.in_use == 0:
            raise RuntimeError("FallbackBudget.release() without a matching try_acquire()")
        self.in_use -= 1
