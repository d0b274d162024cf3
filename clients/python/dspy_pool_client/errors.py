"""Typed exceptions for failed calls, built from the gRPC status and its rich details.

The server sends a google.rpc.Status in the `grpc-status-details-bin` trailer
with an ErrorInfo (reason such as "QUEUE_FULL", domain "dspy-pool", metadata
with the original error type, the kind, and "may_have_run"/"transient" as
"true"/"false"), for program errors a DebugInfo (the worker's traceback), and
for RESOURCE_EXHAUSTED a RetryInfo (how long to wait).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class DSPyPoolError(Exception):
    """A call that ended with a non-OK status.

    code: the grpc.StatusCode; message: the status message; reason: ErrorInfo.reason
    ("" when the server sent none, e.g. transport errors); metadata: ErrorInfo.metadata;
    details: every unpacked detail message (ErrorInfo, RetryInfo, DebugInfo, ...);
    retry_after_s: RetryInfo.retry_delay in seconds or None; traceback: DebugInfo.detail.
    """

    def __init__(self, code: grpc.StatusCode, message: str, *, reason: str = "", domain: str = "",
                 metadata: dict[str, str] | None = None, details: list[Any] | None = None,
                 retry_after_s: float | None = None, traceback: str = "") -> None:
        super().__init__(f"{code.name}: {message}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.details = list(details or [])
        self.retry_after_s = retry_after_s
        self.traceback = traceback

    @property
    def error_type(self) -> str:
        """The server-side (or worker-side) exception type, when the server named it."""
        return self.metadata.get("error_type", "")

    @property
    def kind(self) -> str:
        """The server's error kind ("worker_crashed", "lm_auth", ...); "" when it sent none."""
        return self.metadata.get("kind", "")

    @property
    def may_have_run(self) -> bool:
        """True when the server says the call may have run (its worker died, its deadline passed mid-run):
        never send such a call again on your own either."""
        return self.metadata.get("may_have_run") == "true"

    @property
    def transient(self) -> bool:
        """True when the server says the same call may succeed if tried again."""
        return self.metadata.get("transient") == "true"


class InvalidArgument(DSPyPoolError):
    """Malformed inputs, a bad signature, a missing field, a payload too large."""


class NotFound(DSPyPoolError):
    """Unknown program, version or session."""


class ResourceExhausted(DSPyPoolError):
    """Queue full or a per-client limit; retry_after_s holds the server's hint when sent."""


class DeadlineExceeded(DSPyPoolError):
    """The call's deadline passed (in the queue, in the worker, or before a retry)."""


class Unavailable(DSPyPoolError):
    """Server draining, no healthy worker, breaker open without fallback, or no connection."""


class Internal(DSPyPoolError):
    """The program or LM failed after the server's retries and fallbacks."""


class FailedPrecondition(DSPyPoolError):
    """The server cannot run this until someone acts: the LM provider refused the operator's key
    (reason LM_AUTH), or the program is quarantined."""


class OptimizationFailed(DSPyPoolError):
    """An optimization the client waited for ended without a new version: failed, cancelled or interrupted.

    Not a failed RPC (every call succeeded): code ABORTED, reason OPTIMIZATION_FAILED,
    OPTIMIZATION_CANCELLED or OPTIMIZATION_INTERRUPTED; message: the server's error text;
    job: the final OptimizationJob; state: its state.
    """

    def __init__(self, job: Any) -> None:
        text = job.error or "no reason given"
        super().__init__(grpc.StatusCode.ABORTED, f"optimization {job.job_id} of {job.program!r} {job.state}: {text}",
                         reason=f"OPTIMIZATION_{job.state.upper()}")
        self.job = job
        self.state = job.state


_BY_CODE: dict[grpc.StatusCode, type[DSPyPoolError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.INTERNAL: Internal,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
}


def error_class(code: grpc.StatusCode) -> type[DSPyPoolError]:
    return _BY_CODE.get(code, DSPyPoolError)


def from_rpc_error(error: grpc.RpcError) -> DSPyPoolError:
    """Turn a grpc.RpcError (sync) or grpc.aio.AioRpcError into the typed exception."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    message = error.details() if callable(getattr(error, "details", None)) else str(error)
    message = message or ""
    try:
        status = rpc_status.from_call(error)  # AioRpcError has the same code()/details()/trailing_metadata()
    except (ValueError, TypeError, AttributeError):
        status = None  # a trailer that does not match the status: keep the plain code and message
    reason, domain, metadata, retry_after_s, traceback = "", "", {}, None, ""
    details: list[Any] = []
    if status is not None:
        for packed in status.details:
            for kind in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo, error_details_pb2.DebugInfo,
                         error_details_pb2.BadRequest, error_details_pb2.QuotaFailure):
                if packed.Is(kind.DESCRIPTOR):
                    detail = kind()
                    packed.Unpack(detail)
                    details.append(detail)
                    if isinstance(detail, error_details_pb2.ErrorInfo):
                        reason, domain, metadata = detail.reason, detail.domain, dict(detail.metadata)
                    elif isinstance(detail, error_details_pb2.RetryInfo):
                        retry_after_s = detail.retry_delay.ToMilliseconds() / 1000.0
                    elif isinstance(detail, error_details_pb2.DebugInfo):
                        traceback = detail.detail
                    break
            else:
                details.append(packed)
    return error_class(code)(code, message, reason=reason, domain=domain, metadata=metadata, details=details,
                             retry_after_s=retry_after_s, traceback=traceback)


def client_deadline_error(message: str, cause: DSPyPoolError | None = None) -> DeadlineExceeded:
    """The client's own deadline ran out between attempts; keeps the last server error's details."""
    if cause is None:
        return DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, message, reason="CLIENT_DEADLINE")
    return DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, f"{message}; last error: {cause}", reason="CLIENT_DEADLINE",
                            details=cause.details, metadata=cause.metadata)
