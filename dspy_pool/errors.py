"""One error hierarchy for the whole service, each error with a fixed gRPC status.

Workers send failures as (kind, type, message, traceback); the front rebuilds
them with `from_kind`, so a status code is decided in exactly one place.
Messages must never contain secrets: LM errors are scrubbed before they get here.
"""

from __future__ import annotations

import enum

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


_STATUS_BY_KIND: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.QUEUE_FULL: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.WORKER_CRASHED: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.WORKER_HUNG: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.LM_ERROR: grpc.StatusCode.INTERNAL,
    ErrorKind.LM_RATE_LIMITED: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.LM_TIMEOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.LM_CONNECTION: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.LM_MALFORMED_OUTPUT: grpc.StatusCode.INTERNAL,
    ErrorKind.LM_AUTH: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.LM_BAD_REQUEST: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.PROGRAM_ERROR: grpc.StatusCode.INTERNAL,
    ErrorKind.PROGRAM_NOT_LOADED: grpc.StatusCode.INTERNAL,
    ErrorKind.PROGRAM_QUARANTINED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


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
    def status_code(self) -> grpc.StatusCode:
        return _STATUS_BY_KIND[self.kind]


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


def status_for(kind: ErrorKind | str) -> grpc.StatusCode:
    return _STATUS_BY_KIND[ErrorKind(kind)]


def from_kind(kind: str, message: str, error_type: str = "", remote_traceback: str = "") -> PoolError:
    """Rebuild an error a worker reported; unknown kinds become INTERNAL."""
    try:
        error_kind = ErrorKind(kind)
    except ValueError:
        error_kind = ErrorKind.INTERNAL
    return PoolError(message, kind=error_kind, error_type=error_type, remote_traceback=remote_traceback)
