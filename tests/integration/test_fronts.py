"""`dspy-pool serve --front-processes 2`: two real front processes on one port behave as one service.

Connections are spread by the kernel (SO_REUSEPORT), so each test opens its own
connections and asks each which front it reached (a front-scoped status).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import urllib.request

import grpc
import pytest
import pytest_asyncio

from dspy_pool.server.peers import SCOPE_FRONT, SCOPE_KEY
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import FRONTS_SERVING, ServeProcess, eventually, execute_request

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

FRONT_ONLY = ((SCOPE_KEY, SCOPE_FRONT),)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def group(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("fronts")
    server = ServeProcess("--front-processes", "2", "--workers", "2", "--state-dir", str(state_dir), "--metrics-port", "0",
                          "--optimizer-workers", "0", "--drain-grace-s", "10", ready=FRONTS_SERVING)
    try:
        await server.serving()
        yield server
    finally:
        server.stop()


async def front_of(stub) -> pb.FrontStatus:
    status = await stub.GetPoolStatus(pb.GetPoolStatusRequest(), metadata=FRONT_ONLY, timeout=10)
    assert len(status.fronts) == 1
    return status.fronts[0]


async def connections_to_each_front(port: int, count: int = 2, tries: int = 64) -> dict[int, tuple[grpc.aio.Channel, pb_grpc.DSPyPoolStub]]:
    """One connection (its own subchannel, so its own TCP connection) per front."""
    reached: dict[int, tuple] = {}
    for _ in range(tries):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.DSPyPoolStub(channel)
        index = (await front_of(stub)).index
        if index in reached:
            await channel.close()
            continue
        reached[index] = (channel, stub)
        if len(reached) == count:
            return reached
    raise AssertionError(f"{tries} connections reached only fronts {sorted(reached)}")


async def close_all(connections) -> None:
    for channel, _ in connections.values():
        await channel.close()


def metrics_text(server: ServeProcess) -> str:
    port = int(re.search(rb"fronts_serving.*?metrics_port=(\d+)", server.log).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


async def test_the_fronts_share_programs_sessions_and_one_status(group):
    connections = await connections_to_each_front(group.port)
    (_, first), (_, second) = connections[0], connections[1]
    try:
        status = await first.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)
        assert [(f.index, f.answered) for f in status.fronts] == [(0, True), (1, False)]
        assert sorted(w.front for w in status.workers) == [0, 1]  # --workers 2: one each
        assert status.config.workers == 2 and status.serving

        await first.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(
            name="chat", signature="question, history -> answer, turns", module="counts_history")), timeout=30)
        await first.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="qa", signature="question -> answer")), timeout=30)
        reply = await second.Execute(execute_request("qa", question="on the other front"), timeout=30)
        assert reply.program_version == 1 and reply.outputs["answer"]

        # Turn 1 on front 0, turn 2 on front 1: the second sees the first as history.
        await first.Execute(execute_request("chat", session_id="conv", question="t1"), timeout=30)
        later = await second.Execute(execute_request("chat", session_id="conv", question="t2"), timeout=30)
        assert later.outputs["turns"] == 1

        # Both fronts append to one session at once (one SQLite file, two processes): no turn is lost.
        await asyncio.gather(*(stub.Execute(execute_request("chat", session_id="busy", question=f"{name}{n}"), timeout=30)
                               for n in range(10) for name, stub in (("a", first), ("b", second))))
        session = await second.GetSession(pb.GetSessionRequest(session_id="busy"), timeout=10)
        assert sorted(t.inputs["question"] for t in session.turns) == sorted(f"{x}{n}" for n in range(10) for x in "ab")

        def both_fronts_counted() -> bool:  # each front's exporter reads its pool on the controller's tick
            text = metrics_text(group)
            return "dspy_pool_fronts 2.0" in text and all(
                re.search(rf'dspy_pool_calls_total\{{front="{i}",outcome="completed"\}} [1-9]', text) for i in (0, 1))

        await eventually(both_fronts_counted, timeout_s=10, interval_s=0.2)
    finally:
        await close_all(connections)


async def test_feedback_and_program_stats_reach_across_fronts(group):
    """A capture lives in the front that served the call; RecordFeedback on another front is passed to it, and
    GetProgramStats on any front counts every front's calls."""
    connections = await connections_to_each_front(group.port)
    (_, served), (_, other) = connections[0], connections[1]
    try:
        spec = pb.ProgramSpec(name="captured", signature="question -> answer", capture=pb.CapturePolicy(sample_rate=1.0))
        await served.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
        reply = await served.Execute(execute_request("captured", question="keep me"), timeout=30)
        feedback = await other.RecordFeedback(pb.RecordFeedbackRequest(request_id=reply.request_id, score=1.0, has_score=True),
                                              timeout=30)
        assert feedback.example_added and feedback.dataset == "captured-feedback"
        dataset = await served.GetDataset(pb.GetDatasetRequest(name="captured-feedback"), timeout=10)
        assert dataset.counts["train"] == 1
        with pytest.raises(grpc.aio.AioRpcError) as again:  # a capture is taken once, wherever the feedback lands
            await served.RecordFeedback(pb.RecordFeedbackRequest(request_id=reply.request_id, score=1.0, has_score=True), timeout=30)
        assert again.value.code() == grpc.StatusCode.NOT_FOUND
        # The call and its feedback were counted on the serving front; any front answers for the group.
        stats = await other.GetProgramStats(pb.GetProgramStatsRequest(program="captured"), timeout=10)
        assert [(a.version, a.calls, a.feedback_count) for a in stats.arms] == [(1, 1, 1)]
    finally:
        await close_all(connections)


async def test_a_killed_front_loses_only_its_own_calls_and_is_started_again(group):
    connections = await connections_to_each_front(group.port)
    (_, doomed), (_, survivor) = connections[0], connections[1]
    try:
        await survivor.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="sleepy", signature="seconds -> slept",
                                                                                      module="sleepy")), timeout=30)
        await doomed.Execute(execute_request("sleepy", seconds=0), timeout=30)  # front 0 knows it before the load starts
        victim = await front_of(doomed)
        on_doomed = [asyncio.ensure_future(doomed.Execute(execute_request("sleepy", seconds=1.5), timeout=30)) for _ in range(8)]
        on_survivor = [asyncio.ensure_future(survivor.Execute(execute_request("sleepy", seconds=1.5), timeout=30)) for _ in range(8)]

        async def both_busy():
            statuses = await asyncio.gather(front_of(doomed), front_of(survivor))
            return all(s.in_flight == 8 for s in statuses)

        await eventually(both_busy, timeout_s=10)

        async def restarted():
            status = await survivor.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)
            return [f.index for f in status.fronts] == [0, 1] and status.fronts[0].pid != victim.pid and status.fronts[0].serving

        async def new_connections_while_it_restarts() -> list[str]:
            """Calls on new connections (each its own TCP connection) until the front is back: the kernel may hand any
            of them to any front listening on the port, and one still starting answered "the server is starting"."""
            refused = []
            while not await restarted():
                async with grpc.aio.insecure_channel(f"127.0.0.1:{group.port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                    try:
                        await pb_grpc.DSPyPoolStub(channel).RegisterProgram(pb.RegisterProgramRequest(
                            spec=pb.ProgramSpec(name="sleepy", signature="seconds -> slept", module="sleepy")), timeout=30)
                    except grpc.aio.AioRpcError as error:
                        refused.append(f"{error.code().name}: {error.details()}")
            return refused

        os.kill(victim.pid, signal.SIGKILL)
        probing = asyncio.ensure_future(new_connections_while_it_restarts())

        survived = await asyncio.gather(*on_survivor)
        assert all(r.outputs["slept"] == 1.5 for r in survived)
        lost = await asyncio.gather(*on_doomed, return_exceptions=True)
        assert all(isinstance(e, grpc.aio.AioRpcError) and e.code() == grpc.StatusCode.UNAVAILABLE for e in lost), lost

        assert await asyncio.wait_for(probing, 60) == []
        fresh = await connections_to_each_front(group.port)
        try:
            replies = await asyncio.gather(*(stub.Execute(execute_request("sleepy", seconds=0), timeout=30) for _, stub in fresh.values()))
            assert len(replies) == 2
        finally:
            await close_all(fresh)
        assert "dspy_pool_front_restarts_total 1.0" in metrics_text(group)
    finally:
        await close_all(connections)


async def test_sigterm_drains_every_front_and_leaves_no_process(group):
    connections = await connections_to_each_front(group.port)
    try:
        status = await connections[0][1].GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)
        pids = [f.pid for f in status.fronts] + [w.pid for w in status.workers]
        calls = [asyncio.ensure_future(stub.Execute(execute_request("sleepy", seconds=1.0), timeout=30))
                 for _, stub in connections.values() for _ in range(4)]

        async def all_running():
            statuses = await asyncio.gather(*(front_of(stub) for _, stub in connections.values()))
            return all(s.in_flight == 4 for s in statuses)

        await eventually(all_running, timeout_s=10)
        group.process.send_signal(signal.SIGTERM)
        assert all(r.outputs["slept"] == 1.0 for r in await asyncio.gather(*calls))
        assert await asyncio.to_thread(group.process.wait, 30) == 0

        def gone(pid: int) -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        await eventually(lambda: all(gone(pid) for pid in pids), timeout_s=10)
    finally:
        await close_all(connections)


async def test_sigterm_while_the_fronts_start_stops_the_group(tmp_path):
    server = ServeProcess("--front-processes", "2", "--state-dir", str(tmp_path), "--optimizer-workers", "0",
                          ready=re.compile(rb"server_starting.*?(\d+)"))  # front 0 is on its way: stop before the group serves
    try:
        await server.serving()
        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.process.wait, 30) == 0
        assert b"fronts_serving" not in server.log
    finally:
        server.stop()


async def test_a_job_running_on_one_front_is_watched_and_cancelled_from_another(tmp_path):
    """StartOptimization on front 0 runs there; front 1 streams its progress (from the store) and cancels it (through front 0)."""
    from .test_optimization import start_running_job

    server = ServeProcess("--front-processes", "2", "--state-dir", str(tmp_path), "--optimizer-workers", "1", "--lm", "sim",
                          # 20 ms per LM call: the job still runs when the cancel comes, even on a loaded machine
                          # (at 0 ms it could finish first, and the stream would end "succeeded").
                          "--sim-latency", "fixed:20", ready=FRONTS_SERVING)
    try:
        await server.serving()
        connections = await connections_to_each_front(server.port)
        (_, runner), (_, other) = connections[0], connections[1]
        try:
            job_id = await start_running_job(runner, other, setup=True)
            seen: list[str] = []
            first = asyncio.Event()

            async def watch_from_the_other_front():
                async for job in other.WatchOptimization(pb.GetOptimizationRequest(job_id=job_id), timeout=60):
                    seen.append(job.state)
                    first.set()

            watching = asyncio.ensure_future(watch_from_the_other_front())
            await asyncio.wait_for(first.wait(), 30)  # the stream is open before the cancel
            await other.CancelOptimization(pb.CancelOptimizationRequest(job_id=job_id), timeout=10)
            await asyncio.wait_for(watching, 30)
            assert seen[0] == "running" and seen[-1] == "cancelled"
        finally:
            await close_all(connections)
    finally:
        server.stop()


async def test_a_hung_front_is_shown_not_serving_then_killed_and_started_again(tmp_path):
    """SIGSTOP one front: another front's status lists it as not answering at once; the supervisor's health checks
    find it silent for --hang-timeout-s, kill it (front_hung) and start it again; then both fronts serve."""
    server = ServeProcess("--front-processes", "2", "--state-dir", str(tmp_path), "--optimizer-workers", "0", "--hang-timeout-s", "3",
                          ready=FRONTS_SERVING)
    try:
        await server.serving()
        connections = await connections_to_each_front(server.port)
        (_, hung), (_, other) = connections[0], connections[1]
        try:
            await other.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="qa", signature="question -> answer")),
                                        timeout=30)
            victim = await front_of(hung)
            os.kill(victim.pid, signal.SIGSTOP)

            # A peer that does not answer costs one peer timeout (1 s), and is listed rather than left out.
            status = await other.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=5)
            assert [(f.index, f.pid, f.serving, f.answered) for f in status.fronts] == [(0, 0, False, False), (1, status.fronts[1].pid, True, True)]

            async def started_again():
                status = await other.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=5)
                front = status.fronts[0]
                return front.pid not in (0, victim.pid) and front.serving

            await eventually(started_again, timeout_s=30, interval_s=0.2)
            assert re.search(rb"front_hung.*index=0", server.log), server.log.decode(errors="replace")[-3000:]
            with pytest.raises(ProcessLookupError):  # killed and reaped, not merely continued
                os.kill(victim.pid, 0)
            fresh = await connections_to_each_front(server.port)
            try:
                replies = await asyncio.gather(*(stub.Execute(execute_request("qa", question="again"), timeout=30)
                                                 for _, stub in fresh.values()))
                assert all(reply.outputs["answer"] for reply in replies)
            finally:
                await close_all(fresh)
        finally:
            await close_all(connections)
    finally:
        server.stop()
