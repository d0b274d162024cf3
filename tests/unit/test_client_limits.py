"""Calls in flight per client (dspy_pool/server/client_limits.py)."""

import pytest

from dspy_pool.errors import ResourceExhausted
from dspy_pool.server.client_limits import ClientLimits, client_of


def test_a_client_is_its_metadata_name_else_its_host():
    assert client_of((("x-dspy-pool-client", "tenant-7"),), "ipv4:10.0.0.7:53211") == "tenant-7"
    assert client_of((), "ipv4:10.0.0.7:53211") == client_of(None, "ipv4:10.0.0.7:60000") == "ipv4:10.0.0.7"
    assert client_of((), "ipv6:[::1]:50000") == "ipv6:[::1]"
    assert client_of((), "unix:/run/app.sock") == "unix:/run/app.sock"
    assert len(client_of((("x-dspy-pool-client", "x" * 1000),), "")) == 128


def test_each_client_has_its_own_limit_and_leaving_frees_a_place():
    limits = ClientLimits(max_in_flight=2)
    limits.enter("a")
    limits.enter("a")
    with pytest.raises(ResourceExhausted, match="limit 2, --client-max-in-flight") as refused:
        limits.enter("a")
    assert refused.value.metadata["retry_after_ms"] and limits.refused == 1
    limits.enter("b")  # another client is not held back by a's calls
    limits.leave("a")
    limits.enter("a")
    for client in ("a", "a", "b"):
        limits.leave(client)
    assert limits.in_flight("a") == limits.in_flight("b") == 0 and not limits._in_flight  # nothing kept for idle clients
