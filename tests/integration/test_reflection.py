"""Server reflection answers what stock tools ask: ghz and grpcurl resolve a call by its method's full name."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from .harness import running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

DSPY_POOL_FILE = "dspy_pool/v1/dspy_pool.proto"
V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
# Field numbers of grpc/reflection/v1/reflection.proto as grpc publishes it: a v1
# client encodes with these, so the server must decode them.
V1_FIELDS = {
    "ServerReflectionRequest": {"host": 1, "file_by_filename": 3, "file_containing_symbol": 4, "file_containing_extension": 5,
                                "all_extension_numbers_of_type": 6, "list_services": 7},
    "ServerReflectionResponse": {"valid_host": 1, "original_request": 2, "file_descriptor_response": 4,
                                 "all_extension_numbers_response": 5, "list_services_response": 6, "error_response": 7},
    "FileDescriptorResponse": {"file_descriptor_proto": 1},
    "ErrorResponse": {"error_code": 1, "error_message": 2},
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def channel():
    async with running_app(workers=1) as (_, _, channel):
        yield channel


async def ask(channel, *requests: reflection_pb2.ServerReflectionRequest) -> list[reflection_pb2.ServerReflectionResponse]:
    """Send requests on one v1alpha stream (as a client does) and collect one response per request."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return [response async for response in stub.ServerReflectionInfo(iter(requests), timeout=10)]


def files(response) -> list[descriptor_pb2.FileDescriptorProto]:
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    return [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in response.file_descriptor_response.file_descriptor_proto]


def build_pool(protos: list[descriptor_pb2.FileDescriptorProto]) -> descriptor_pool.DescriptorPool:
    """Load the answer into a fresh pool, as grpcurl and ghz do: fails unless every dependency came with it."""
    pool, pending = descriptor_pool.DescriptorPool(), {proto.name: proto for proto in protos}

    def add(name: str) -> None:
        proto = pending.pop(name, None)
        if proto is not None:
            for dependency in proto.dependency:
                add(dependency)
            pool.Add(proto)

    for proto in protos:
        add(proto.name)
    return pool


def symbol(name: str) -> reflection_pb2.ServerReflectionRequest:
    return reflection_pb2.ServerReflectionRequest(file_containing_symbol=name)


async def test_method_symbol_resolves_to_its_service_file(channel):
    """file_containing_symbol for package.Service.Method (ghz's and grpcurl's lookup) answers the service's file first, with its dependencies."""
    (response,) = await ask(channel, symbol("dspy_pool.v1.DSPyPool.Execute"))
    protos = files(response)
    assert protos[0].name == DSPY_POOL_FILE  # clients take the first file as the one asked for
    method = build_pool(protos).FindMethodByName("dspy_pool.v1.DSPyPool.Execute")
    assert method.input_type.full_name == "dspy_pool.v1.ExecuteRequest"
    assert response.original_request.file_containing_symbol == "dspy_pool.v1.DSPyPool.Execute"


async def test_health_method_symbol_resolves(channel):
    """Methods of every registered service resolve, not only DSPyPool's."""
    (response,) = await ask(channel, symbol("grpc.health.v1.Health.Check"))
    assert files(response)[0].name == "grpc_health/v1/health.proto"


@pytest.mark.parametrize("name, file", [
    ("dspy_pool.v1.DSPyPool", DSPY_POOL_FILE),                     # service
    ("dspy_pool.v1.ExecuteRequest", DSPY_POOL_FILE),               # message
    ("dspy_pool.v1.ExecuteRequest.program", DSPY_POOL_FILE),       # field
    ("dspy_pool.v1.Dataset.CountsEntry", DSPY_POOL_FILE),          # nested message
    ("google.protobuf.NullValue", "google/protobuf/struct.proto"),  # enum
    ("google.protobuf.NULL_VALUE", "google/protobuf/struct.proto"),  # enum value
])
async def test_other_symbols_resolve(channel, name, file):
    """Services, messages, fields, nested messages, enums and enum values resolve to the file that defines them."""
    (response,) = await ask(channel, symbol(name))
    assert files(response)[0].name == file


async def test_unknown_symbols_answer_not_found_and_the_stream_goes_on(channel):
    """An unknown symbol, or an unknown method of a known service, is a NOT_FOUND error response, and later requests on the stream are still answered."""
    responses = await ask(channel, symbol("dspy_pool.v1.Nope"), symbol("dspy_pool.v1.DSPyPool.Nope"), symbol("dspy_pool.v1.DSPyPool.Execute"))
    for response in responses[:2]:
        assert response.WhichOneof("message_response") == "error_response"
        assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert files(responses[2])[0].name == DSPY_POOL_FILE


async def test_file_by_filename(channel):
    """file_by_filename answers the named file; an unknown file is NOT_FOUND."""
    found, missing = await ask(channel, reflection_pb2.ServerReflectionRequest(file_by_filename=DSPY_POOL_FILE),
                               reflection_pb2.ServerReflectionRequest(file_by_filename="no/such.proto"))
    assert files(found)[0].name == DSPY_POOL_FILE
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_list_services(channel):
    """list_services names DSPyPool, Health and both reflection versions."""
    (response,) = await ask(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = {service.name for service in response.list_services_response.service}
    assert names == {"dspy_pool.v1.DSPyPool", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}


async def test_every_listed_service_resolves(channel):
    """Each listed service's descriptor can be fetched (grpcurl's describe with no symbol asks for all of them)."""
    (listing,) = await ask(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    names = [service.name for service in listing.list_services_response.service]
    responses = await ask(channel, *(symbol(name) for name in names))
    for name, response in zip(names, responses):
        assert build_pool(files(response)).FindServiceByName(name).full_name == name


async def test_v1_is_served_with_the_published_wire_format(channel):
    """grpc.reflection.v1 describes itself with the published field numbers and answers a method lookup encoded by v1 message classes."""
    (response,) = await ask(channel, symbol("grpc.reflection.v1.ServerReflection"))
    protos = files(response)
    assert (protos[0].name, protos[0].package) == ("grpc/reflection/v1/reflection.proto", "grpc.reflection.v1")
    pool = build_pool(protos)
    for message, fields in V1_FIELDS.items():
        descriptor = pool.FindMessageTypeByName(f"grpc.reflection.v1.{message}")
        assert {field.name: field.number for field in descriptor.fields} == fields
    request_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest"))
    response_class = message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse"))
    call = channel.stream_stream(V1_METHOD, request_serializer=request_class.SerializeToString, response_deserializer=response_class.FromString)
    answers = [answer async for answer in call(iter([request_class(file_containing_symbol="dspy_pool.v1.DSPyPool.Execute")]), timeout=10)]
    assert answers[0].DESCRIPTOR.full_name == "grpc.reflection.v1.ServerReflectionResponse"
    first = descriptor_pb2.FileDescriptorProto.FromString(answers[0].file_descriptor_response.file_descriptor_proto[0])
    assert first.name == DSPY_POOL_FILE
