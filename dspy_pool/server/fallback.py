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

Which errors fall back, and with which reason, is the error table's `fallback`
column (dspy_pool/errors.py): the caller's bad input and cancellations never
fall back, since answering them from a cache or a static value would hide their error.

The chain needs time of its own: `reserve_s` is the part of the deadline kept
back from the primary, so a hanging LM is cut off while a cache, static or
backup step can still answer inside the caller's deadline.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dspy_pool import errors
from dspy_pool.errors import FailureReason


class Step(enum.StrEnum):
    CACHE = "cache"
    LM = "lm"
    PROGRAM = "program"
    STATIC = "static"
    FAIL = "fail"


_STEP_NAMES_IN_ORDER: tuple[str, ...] = tuple(step.value for step in Step)
_STEP_NAMES: frozenset[str] = frozenset(_STEP_NAMES_IN_ORDER)

# Steps that run on a worker, and so are pointless when no worker can take work.
WORKER_STEPS: frozenset[Step] = frozenset({Step.LM, Step.PROGRAM})
_NO_WORKER_REASONS: frozenset[FailureReason] = frozenset({FailureReason.QUEUE_FULL, FailureReason.UNAVAILABLE})
# The 'lm' step runs the same program on the same inputs: after the call killed its
# worker, that is a retry of a call that may have run, and a poison call would kill
# another worker (hard rule 10). A different program ('program') may still answer.
_SAME_CALL_FORBIDDEN: frozenset[FailureReason] = frozenset({FailureReason.WORKER_CRASH})


def classify(error_kind: str) -> FailureReason | None:
    """The fallback reason the error table gives a kind; None: it must not fall back (the caller's own fault)."""
    return errors.meaning(error_kind).fallback


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


def check_default_chain(steps: Iterable[str]) -> None:
    """The server's default chain (ValueError naming the problem): known steps, each once, 'fail' last. Its lm,
    program and static steps need what only a spec gives, so they apply to the programs that give it."""
    validate_chain(steps, lm="(from the spec)", program="(from the spec)", static_outputs={"(from the spec)": ""})


def default_steps_for(default: Iterable[str], lm: str, program: str, static_outputs: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The default chain as it applies to a program that sets no chain of its own: the steps it gives what they need
    (a program without static outputs is not made to fail registration by a default 'static' step)."""
    needs = {Step.LM.value: lm, Step.PROGRAM.value: program, Step.STATIC.value: static_outputs}
    return tuple(step for step in default if step not in needs or needs[step])


# Programs registered without a chain: the primary's error is the answer.
NO_FALLBACK = FallbackChain()


def plan(chain: FallbackChain, failure_reason: str) -> list[Step]:
    """The steps worth trying, in chain order, for this failure."""
    reason = FailureReason(failure_reason)
    if reason in _NO_WORKER_REASONS:
        return [step for step in chain.steps if step not in WORKER_STEPS]
    if reason in _SAME_CALL_FORBIDDEN:
        return [step for step in chain.steps if step is not Step.LM]
    return list(chain.steps)


@dataclass(frozen=True, slots=True)
class Reserve:
    """The part of a deadline a chain keeps back: `fraction` of the budget, within [floor_s, cap_s]."""

    fraction: float
    floor_s: float
    cap_s: float


# Cache and static answer in the front in microseconds; their reserve only has to
# cover the primary's error reaching the front and the reply leaving a busy loop.
LOCAL_RESERVE = Reserve(fraction=0.1, floor_s=0.05, cap_s=1.0)
# A backup LM or a simpler program makes a real LM call of its own.
WORKER_RESERVE = Reserve(fraction=0.4, floor_s=0.5, cap_s=15.0)
# The primary keeps at least half of any budget: the chain covers for it, it does not replace it.
MAX_RESERVE_FRACTION = 0.5


def reserve_s(chain: FallbackChain, budget_s: float) -> float:
    """Seconds of `budget_s` to keep back from the primary so the chain can still answer; 0 without a chain.

    The primary then runs against `deadline - reserve_s(...)`, and the worker's LM
    request is cancelled at that earlier point instead of using up the whole deadline.
    """
    steps = [step for step in chain.steps if step is not Step.FAIL]
    if not steps or not budget_s > 0:  # also false for NaN
        return 0.0
    policy = WORKER_RESERVE if any(step in WORKER_STEPS for step in steps) else LOCAL_RESERVE
    wanted = min(policy.cap_s, max(policy.floor_s, policy.fraction * budget_s))
    return min(wanted, MAX_RESERVE_FRACTION * budget_s)


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
