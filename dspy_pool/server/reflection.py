"""Server reflection that resolves every fully qualified name stock tools ask for.

ghz and grpcurl look a call up with `file_containing_symbol` and the method's
full name (`dspy_pool.v1.DSPyPool.Execute`). grpcio-reflection passes that name
straight to the descriptor pool, and the pool indexes messages, enums, fields and
services but not methods, so both tools failed with "Symbol not found". Here a
name the pool does not know is resolved through its parent: a method of a known
service, or a member of a known message (the pure-Python pool does not index
oneofs either).

    request ──> file_by_filename | file_containing_symbol | file_containing_extension
                | all_extension_numbers_of_type | list_services
                  └─> the pools in order: the default pool (every imported _pb2), then
                      a private one holding grpc/reflection/v1/reflection.proto
    <── the file asked for first (clients take the first as the answer), then its
        transitive dependencies, each serialised once and cached

One servicer answers both protocol versions. grpc.reflection.v1 is v1alpha under
another package name: the same messages with the same field numbers, types and
labels, and nothing on the wire names a type (no Any), so a v1 stream is decoded
and answered with the v1alpha classes. grpcio-reflection ships only v1alpha
(grpc/grpc#38576 asks for v1); clients that try v1 first fall back to v1alpha on
UNIMPLEMENTED, and serving v1 spares them that and outlives v1alpha.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import TypeVar

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_reflection.v1alpha import reflection_pb2 as pb

V1ALPHA_SERVICE = pb.DESCRIPTOR.services_by_name["ServerReflection"].full_name
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
V1_FILE = "grpc/reflection/v1/reflection.proto"
METHOD = "ServerReflectionInfo"

_T = TypeVar("_T")


def v1_pool() -> descriptor_pool.DescriptorPool:
    """A private pool holding the v1 reflection file, derived from v1alpha's (only the file name and package differ).

    Private, not the default pool: a later grpcio-reflection that generates the
    v1 module would add its own definition of the same file there, and the
    default pool rejects a second, different definition of a file.
    """
    proto = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."

    def rename(type_name: str) -> str:
        if not type_name.startswith(old):  # v1alpha's file names only its own top-level types
            raise ValueError(f"unexpected type {type_name} in {pb.DESCRIPTOR.name}")
        return new + type_name[len(old):]

    proto.name, proto.package = V1_FILE, "grpc.reflection.v1"
    proto.ClearField("options")  # v1alpha's language options name v1alpha's packages
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # only message fields name a type; setting "" would mark a scalar as typed
                field.type_name = rename(field.type_name)
    for service in proto.service:
        for method in service.method:
            method.input_type, method.output_type = rename(method.input_type), rename(method.output_type)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool


def file_containing_symbol(pool: descriptor_pool.DescriptorPool, name: str) -> FileDescriptor:
    """The file that defines `name` in one pool; KeyError when it defines nothing by that name."""
    try:
        return pool.FindFileContainingSymbol(name)
    except KeyError:
        pass
    parent, _, member = name.rpartition(".")
    if parent:
        try:
            service = pool.FindServiceByName(parent)
        except KeyError:
            pass
        else:
            if member in service.methods_by_name:
                return service.file
            raise KeyError(name)
        try:
            message = pool.FindMessageTypeByName(parent)
        except KeyError:
            pass
        else:
            members = (message.fields_by_name, message.oneofs_by_name, message.enum_values_by_name, message.extensions_by_name)
            if any(member in names for names in members):
                return message.file
    raise KeyError(name)


def with_dependencies(file: FileDescriptor) -> list[FileDescriptor]:
    """`file` first, then its transitive dependencies, each once."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()
    stack = [file]
    while stack:
        current = stack.pop()
        if current.name not in seen:
            seen.add(current.name)
            ordered.append(current)
            stack.extend(reversed(current.dependencies))
    return ordered


def _error(code: grpc.StatusCode, message: str) -> pb.ServerReflectionResponse:
    return pb.ServerReflectionResponse(error_response=pb.ErrorResponse(error_code=code.value[0], error_message=message))


class ReflectionServicer:
    """ServerReflectionInfo for grpc.aio, for v1alpha and v1 alike (see the module docstring)."""

    def __init__(self, service_names: Iterable[str], pools: Sequence[descriptor_pool.DescriptorPool] | None = None) -> None:
        self.service_names = tuple(sorted(set(service_names)))
        self.pools = tuple(pools) if pools is not None else (descriptor_pool.Default(), v1_pool())
        self._serialized: dict[FileDescriptor, tuple[bytes, ...]] = {}

    async def ServerReflectionInfo(self, requests: AsyncIterator[pb.ServerReflectionRequest], context) -> AsyncIterator[pb.ServerReflectionResponse]:  # noqa: N802 (gRPC's name)
        async for request in requests:
            yield self.answer(request)

    def answer(self, request: pb.ServerReflectionRequest) -> pb.ServerReflectionResponse:
        """The response to one request; a name that is not found is a NOT_FOUND error response and the stream goes on."""
        kind = request.WhichOneof("message_request")
        try:
            if kind == "file_by_filename":
                response = self._files(self._first(lambda pool: pool.FindFileByName(request.file_by_filename)))
            elif kind == "file_containing_symbol":
                response = self._files(self._first(lambda pool: file_containing_symbol(pool, request.file_containing_symbol)))
            elif kind == "file_containing_extension":
                wanted = request.file_containing_extension
                response = self._files(self._first(lambda pool: pool.FindExtensionByNumber(
                    pool.FindMessageTypeByName(wanted.containing_type), wanted.extension_number).file))
            elif kind == "all_extension_numbers_of_type":
                response = self._first(lambda pool: self._extension_numbers(pool, request.all_extension_numbers_of_type))
            elif kind == "list_services":
                response = pb.ServerReflectionResponse(list_services_response=pb.ListServiceResponse(
                    service=[pb.ServiceResponse(name=name) for name in self.service_names]))
            else:
                response = _error(grpc.StatusCode.INVALID_ARGUMENT, "the request sets none of the message_request fields")
        except KeyError:
            response = _error(grpc.StatusCode.NOT_FOUND, f"{kind} not found: {getattr(request, kind)}".replace("\n", " "))
        response.original_request.CopyFrom(request)
        return response

    def _first(self, lookup: Callable[[descriptor_pool.DescriptorPool], _T]) -> _T:
        for pool in self.pools:
            try:
                return lookup(pool)
            except KeyError:
                continue
        raise KeyError

    def _files(self, file: FileDescriptor) -> pb.ServerReflectionResponse:
        serialized = self._serialized.get(file)
        if serialized is None:
            serialized = self._serialized[file] = tuple(_serialize(each) for each in with_dependencies(file))
        return pb.ServerReflectionResponse(file_descriptor_response=pb.FileDescriptorResponse(file_descriptor_proto=serialized))

    @staticmethod
    def _extension_numbers(pool: descriptor_pool.DescriptorPool, type_name: str) -> pb.ServerReflectionResponse:
        message = pool.FindMessageTypeByName(type_name)
        numbers = sorted(extension.number for extension in pool.FindAllExtensions(message))
        return pb.ServerReflectionResponse(all_extension_numbers_response=pb.ExtensionNumberResponse(
            base_type_name=message.full_name, extension_number=numbers))


def _serialize(file: FileDescriptor) -> bytes:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto.SerializeToString()


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> ReflectionServicer:
    """Serve reflection v1alpha and v1 on `server`; list_services names `service_names` and both reflection services."""
    servicer = ReflectionServicer((*service_names, V1ALPHA_SERVICE, V1_SERVICE))
    for service in (V1ALPHA_SERVICE, V1_SERVICE):
        handlers = {METHOD: grpc.stream_stream_rpc_method_handler(
            servicer.ServerReflectionInfo,
            request_deserializer=pb.ServerReflectionRequest.FromString,
            response_serializer=pb.ServerReflectionResponse.SerializeToString,
        )}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        server.add_registered_method_handlers(service, handlers)
    return servicer
