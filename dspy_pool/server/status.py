"""PoolError -> a rich gRPC status (google.rpc.Status with ErrorInfo)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dspy_pool.errors import PoolError

DOMAIN = "dspy-pool"


def to_grpc_status(error: PoolError) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=error.kind.value.upper(), domain=DOMAIN, metadata={"error_type": error.error_type, **error.metadata})
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if error.remote_traceback:
        debug = error_details_pb2.DebugInfo(detail=error.remote_traceback[-4000:])
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
    status = status_pb2.Status(code=error.status_code.value[0], message=message[:8000], details=details)
    return rpc_status.to_status(status)
