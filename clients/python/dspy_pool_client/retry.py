"""Retry policy: exponential backoff with jitter, bounded by the call's deadline.

Retried: UNAVAILABLE (no connection, draining, no healthy worker, breaker open,
an LM rate limit), and RESOURCE_EXHAUSTED only when the server attached a
google.rpc.RetryInfo (queue full): the server then says the call was not started
and how long to wait. Never retried, whatever the code: an error whose ErrorInfo
says `may_have_run=true` (the worker died or hung while running the call, its
deadline passed mid-run, the LM timed out): the call may have run, and a call
that killed its worker would kill the next one too. Nothing else is retried:
INVALID_ARGUMENT and NOT_FOUND will not change, FAILED_PRECONDITION (a refused
LM key) waits for the operator, and a DEADLINE_EXCEEDED or INTERNAL call may have run.

Caveat: an UNAVAILABLE raised by the transport itself (no ErrorInfo: the
connection broke mid-call) cannot say whether the call ran; for programs with
side effects use RetryPolicy(max_attempts=1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc

from .errors import DSPyPoolError


@dataclass(frozen=True)
class RetryPolicy:
    # Attempts in all, the first one included; 1 disables retries. The default backoffs add up to 3.5-7 s (always within
    # the call's deadline): a server restarting, or a full queue draining, takes about that; 4 attempts gave up in 0.35 s.
    max_attempts: int = 8
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.5              # delay drawn from [d*(1-jitter), d]; with a server hint h: [h', h'*(1+jitter)], h' = max(d, h)
    retry_unavailable: bool = True
    retry_resource_exhausted: bool = True  # only when the server sent RetryInfo

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("jitter must be within [0, 1]")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("backoff must be >= 0 and multiplier >= 1")

    def retryable(self, error: DSPyPoolError) -> bool:
        if error.may_have_run:
            return False  # hard rule: a call that may have run is never sent again
        if error.code == grpc.StatusCode.UNAVAILABLE:
            return self.retry_unavailable
        if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return self.retry_resource_exhausted and error.retry_after_s is not None
        return False

    def delay_s(self, attempt: int, error: DSPyPoolError, rng: random.Random | None = None) -> float | None:
        """Seconds to wait after failed attempt number `attempt` (1-based), or None: do not retry."""
        if attempt >= self.max_attempts or not self.retryable(error):
            return None
        rng = rng or random
        backoff = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        if error.retry_after_s is not None:
            # Never earlier than the server asked; spread upwards so rejected clients do not return in lockstep.
            base = max(backoff, error.retry_after_s)
            return rng.uniform(base, base * (1.0 + self.jitter))
        return rng.uniform(backoff * (1.0 - self.jitter), backoff)


NO_RETRIES = RetryPolicy(max_attempts=1)
