"""Calls in flight per client (--client-max-in-flight): one client flooding the server cannot take every slot.

    Execute ──> enter(client) ── under its limit ──> the call ──> leave(client)
                      └── at its limit ──> RESOURCE_EXHAUSTED, with RetryInfo (this client's calls, not others')

A client is what it says it is in the `x-dspy-pool-client` metadata (an app
with several tenants names each), else its address without the port (every
connection from one host is one client). Off by default: a sidecar usually
serves one app, which is one client.
"""

from __future__ import annotations

from dspy_pool.errors import ResourceExhausted

CLIENT_KEY = "x-dspy-pool-client"
_MAX_CLIENT_CHARS = 128


def client_of(metadata, peer: str) -> str:
    """The client a call comes from: its x-dspy-pool-client, else the peer's host (ipv4:10.0.0.7:53211 -> ipv4:10.0.0.7)."""
    for key, value in metadata or ():
        if key == CLIENT_KEY and value:
            return str(value)[:_MAX_CLIENT_CHARS]
    if peer.startswith(("ipv4:", "ipv6:")):
        return peer.rpartition(":")[0]
    return peer


class ClientLimits:
    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self._in_flight: dict[str, int] = {}
        self.refused = 0

    def enter(self, client: str) -> str:
        """Count a call of `client`; ResourceExhausted when it already has max_in_flight."""
        held = self._in_flight.get(client, 0)
        if held >= self.max_in_flight:
            self.refused += 1
            raise ResourceExhausted(f"client {client!r} already has {held} calls in flight (limit {self.max_in_flight}, "
                                    "--client-max-in-flight); retry when some have finished",
                                    metadata={"retry_after_ms": "100"})
        self._in_flight[client] = held + 1
        return client

    def leave(self, client: str) -> None:
        held = self._in_flight.get(client, 0) - 1
        if held > 0:
            self._in_flight[client] = held
        else:
            self._in_flight.pop(client, None)  # clients come and go: only those with calls are kept

    def in_flight(self, client: str) -> int:
        return self._in_flight.get(client, 0)
