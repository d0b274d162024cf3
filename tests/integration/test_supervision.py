"""Supervision with real processes: stopped workers skipped, bad programs quarantined, the sim LM and the
zygote relaunched, scale-up beside a draining worker, a zygote that keeps dying, SIGTERM to the process group.

One server (sim LM, zygote, two workers) serves the first tests, in file
order; a bare WorkerPool (dummy LM, no controller) serves the resize test;
the crash-loop and process-group tests start their own.
"""

import asyncio
import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading

import grpc
import psutil
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from structlog.testing import capture_logs

from dspy_pool import errors
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.dispatcher import Job
from dspy_pool.pool.handle import WorkerState
from dspy_pool.pool.supervisor import PoolSettings, WorkerPool
from dspy_pool.restarts import RestartPolicy
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import CHAOS, eventually, execute_request, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

FRAGILE = "tests.fixtures.fragile_builds"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    # hang_timeout_s is long so a SIGSTOPped worker outlives the test that stops it;
    # warmup_timeout_s is short so a build that hangs is cut off quickly.
    async with running_app(workers=2, programs=(CHAOS, FRAGILE), hang_timeout_s=30.0, warmup_timeout_s=1.5) as (app, stub, channel):
        await register(stub, "qa", "question -> answer")
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        yield app, stub, channel


def _ready(workers: WorkerPool) -> list:
    return [h for h in workers.handles() if h.state is WorkerState.READY]


def _options(**values) -> struct_pb2.Struct:
    options = struct_pb2.Struct()
    options.update(values)
    return options


async def _health(channel) -> int:
    return (await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)).status


# -- item 5: a stopped worker ------------------------------------------------------------------


async def test_a_stopped_worker_gets_no_new_calls_until_it_answers_again(server):
    """SIGSTOP one of two workers: once it misses a ping every new call goes to the other; SIGCONT brings it back."""
    app, stub, _ = server
    workers = app.pool.worker_pool
    victim, other = _ready(workers)[:2]
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        await eventually(lambda: not victim.responsive, timeout_s=20)
        replies = await asyncio.gather(*(stub.Execute(execute_request("qa", question=f"stopped {i}"), timeout=15) for i in range(20)),
                                       return_exceptions=True)
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    served = [r for r in replies if isinstance(r, pb.ExecuteResponse)]
    assert len(served) == 20, [r for r in replies if not isinstance(r, pb.ExecuteResponse)]
    assert {r.worker.pid for r in served} == {other.pid}
    await eventually(lambda: victim.responsive, timeout_s=20)

    async def victim_serves_again() -> bool:
        batch = await asyncio.gather(*(stub.Execute(execute_request("qa", question="back"), timeout=15) for _ in range(8)))
        return victim.pid in {r.worker.pid for r in batch}

    await eventually(victim_serves_again, timeout_s=20, interval_s=0.1)


# -- item 6: quarantine -------------------------------------------------------------------------


async def test_a_program_whose_build_kills_workers_is_quarantined(server, tmp_path):
    """A build that exits the process: warm-ups die a few times, then the program is quarantined and the pool serves the rest."""
    app, stub, _ = server
    workers = app.pool.worker_pool
    armed = tmp_path / "crash"
    await register(stub, "fragile-crash", "question -> answer", "fragile", module_options=_options(crash_if=str(armed)))
    armed.touch()
    with capture_logs() as logs:
        os.kill(_ready(workers)[0].pid, signal.SIGKILL)  # its replacement builds every program while warming up
        await eventually(lambda: workers.quarantined, timeout_s=60)
        await eventually(lambda: len(_ready(workers)) == 2 and workers.healthy, timeout_s=60)
    assert [key.split("#")[0] for key in workers.quarantined] == ["fragile-crash"]
    status = await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=5)
    assert list(status.quarantined_programs) == list(workers.quarantined)
    assert "program_quarantined" in [entry["event"] for entry in logs]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Execute(execute_request("fragile-crash", question="still broken?"), timeout=15)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "quarantined" in caught.value.details() and "register" in caught.value.details()
    assert (await stub.Execute(execute_request("qa", question="others still served"), timeout=15)).outputs["answer"]
    fixed = await register(stub, "fragile-crash", "question -> answer", "fragile")  # a fixed version: new content, new key
    assert fixed.version == 2
    assert (await stub.Execute(execute_request("fragile-crash", question="fixed"), timeout=15)).outputs["answer"]


async def test_a_program_whose_build_hangs_workers_is_quarantined(server, tmp_path):
    """A build that never returns: each warm-up is cut off and its worker killed, then the program is quarantined."""
    app, stub, _ = server
    workers = app.pool.worker_pool
    armed = tmp_path / "hang"
    await register(stub, "fragile-hang", "question -> answer", "fragile", module_options=_options(hang_if=str(armed)))
    armed.touch()
    os.kill(_ready(workers)[0].pid, signal.SIGKILL)
    await eventually(lambda: any(key.startswith("fragile-hang#") for key in workers.quarantined), timeout_s=90)
    await eventually(lambda: len(_ready(workers)) == 2 and workers.healthy, timeout_s=60)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Execute(execute_request("fragile-hang", question="still stuck?"), timeout=15)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await stub.Execute(execute_request("qa", question="others still served"), timeout=15)).outputs["answer"]


# -- item 2: the simulated LM -------------------------------------------------------------------


async def test_a_dead_sim_lm_is_restarted_on_its_port(server):
    """SIGKILL of the simulated LM: health NOT_SERVING while it is down, then it listens on the same port again."""
    app, stub, channel = server
    sim = app.sim
    port, pid = sim.port, sim.pid
    sim.policy = dataclasses.replace(sim.policy, base_delay_s=1.0)  # a down window a health poll cannot miss
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: _is(channel, NOT_SERVING), timeout_s=20)
    await eventually(lambda: _is(channel, SERVING), timeout_s=30)
    assert sim.port == port and sim.pid != pid
    assert (await stub.Execute(execute_request("qa", question="after the restart"), timeout=15)).outputs["answer"]


async def _is(channel, status: int) -> bool:
    return await _health(channel) == status


# -- item 1: the zygote -------------------------------------------------------------------------


async def test_a_killed_zygote_is_relaunched_and_workers_respawned(server):
    """SIGKILL of the zygote: running and queued calls fail UNAVAILABLE at once, then a new zygote's workers serve."""
    app, stub, channel = server
    workers = app.pool.worker_pool
    old_zygote, old_workers = workers.zygote.pid, {h.pid for h in workers.handles()}
    restarts_before = (await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)).worker_restarts
    # 2 workers x 16 slots run 32; the other 8 wait in the queue.
    calls = [asyncio.ensure_future(stub.Execute(execute_request("sleepy", seconds=3.0), timeout=30)) for _ in range(40)]
    await eventually(lambda: workers.dispatcher.queue_depth > 0)
    os.kill(old_zygote, signal.SIGKILL)
    results = await asyncio.gather(*calls, return_exceptions=True)
    codes = collections.Counter(r.code() if isinstance(r, grpc.aio.AioRpcError) else type(r).__name__ for r in results)
    assert codes == {grpc.StatusCode.UNAVAILABLE: 40}
    try:
        await stub.Execute(execute_request("qa", question="while relaunching"), timeout=30)
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAVAILABLE  # refused at once, not left to its deadline
    await eventually(lambda: workers.zygote.pid not in (None, old_zygote) and len(_ready(workers)) == 2, timeout_s=90)
    await eventually(lambda: _is(channel, SERVING), timeout_s=10)
    assert not {h.pid for h in _ready(workers)} & old_workers
    assert (await stub.Execute(execute_request("qa", question="after the relaunch"), timeout=15)).outputs["answer"]
    # Monitoring sees it: the workers it took down count as restarts (they did not, so an alert on them missed it).
    assert (await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)).worker_restarts >= restarts_before + 2


# -- item 4: resize beside draining workers -----------------------------------------------------

CONCURRENCY = 4
SLEEPY = pb.ProgramSpec(name="sleepy", signature="seconds -> slept", module="sleepy")
BARE_CONFIG = wire.ZygoteConfig(lm="dummy", worker_concurrency=CONCURRENCY, program_modules=[CHAOS])


def _bare_settings(**overrides) -> PoolSettings:
    return PoolSettings(**{"workers": 2, "min_ready": 1, "worker_concurrency": CONCURRENCY, "boot_timeout_s": 30.0,
                           "ping_interval_s": 0.5, "stop_timeout_s": 3.0, **overrides})


def _sleepy_job(seconds: float, deadline_s: float = 30.0) -> Job:
    request = wire.WorkRequest(program_key="sleepy@bare")
    request.inputs.update({"seconds": seconds})
    return Job("sleepy@bare", SLEEPY.SerializeToString(), request, asyncio.get_running_loop().time() + deadline_s)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bare_pool():
    pool = WorkerPool(_bare_settings(), BARE_CONFIG)
    try:
        await asyncio.wait_for(pool.start(), 90)
        yield pool
    finally:
        await pool.stop()


async def test_scaling_up_beside_a_draining_worker_spawns_at_once_and_counts_no_restart(bare_pool):
    """resize(1) then resize(2) while the drained worker still runs calls: a worker starts at once; the drained exit is no restart."""
    pool = bare_pool
    calls = [asyncio.ensure_future(pool.dispatcher.run(_sleepy_job(1.5))) for _ in range(2 * CONCURRENCY)]
    await eventually(lambda: pool.dispatcher.in_flight == 2 * CONCURRENCY)
    restarts = pool.restarts
    pool.resize(1)
    draining = [h for h in pool.handles() if h.state is WorkerState.DRAINING]
    assert len(draining) == 1
    pool.resize(2)
    await asyncio.sleep(0)  # the spawn task runs up to its first wait
    assert [h.state for h in pool.handles() if h is not draining[0]].count(WorkerState.STARTING) == 1
    await asyncio.gather(*calls)
    await eventually(lambda: draining[0].state is WorkerState.STOPPED and len(_ready(pool)) == 2, timeout_s=30)
    assert pool.restarts == restarts


# -- item 1: a zygote that keeps dying ----------------------------------------------------------


async def test_a_zygote_that_keeps_dying_is_a_crash_loop():
    """Kill each relaunched zygote as soon as it exists (before it is ready): past max_attempts relaunches that never got
    ready the pool stops, logs crash_loop_detected and refuses calls at once."""
    pool = WorkerPool(_bare_settings(workers=1, zygote_restarts=RestartPolicy(max_attempts=2, base_delay_s=0.05, deaths_count=False)),
                      BARE_CONFIG)
    try:
        await asyncio.wait_for(pool.start(), 90)
        killed: set[int] = set()

        def kill_the_zygote() -> bool:
            pid = pool.zygote.pid
            if pid and pid not in killed:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            return pool.crash_looping

        with capture_logs() as logs:
            await eventually(kill_the_zygote, timeout_s=60, interval_s=0.01)
        assert len(killed) == 4  # the first (it was ready: not a failed start), then max_attempts + 1 that never got ready
        assert "crash_loop_detected" in [entry["event"] for entry in logs]
        assert not pool.healthy
        with pytest.raises(errors.PoolError) as caught:
            await pool.dispatcher.run(_sleepy_job(0.1))
        assert caught.value.kind is errors.ErrorKind.UNAVAILABLE
    finally:
        await pool.stop()


async def test_a_zygote_killed_after_it_was_ready_is_relaunched_however_often():
    """Kill the zygote once it is ready and serving, more often than max_attempts, each time soon after it came up (an
    OOM killer, an operator): it is relaunched every time and the pool serves again; no crash loop (it used to be left
    down, NOT_SERVING until a restart)."""
    pool = WorkerPool(_bare_settings(workers=1, zygote_restarts=RestartPolicy(max_attempts=2, base_delay_s=0.05, deaths_count=False)),
                      BARE_CONFIG)
    try:
        await asyncio.wait_for(pool.start(), 90)
        with capture_logs() as logs:
            for _ in range(4):
                await eventually(lambda: pool.healthy and _ready(pool), timeout_s=60)
                os.kill(pool.zygote.pid, signal.SIGKILL)
                await eventually(lambda: pool.zygote_down, timeout_s=10)
            await eventually(lambda: pool.healthy and _ready(pool), timeout_s=60)
        events = [entry["event"] for entry in logs]
        assert events.count("zygote_relaunched") == 4 and "crash_loop_detected" not in events
        assert not pool.crash_looping
        reply, _ = await pool.dispatcher.run(_sleepy_job(0.01))
        assert reply.outputs["slept"] == 0.01
    finally:
        await pool.stop()


# -- item 3: SIGTERM to the whole process group --------------------------------------------------


class _JsonLog:
    """Collects a child's JSON log lines from a thread; non-JSON lines are skipped."""

    def __init__(self, stream) -> None:
        self.events: list[dict] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._changed:
                self.events.append(event)
                self._changed.notify_all()
        with self._changed:
            self.events.append({"event": "<eof>"})
            self._changed.notify_all()

    def wait_for(self, name: str) -> dict:
        with self._changed:
            while True:
                for event in self.events:
                    if event.get("event") == name:
                        return event
                    if event.get("event") == "<eof>":
                        raise AssertionError(f"the process exited before logging {name}")
                self._changed.wait()


async def test_sigterm_to_the_process_group_drains_like_sigterm_to_the_front():
    """`kill -TERM -PGID`: in-flight calls succeed, nothing is respawned, the front exits 0 and no child survives it."""
    front = subprocess.Popen(
        [sys.executable, "-m", "dspy_pool.cli", "serve", "--state", "memory", "--lm", "sim", "--sim-latency", "fixed:2000", "--workers", "2",
         "--listen", "127.0.0.1:0", "--drain-grace-s", "20", "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    log = _JsonLog(front.stderr)
    try:
        serving = await asyncio.wait_for(asyncio.to_thread(log.wait_for, "server_serving"), 90)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{serving['port']}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            await register(stub, "qa", "question -> answer")
            calls = [asyncio.ensure_future(stub.Execute(execute_request("qa", question=f"in flight {i}"), timeout=60)) for i in range(8)]

            async def all_in_flight() -> bool:
                return (await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=5)).in_flight == 8

            await eventually(all_in_flight, timeout_s=20)  # each LM call takes 2 s: a window the poll cannot miss
            children = psutil.Process(front.pid).children(recursive=True)
            assert len(children) >= 4  # sim LM, zygote, two workers
            signalled_at = len(log.events)
            os.killpg(front.pid, signal.SIGTERM)
            replies = await asyncio.gather(*calls)
        assert all(reply.outputs["answer"] for reply in replies)
        assert await asyncio.to_thread(front.wait, 60) == 0
        after = [event.get("event") for event in log.events[signalled_at:]]
        assert "worker_spawned" not in after and "server_stopped" in after

        def survivors() -> list[int]:
            alive = []
            for child in children:
                try:
                    if child.status() != psutil.STATUS_ZOMBIE:
                        alive.append(child.pid)
                except psutil.NoSuchProcess:
                    pass
            return alive

        await eventually(lambda: not survivors(), timeout_s=10)
    finally:
        if front.poll() is None:
            os.killpg(front.pid, signal.SIGKILL)
            front.wait()
