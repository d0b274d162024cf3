"""Warming strategies: sequential starts workers one by one, staged serves after the minimum."""

import pytest
from structlog.testing import capture_logs

from dspy_pool.server.app import App

from .harness import eventually, make_config

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_staged_serves_after_the_minimum_then_fills_up():
    """Staged warming reports SERVING with min_workers ready, then grows to the configured size."""
    app = App(make_config(lm="dummy", programs=(), workers=3, min_workers=1, max_workers=3, warming="staged"))
    try:
        with capture_logs() as logs:
            await app.start()
        assert app.pool.worker_pool.healthy
        warming = [e for e in logs if e["event"] == "pool_warming"]
        assert warming and warming[0]["ready"] >= 1 and warming[0]["target"] == 3
        await eventually(lambda: len(app.pool.worker_pool.dispatcher.ready_workers()) == 3)
    finally:
        await app.stop(grace_s=0.5)


async def test_sequential_starts_workers_one_at_a_time():
    """Sequential warming logs progress once per worker, in order."""
    app = App(make_config(lm="dummy", programs=(), workers=2, warming="sequential"))
    try:
        with capture_logs() as logs:
            await app.start()
        progress = [e["ready"] for e in logs if e["event"] == "pool_warming"]
        assert progress == [1, 2]
    finally:
        await app.stop(grace_s=0.5)
