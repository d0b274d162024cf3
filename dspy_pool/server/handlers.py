"""Register the servicer with request decoding that cannot end in UNKNOWN.

The generated `add_DSPyPoolServicer_to_server` lets a protobuf DecodeError
(for example inputs nested past the parser's depth limit) escape as UNKNOWN.
Here every method decodes through a guard, and a request that cannot be
decoded, or is larger than --max-message-bytes (checked on the raw bytes,
before parsing), is answered INVALID_ARGUMENT with the reason.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from dspy_pool.v1 import dspy_pool_pb2 as pb


class Undecodable:
    """A request that will not be handled; `reason` is the whole message the client gets."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _decoder(message_class, max_bytes: int):
    def decode(data: bytes):
        if len(data) > max_bytes:  # checked on the bytes grpc hands over, before any parsing
            return Undecodable(f"request is {len(data)} bytes; the limit is {max_bytes}")
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Undecodable(f"request cannot be decoded: {exc}")

    return decode


def checks_decoding(method):
    """Mark a servicer method that answers an Undecodable request itself (see `undecodable`), so it is registered
    without the guard: the hot Execute path then runs one coroutine frame less on every suspend and resume."""
    method.checks_decoding = True
    return method


async def undecodable(request: Undecodable, context) -> None:
    """The guard's answer, for methods marked `checks_decoding`."""
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)


def _guard(method):
    async def handle(request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        return await method(request, context)

    return handle


def _guard_stream(method):
    async def handle(request, context):
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)
        async for message in method(request, context):
            yield message

    return handle


def add_service(servicer, server: grpc.aio.Server, max_request_bytes: int) -> None:
    """Every method of DSPyPool, its requests refused INVALID_ARGUMENT when undecodable or over `max_request_bytes`."""
    service = pb.DESCRIPTOR.services_by_name["DSPyPool"]
    handlers = {}
    for method in service.methods:
        request_class = pb.__dict__[method.input_type.name]
        behaviour = getattr(servicer, method.name)
        if method.server_streaming:
            make, behaviour = grpc.unary_stream_rpc_method_handler, _guard_stream(behaviour)
        else:
            make = grpc.unary_unary_rpc_method_handler
            if not getattr(behaviour, "checks_decoding", False):
                behaviour = _guard(behaviour)
        handlers[method.name] = make(
            behaviour,
            request_deserializer=_decoder(request_class, max_request_bytes),
            # The response class's own (C) serializer: no Python frame per response.
            response_serializer=pb.__dict__[method.output_type.name].SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
