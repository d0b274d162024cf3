"""server/bind.py: a taken port is named with its flag, and a free one stays held until the server's own bind.

CI once failed to start a server on a port its test had just found free: the simulated LM,
started before gRPC binds, was handed that very port by its bind to port 0.
"""

from __future__ import annotations

import asyncio
import errno
import socket

import grpc
import pytest

from dspy_pool.server import bind
from tests.redis_server import free_port


def test_a_taken_port_is_refused_naming_the_address_and_the_flag():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{port}: .* choose another address with --listen"):
            bind.reserve_listen(f"127.0.0.1:{port}")


def test_a_reserved_port_is_held_from_other_binds_until_released():
    """While held, a bind that does not share ports (as a bind to port 0 never does) is refused it; once released,
    it is free again."""
    port = free_port()
    held = bind.reserve_listen(f"127.0.0.1:{port}")
    with socket.socket() as other:
        with pytest.raises(OSError) as refused:
            other.bind(("127.0.0.1", port))
        assert refused.value.errno == errno.EADDRINUSE
    held.close()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))


def test_port_zero_and_unix_sockets_are_not_reserved():
    assert bind.reserve_listen("127.0.0.1:0") is None
    assert bind.reserve_listen("unix:/tmp/dspy-pool-test.sock") is None


def test_the_server_binds_and_serves_beside_its_own_reservation():
    """gRPC (port sharing off, as the server runs it) binds the held port, and calls reach it."""
    async def serve() -> grpc.StatusCode:
        port = free_port()
        held = bind.reserve_listen(f"127.0.0.1:{port}")
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        try:
            assert server.add_insecure_port(f"127.0.0.1:{port}") == port
            held.close()
            await server.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/no.Such/Method")
                with pytest.raises(grpc.aio.AioRpcError) as answered:
                    await call(b"", timeout=10)
            return answered.value.code()
        finally:
            held.close()
            await server.stop(None)

    assert asyncio.run(serve()) == grpc.StatusCode.UNIMPLEMENTED  # the server answered, not the transport
