"""Which stored job an identical StartOptimization is handed instead of a new one (optimize.jobs.reusable)."""

from __future__ import annotations

import pytest

from dspy_pool.optimize.jobs import reusable
from dspy_pool.state import JobRecord

NOW = 1_000.0


def _job(state: str, lease_expires_at: float = 0.0) -> JobRecord:
    return JobRecord("j1", "key", "qa", state, 0, NOW - 60, NOW - 60, owner="a" if state == "running" else "",
                     lease_expires_at=lease_expires_at)


def test_a_running_job_under_a_live_lease_is_reused():
    """Its runner renews the lease while it runs: the same work is not started twice."""
    assert reusable(_job("running", lease_expires_at=NOW + 5), NOW)


def test_a_running_job_whose_lease_ran_out_is_not_reused():
    """A lease that ran out is a runner that died (a killed front): a new job is started, not the dead one handed out."""
    assert not reusable(_job("running", lease_expires_at=NOW - 0.1), NOW)


@pytest.mark.parametrize("state, reused", [("queued", True), ("succeeded", True), ("failed", False),
                                           ("cancelled", False), ("interrupted", False)])
def test_queued_and_succeeded_jobs_are_reused_and_ended_ones_are_not(state, reused):
    """Waiting or done work is reused; a job that failed, was cancelled or interrupted is started again."""
    assert reusable(_job(state), NOW) is reused


async def test_a_slow_watcher_gets_the_newest_change_and_never_misses_the_end():
    """A watcher that does not read for a while finds only the newest change waiting (a queue of every change grew
    without bound behind a slow reader), and the last change it gets is the job's final one."""
    from dspy_pool.optimize.jobs import _Latest

    latest = _Latest()
    for progress in range(1000):
        latest.put(progress)
    assert await latest.get() == 999
    latest.put("succeeded")
    assert await latest.get() == "succeeded"
