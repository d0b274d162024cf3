"""Fixtures shared across test folders: only the real redis-server (tests/redis_server.py)."""

from __future__ import annotations

import pytest

from tests.redis_server import RedisServer, redis_server_path


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server on a free 127.0.0.1 port for the whole run; tests separate by key prefix."""
    if redis_server_path() is None:
        pytest.skip("redis-server is not on PATH (CI installs it: apt-get install redis-server)")
    server = RedisServer.launch()
    try:
        yield server
    finally:
        server.close()
