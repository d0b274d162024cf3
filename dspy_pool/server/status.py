"""PoolError -> a rich gRPC status (google.rpc.Status with ErrorInfo)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dspy_pool.errors import PoolError

DOMAIN = "dspy-pool"
_MAX_MESSAGE_CHARS = 1000
_MAX_TRACEBACK_CHARS = 2000


def to_grpc_status(error: PoolError) -> grpc.Status:
    # grpc-message and the details trailer both count against the peer's 8 KiB metadata
    # limit; past it the client sees RESOURCE_EXHAUSTED instead of our status. Keep both small.
    info = error_details_pb2.ErrorInfo(reason=error.kind.value.upper(), domain=DOMAIN, metadata={"error_type": error.error_type[:200], **error.metadata})
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if error.remote_traceback:
        debug = error_details_pb2.DebugInfo(detail=error.remote_traceback[-_MAX_TRACEBACK_CHARS:])
        packed = any_pb2.Any()
        packed.Pack(debug)
        details.append(packed)
    if "retry_after_ms" in error.metadata:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(error.metadata["retry_after_ms"]))
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    message = error.message if not error.error_type or error.error_type in error.message else f"{error.error_type}: {error.message}"
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 14] + " ...(truncated)"
    status = status_pb2.Status(code=error.status_code.value[0], message=message, details=details)
    return rpc_status.to_status(status)
