"""The gRPC server's connection options (keepalive, client pings, connection age): tests/integration/test_connections.py
shows what they do; this, what they are by default."""

from __future__ import annotations

from dspy_pool.server.app import connection_options
from dspy_pool.server.config import ServerSection


def test_the_servers_connection_options_by_default():
    """Clients may ping every 10 s with or without calls; the server pings an idle connection each minute and drops it
    after 20 s unanswered; connections are not aged unless asked."""
    options = dict(connection_options(ServerSection()))
    assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert (options["grpc.keepalive_time_ms"], options["grpc.keepalive_timeout_ms"], options["grpc.http2.ping_timeout_ms"]) == \
           (60_000, 20_000, 20_000)
    assert "grpc.max_connection_age_ms" not in options
    aged = dict(connection_options(ServerSection(max_connection_age_s=300, max_deadline_s=60)))
    assert (aged["grpc.max_connection_age_ms"], aged["grpc.max_connection_age_grace_ms"]) == (300_000, 60_000)
    assert "grpc.keepalive_time_ms" not in dict(connection_options(ServerSection(keepalive_s=0)))
