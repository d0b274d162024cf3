"""Optimization jobs in the store, as the JobManager moves them: a finished job stays finished, and a restarted
front interrupts the jobs its predecessor left running (optimize/jobs.py), on real SQLite files."""

from __future__ import annotations

import dataclasses
import time

import pytest
from structlog.testing import capture_logs

from dspy_pool.optimize.jobs import INTERRUPTED, RUNNING, SUCCEEDED, JobManager, JobSettings
from dspy_pool.state import JobRecord
from dspy_pool.state.sqlite import SQLiteStore

pytestmark = pytest.mark.timeout(30)


async def _no_register(spec, meta):
    raise AssertionError("no job runs in these tests")


def _manager(store, owner: str, owner_prefix: str = "") -> JobManager:
    return JobManager(store, registry=None, pool=None, register_version=_no_register,
                      settings=JobSettings(owner=owner, owner_prefix=owner_prefix, lease_s=30.0))


def _running(job_id: str, owner: str) -> JobRecord:
    now = time.time()
    return JobRecord(job_id, f"key-{job_id}", "qa", RUNNING, 0, now, now, owner=owner, lease_expires_at=now + 30.0)


@pytest.fixture
async def store(tmp_path):
    store = SQLiteStore(str(tmp_path / "state.db"), shared=True)  # a front group's file: leases decide who runs what
    await store.open()
    yield store
    await store.close()


async def test_a_late_result_does_not_revive_an_interrupted_job(store):
    """A runner that outlived its lease and reports success finds its job interrupted: it stays interrupted, and
    the refused update is logged."""
    running = _running("j1", owner="me")
    await store.put_job(dataclasses.replace(running, state=INTERRUPTED, error="its lease ran out"))
    with capture_logs() as logs:
        final = await _manager(store, owner="me")._update(running, state=SUCCEEDED, result=b"late", owner="")
    assert final.state == INTERRUPTED and (await store.get_job("j1")).state == INTERRUPTED
    assert [e["event"] for e in logs] == ["optimization_update_refused"]


async def test_a_restarted_front_interrupts_its_predecessors_jobs_at_start(store):
    """Front 0 restarted (same owner prefix, new owner) marks the job its dead predecessor ran interrupted at once,
    though its lease has not run out; another front's running job is left alone."""
    await store.put_job(_running("dead", owner="group#front-0/old"))
    await store.put_job(_running("alive", owner="group#front-1/x"))
    manager = _manager(store, owner="group#front-0/new", owner_prefix="group#front-0/")
    await manager.start(runners=0)
    try:
        assert (await store.get_job("dead")).state == INTERRUPTED
        assert (await store.get_job("alive")).state == RUNNING
    finally:
        await manager.stop()
