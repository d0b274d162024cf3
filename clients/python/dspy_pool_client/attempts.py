"""When to try a call again, and for how long: the decisions both clients (blocking and asyncio) share.

No I/O and no clock: each method takes `now` (seconds on a monotonic clock), so the blocking
client sleeps with time.sleep and the asyncio one awaits asyncio.sleep on the same answers.

    plan = CallAttempts(policy, budget_s, now, retry=True, idempotent=True)
    while True:
        remaining = plan.next_attempt(now)          # the attempt's timeout; DeadlineExceeded when none is left
        try: return call(timeout=remaining)
        except grpc error as exc: sleep(plan.after(error, exc, now))   # or raises: not retryable, no time left
"""

from __future__ import annotations

import grpc

from .errors import DSPyPoolError, client_deadline_error
from .optimization import OptimizationJob, wait_deadline_error
from .retry import RetryPolicy


class CallAttempts:
    """One unary call: every attempt within one deadline (`budget_s` from `now`), retried by `policy`."""

    def __init__(self, policy: RetryPolicy, budget_s: float, now: float, *, retry: bool = True, idempotent: bool = True) -> None:
        self._policy = policy
        self._budget_s = budget_s
        self._deadline = now + budget_s
        self._retry = retry
        self._idempotent = idempotent
        self._attempt = 0

    def next_attempt(self, now: float) -> float:
        """The next attempt's timeout (what is left of the deadline)."""
        self._attempt += 1
        remaining = self._deadline - now
        if remaining <= 0:
            raise client_deadline_error(f"deadline of {self._budget_s:.3f}s passed before attempt {self._attempt}")
        return remaining

    def after(self, error: DSPyPoolError, cause: BaseException, now: float) -> float:
        """Seconds to wait before the next attempt; raises `error` (from `cause`) when there is to be none."""
        # A call that is not idempotent is sent again only when the server itself answered (an ErrorInfo):
        # a transport error (a connection that broke mid-call) may hide one that was committed.
        retry = self._retry and (self._idempotent or error.reason)
        delay = self._policy.delay_s(self._attempt, error) if retry else None
        if delay is None:
            raise error from cause
        if now + delay >= self._deadline:
            message = f"no time left for attempt {self._attempt + 1} within {self._budget_s:.3f}s"
            raise client_deadline_error(message, error) from cause
        return delay


class WatchAttempts:
    """One watch of an optimization job: opened again (under `policy`) when the server closes or loses it early,
    until the job finishes or `timeout_s` (None: no limit) passes."""

    def __init__(self, policy: RetryPolicy, job_id: str, timeout_s: float | None, now: float) -> None:
        self._policy = policy
        self._job_id = job_id
        self._timeout_s = timeout_s
        self._deadline = None if timeout_s is None else now + timeout_s
        self._attempt = 0
        self.last: OptimizationJob | None = None  # the newest state seen, for the deadline's message

    def next_attempt(self, now: float) -> float | None:
        """The next watch's timeout (None: no limit)."""
        if self._deadline is None:
            return None
        remaining = self._deadline - now
        if remaining <= 0:
            raise wait_deadline_error(self._job_id, self._timeout_s, self.last)
        return remaining

    def seen(self, job: OptimizationJob) -> None:
        """A message came: the watch works, so a later loss starts the backoff afresh."""
        self._attempt, self.last = 0, job

    def after(self, error: DSPyPoolError, cause: BaseException | None, now: float) -> float:
        """Seconds to wait before watching again; raises when the watch is to end."""
        if self._deadline is not None and error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise wait_deadline_error(self._job_id, self._timeout_s, self.last) from cause
        self._attempt += 1
        delay = self._policy.delay_s(self._attempt, error)
        if delay is None:
            raise error from cause
        if self._deadline is not None and now + delay >= self._deadline:
            raise wait_deadline_error(self._job_id, self._timeout_s, self.last) from cause
        return delay
