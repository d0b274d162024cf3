"""PoolError -> a rich gRPC status (google.rpc.Status with ErrorInfo).

ErrorInfo.reason is the kind upper-cased; its metadata carries the kind and two
answers from the error table that clients act on: `may_have_run` ("true": the call
may have run, so never retry it, whatever the status code) and `transient`
("true": the same call may succeed if tried again).
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dspy_pool.errors import PoolError

DOMAIN = "dspy-pool"
# In UTF-8 bytes: grpc-message percent-encodes every byte outside printable ASCII (up to 3x), and
# the details trailer carries the message again, base64-encoded (4/3x), beside the traceback.
_MAX_MESSAGE_BYTES = 800
_MAX_TRACEBACK_BYTES = 1500
_CUT = " ...(truncated)"


def _head(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` of UTF-8, on a character boundary."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - len(_CUT)].decode("utf-8", "ignore") + _CUT


def _tail(text: str, max_bytes: int) -> str:
    """The last `max_bytes` of `text` in UTF-8 (a traceback ends with what matters)."""
    encoded = text.encode("utf-8", "replace")
    return text if len(encoded) <= max_bytes else encoded[-max_bytes:].decode("utf-8", "ignore")


def to_grpc_status(error: PoolError) -> grpc.Status:
    # grpc-message and the details trailer both count against the peer's 8 KiB metadata
    # limit; past it the client sees RESOURCE_EXHAUSTED instead of our status. Keep both small.
    metadata = {
        "error_type": error.error_type[:200],
        **error.metadata,
        "kind": error.kind.value,
        "may_have_run": "true" if error.may_have_run else "false",
        "transient": "true" if error.meaning.transient else "false",
    }
    info = error_details_pb2.ErrorInfo(reason=error.kind.value.upper(), domain=DOMAIN, metadata=metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    details = [detail]
    if error.remote_traceback:
        debug = error_details_pb2.DebugInfo(detail=_tail(error.remote_traceback, _MAX_TRACEBACK_BYTES))
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
    hint = error.meaning.hint
    if hint and hint not in message:
        # Ahead of the provider's own text, which the cut below may shorten.
        message = f"{hint}. {message}"
    message = _head(message, _MAX_MESSAGE_BYTES)
    status = status_pb2.Status(code=error.status_code.value[0], message=message, details=details)
    return rpc_status.to_status(status)
