"""One error hierarchy for the whole service, and the one table that says what each error means.

Workers send failures as (kind, type, message, traceback); the front rebuilds
them with `from_kind`. What a kind means (its status code, whether the server
may retry it, whether it counts against the breaker, which fallback reason it
gives, whether it is the caller's fault, whether the call may have run) is
decided here, in `MEANINGS`, and nowhere else: retry, breaker, fallback,
metrics, resilience, the rich status and docs/OPERATIONS.md all read it.
Messages must never contain secrets: LM errors are scrubbed before they get here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType

import grpc


class ErrorKind(str, enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    QUEUE_FULL = "queue_full"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CANCELLED = "cancelled"
    UNAVAILABLE = "unavailable"
    WORKER_CRASHED = "worker_crashed"
    WORKER_HUNG = "worker_hung"
    LM_ERROR = "lm_error"
    LM_RATE_LIMITED = "lm_rate_limited"
    LM_TIMEOUT = "lm_timeout"
    LM_CONNECTION = "lm_connection"
    LM_MALFORMED_OUTPUT = "lm_malformed_output"
    LM_AUTH = "lm_auth"  # the provider refused the operator's key or configuration: never retried
    LM_BAD_REQUEST = "lm_bad_request"  # the provider refused this request (context window, bad params)
    PROGRAM_ERROR = "program_error"
    PROGRAM_NOT_LOADED = "program_not_loaded"
    PROGRAM_QUARANTINED = "program_quarantined"  # its build or warm-up kept failing; fix and re-register
    FAILED_PRECONDITION = "failed_precondition"
    INTERNAL = "internal"


class FailureReason(enum.StrEnum):
    """Why the primary did not answer: the `fallback_reason` a response reports."""

    BREAKER_OPEN = "breaker_open"  # no kind: the breaker refused before anything ran
    TIMEOUT = "timeout"
    LM_ERROR = "lm_error"
    WORKER_CRASH = "worker_crash"
    RATE_LIMITED = "rate_limited"
    MALFORMED_OUTPUT = "malformed_output"
    QUEUE_FULL = "queue_full"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


# A deadline that passed while the call still waited in our queue: it never reached a worker.
PHASE_QUEUED = "queued"


@dataclass(frozen=True, slots=True)
class KindMeaning:
    """What one error kind means to every policy; a row of `MEANINGS`.

    transient:       the server may retry it inside the deadline (under the retry budget)
    breaker_failure: it says the (program, LM endpoint) is unhealthy; counts against the breaker
    fallback:        the fallback reason it gives, or None: it never falls back
    caller_fault:    the caller's own doing; says nothing about the pool's health
    may_have_run:    the call may have run, wholly or in part, so running it again could
                     repeat its work (LM spend, a program's side effects) or, for a poison
                     call, kill another worker. Neither the server nor our clients retry it.
                     An LM failure the provider answered or refused (5xx, 429, a refused
                     connection) is not "run": the program stopped at that request, and
                     earlier steps of a DSPy program are LM calls and pure code. A program
                     with side effects before its LM calls must make them idempotent.
    hint:            what the operator should do, appended to the message the caller sees
    """

    status: grpc.StatusCode
    summary: str
    transient: bool = False
    breaker_failure: bool = False
    fallback: FailureReason | None = None
    caller_fault: bool = False
    may_have_run: bool = False
    hint: str = ""

    def __post_init__(self) -> None:
        if self.transient and self.may_have_run:
            raise ValueError("a kind that may have run is never retried (hard rule 10)")
        if self.caller_fault and (self.breaker_failure or self.fallback is not None):
            raise ValueError("the caller's own fault neither counts against the breaker nor falls back (hard rule 8)")


_S = grpc.StatusCode
_R = FailureReason

_API_KEY_HINT = (
    "the LM provider refused the operator's credentials or configuration: check DSPY_POOL_LM_API_KEY "
    "(or lm_api_key in the config file), --lm and --lm-api-base, then restart"
)

# fmt: off
MEANINGS: MappingProxyType[ErrorKind, KindMeaning] = MappingProxyType({
    ErrorKind.INVALID_ARGUMENT: KindMeaning(_S.INVALID_ARGUMENT, "malformed inputs, bad signature, missing field, payload too large",
                                            caller_fault=True),
    ErrorKind.NOT_FOUND: KindMeaning(_S.NOT_FOUND, "unknown program, version or session", caller_fault=True),
    # The server does not retry into its own full queue; clients do, after the RetryInfo delay.
    ErrorKind.QUEUE_FULL: KindMeaning(_S.RESOURCE_EXHAUSTED, "the bounded queue is full (RetryInfo says when to come back)",
                                      fallback=_R.QUEUE_FULL),
    ErrorKind.RESOURCE_EXHAUSTED: KindMeaning(_S.RESOURCE_EXHAUSTED, "a per-client or per-session limit", fallback=_R.QUEUE_FULL),
    # A deadline spent waiting in the queue never ran: the error says phase=queued and
    # then neither counts against the breaker nor reports may_have_run (see PoolError).
    ErrorKind.DEADLINE_EXCEEDED: KindMeaning(_S.DEADLINE_EXCEEDED, "the deadline passed in the queue or while the program ran",
                                             breaker_failure=True, fallback=_R.TIMEOUT, may_have_run=True),
    ErrorKind.CANCELLED: KindMeaning(_S.CANCELLED, "the caller cancelled", caller_fault=True, may_have_run=True),
    ErrorKind.UNAVAILABLE: KindMeaning(_S.UNAVAILABLE, "draining, no healthy worker, breaker open with no fallback",
                                       fallback=_R.UNAVAILABLE),
    # Only calls that reached the worker fail with these: they may have partly run, and a
    # poison call retried would kill worker after worker.
    ErrorKind.WORKER_CRASHED: KindMeaning(_S.UNAVAILABLE, "the worker died while running the call",
                                          breaker_failure=True, fallback=_R.WORKER_CRASH, may_have_run=True),
    ErrorKind.WORKER_HUNG: KindMeaning(_S.UNAVAILABLE, "the worker stopped answering and was killed while running the call",
                                       breaker_failure=True, fallback=_R.WORKER_CRASH, may_have_run=True),
    # The provider answered with a failure (5xx) or DSPy could not classify it: nothing
    # came back, so trying again is safe and often works.
    ErrorKind.LM_ERROR: KindMeaning(_S.INTERNAL, "the LM provider failed (5xx) or an LM error DSPy did not classify",
                                    transient=True, breaker_failure=True, fallback=_R.LM_ERROR),
    ErrorKind.LM_RATE_LIMITED: KindMeaning(_S.UNAVAILABLE, "the LM provider refused with 429 (rate limit)",
                                           transient=True, breaker_failure=True, fallback=_R.RATE_LIMITED),
    # The provider may still be working on (and billing) the request we gave up on.
    ErrorKind.LM_TIMEOUT: KindMeaning(_S.DEADLINE_EXCEEDED, "the LM request timed out after it was sent",
                                      breaker_failure=True, fallback=_R.TIMEOUT, may_have_run=True),
    ErrorKind.LM_CONNECTION: KindMeaning(_S.UNAVAILABLE, "the LM request failed in transport (refused, reset, DNS, TLS)",
                                         transient=True, breaker_failure=True, fallback=_R.LM_ERROR),
    ErrorKind.LM_MALFORMED_OUTPUT: KindMeaning(_S.INTERNAL, "the LM answered but its output did not parse",
                                               breaker_failure=True, fallback=_R.MALFORMED_OUTPUT, may_have_run=True),
    # Every call fails the same way until the operator fixes the key: retrying only hammers
    # the provider with a bad key. It counts against the breaker because it is the endpoint's
    # failure, not the caller's: while open, the chain (a backup LM on another key, static)
    # answers at once and the provider stops seeing the bad key.
    ErrorKind.LM_AUTH: KindMeaning(_S.FAILED_PRECONDITION, "the LM provider refused the operator's key, account or model",
                                   breaker_failure=True, fallback=_R.LM_ERROR, hint=_API_KEY_HINT),
    ErrorKind.LM_BAD_REQUEST: KindMeaning(_S.INVALID_ARGUMENT, "the LM provider refused this request (context window, parameters)",
                                          caller_fault=True),
    # The program's own bug: says nothing about the LM endpoint.
    ErrorKind.PROGRAM_ERROR: KindMeaning(_S.INTERNAL, "the program raised (the operator's code, not the LM)",
                                         fallback=_R.INTERNAL, may_have_run=True),
    ErrorKind.PROGRAM_NOT_LOADED: KindMeaning(_S.INTERNAL, "the worker did not have the program (resent once)", fallback=_R.INTERNAL),
    ErrorKind.PROGRAM_QUARANTINED: KindMeaning(_S.FAILED_PRECONDITION, "the program's build or warm-up kept failing; fix and re-register",
                                               fallback=_R.INTERNAL),
    ErrorKind.FAILED_PRECONDITION: KindMeaning(_S.FAILED_PRECONDITION, "the request does not fit the current state", caller_fault=True),
    ErrorKind.INTERNAL: KindMeaning(_S.INTERNAL, "a bug in dspy-pool", fallback=_R.INTERNAL, may_have_run=True),
})
# fmt: on
if set(MEANINGS) != set(ErrorKind):  # a new kind without a row would have no status code
    raise RuntimeError(f"ErrorKind members without a row in MEANINGS: {sorted(set(ErrorKind) - set(MEANINGS))}")



def meaning(kind: ErrorKind | str) -> KindMeaning:
    """The row for a kind, given as a member or as its string value; an undeclared kind reads as INTERNAL."""
    try:
        return MEANINGS[ErrorKind(kind)]
    except ValueError:
        return MEANINGS[ErrorKind.INTERNAL]


class PoolError(Exception):
    """Base of every error the service reports to a caller."""

    kind: ErrorKind = ErrorKind.INTERNAL

    def __init__(self, message: str, *, kind: ErrorKind | None = None, error_type: str = "", remote_traceback: str = "", metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.message = message
        self.error_type = error_type or type(self).__name__
        self.remote_traceback = remote_traceback
        self.metadata = dict(metadata or {})

    @property
    def meaning(self) -> KindMeaning:
        return MEANINGS[self.kind]

    @property
    def status_code(self) -> grpc.StatusCode:
        return MEANINGS[self.kind].status

    @property
    def queued_only(self) -> bool:
        """It never left our queue (its deadline passed there): nothing ran, and it says nothing about the LM."""
        return self.metadata.get("phase") == PHASE_QUEUED

    @property
    def may_have_run(self) -> bool:
        """The kind's `may_have_run`, except for a call that provably never left the queue, or one the
        raiser knows had started (metadata may_have_run=true: shutdown cut it off while running)."""
        if self.metadata.get("may_have_run") == "true":
            return True
        return MEANINGS[self.kind].may_have_run and not self.queued_only


class InvalidArgument(PoolError):
    kind = ErrorKind.INVALID_ARGUMENT


class NotFound(PoolError):
    kind = ErrorKind.NOT_FOUND


class QueueFull(PoolError):
    kind = ErrorKind.QUEUE_FULL


class ResourceExhausted(PoolError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class DeadlineExceeded(PoolError):
    kind = ErrorKind.DEADLINE_EXCEEDED


class Cancelled(PoolError):
    kind = ErrorKind.CANCELLED


class Unavailable(PoolError):
    kind = ErrorKind.UNAVAILABLE


class WorkerCrashed(PoolError):
    kind = ErrorKind.WORKER_CRASHED


def from_kind(kind: str, message: str, error_type: str = "", remote_traceback: str = "") -> PoolError:
    """Rebuild an error a worker reported; unknown kinds become INTERNAL."""
    try:
        error_kind = ErrorKind(kind)
    except ValueError:
        error_kind = ErrorKind.INTERNAL
    return PoolError(message, kind=error_kind, error_type=error_type, remote_traceback=remote_traceback)
