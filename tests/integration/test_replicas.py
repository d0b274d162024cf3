"""Two real `dspy-pool serve` processes on one real Redis behave as one service."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import grpc
import pytest

from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import ServeProcess, eventually, execute_request

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

REDIS_DB = 7  # this module's own database on the shared test server


def _redis_command(port: int, *words: str) -> bytes:
    """One raw RESP command (the test's own tool, independent of the code under test)."""
    payload = f"*{len(words)}\r\n" + "".join(f"${len(word)}\r\n{word}\r\n" for word in words)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload.encode())
        return sock.recv(256)


async def _stub_for(server: ServeProcess):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return channel, pb_grpc.DSPyPoolStub(channel)


async def test_two_replicas_share_programs_and_sessions_and_survive_each_other_and_redis(redis_server):
    """Register on A, run on B; a session's turns on A then B; concurrent appends from both; kill -9 A; a Redis outage."""
    state = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    replica_a, replica_b = ServeProcess("--state", state), ServeProcess("--state", state)
    try:
        await asyncio.gather(replica_a.serving(), replica_b.serving())
        channel_a, stub_a = await _stub_for(replica_a)
        channel_b, stub_b = await _stub_for(replica_b)

        # A program registered on A is served by B (B refreshes when it does not know the name yet).
        await stub_a.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(
            name="chat", signature="question, history -> answer, turns", module="counts_history")), timeout=30)
        await stub_a.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="qa", signature="question -> answer")), timeout=30)
        reply = await stub_b.Execute(execute_request("qa", question="from B"), timeout=30)
        assert reply.program_version == 1

        # A deletion on A disappears from B's listing by its own refresh (versioned reads), no call needed.
        await stub_a.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="doomed", signature="a -> b")), timeout=30)
        await stub_a.DeleteProgram(pb.DeleteProgramRequest(name="doomed"), timeout=10)

        async def b_forgot_doomed():
            listed = await stub_b.ListPrograms(pb.ListProgramsRequest(), timeout=5)
            return "doomed" not in [p.spec.name for p in listed.programs] and "chat" in [p.spec.name for p in listed.programs]

        await eventually(b_forgot_doomed, timeout_s=5, interval_s=0.05)

        # Turn 1 on A, turn 2 on B: B's call sees A's turn as history.
        await stub_a.Execute(execute_request("chat", session_id="conv", question="t1"), timeout=30)
        second = await stub_b.Execute(execute_request("chat", session_id="conv", question="t2"), timeout=30)
        assert second.outputs["turns"] == 1

        # Both replicas append to one session at once: no turn is lost.
        calls = [stub.Execute(execute_request("chat", session_id="busy", question=f"{name}{n}"), timeout=30)
                 for n in range(10) for name, stub in (("a", stub_a), ("b", stub_b))]
        await asyncio.gather(*calls)
        session = await stub_a.GetSession(pb.GetSessionRequest(session_id="busy"), timeout=10)
        assert sorted(turn.inputs["question"] for turn in session.turns) == sorted(f"{x}{n}" for n in range(10) for x in "ab")

        # kill -9 of A under load: B keeps serving, and nothing registered is lost.
        load = [asyncio.ensure_future(stub_b.Execute(execute_request("qa", question=f"q{n}"), timeout=30)) for n in range(20)]
        replica_a.kill9()
        await channel_a.close()
        assert all(r.outputs["answer"] for r in await asyncio.gather(*load))
        listed = await stub_b.ListPrograms(pb.ListProgramsRequest(all_versions=True), timeout=10)
        assert sorted(p.spec.name for p in listed.programs) == ["chat", "qa"]

        # Redis down: known programs keep serving, writes are UNAVAILABLE saying why; back: all works again.
        _redis_command(redis_server.port, "SAVE")  # persistence is off in tests: keep this data across the restart
        redis_server.stop()
        try:
            during = await stub_b.Execute(execute_request("qa", question="redis is down"), timeout=30)
            assert during.outputs["answer"]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub_b.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="new", signature="a -> b")), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "state store is unreachable" in refused.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as session_refused:
                await stub_b.Execute(execute_request("chat", session_id="conv", question="t3"), timeout=30)
            assert session_refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            redis_server.start()

        async def session_works_again():
            try:
                reply = await stub_b.Execute(execute_request("chat", session_id="conv", question="t3"), timeout=10)
            except grpc.aio.AioRpcError:
                return False
            return reply.outputs["turns"] == 2

        await eventually(session_works_again, timeout_s=15, interval_s=0.2)
        added = await stub_b.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="new", signature="a -> b")), timeout=30)
        assert added.version == 1
        await channel_b.close()
    finally:
        replica_a.stop()
        replica_b.stop()


def _job_replica_args(redis_server, db: int) -> tuple[str, ...]:
    """A replica that runs optimization jobs, on database `db`; 20 ms per LM call keeps a job running."""
    return ("--state", f"redis://127.0.0.1:{redis_server.port}/{db}", "--optimizer-workers", "1", "--lm", "sim",
            "--sim-latency", "fixed:20")


@contextlib.asynccontextmanager
async def _stopped_after(replicas: list[ServeProcess], channels: list):
    """Closes the channels and stops the replicas (those in the lists when the block ends) however it ends."""
    try:
        yield
    finally:
        for channel in channels:
            await channel.close()
        for replica in replicas:
            replica.stop()


async def test_a_job_running_on_one_replica_is_cancelled_from_another(redis_server):
    """StartOptimization on A runs there; CancelOptimization on B (no peers between replicas) stops it through the store.

    Before, B answered the job as it stood and A ran it to the end.
    """
    from .test_optimization import start_running_job

    args = _job_replica_args(redis_server, REDIS_DB + 1)  # its own database: the test above kills replicas and Redis in its
    replicas, channels = [ServeProcess(*args)], []
    async with _stopped_after(replicas, channels):
        await replicas[0].serving()
        channel_a, stub_a = await _stub_for(replicas[0])
        channels.append(channel_a)
        job_id = await start_running_job(stub_a, setup=True)
        replicas.append(ServeProcess(*args))  # started only now: the job is A's, and B's runner never takes a leased job
        await replicas[1].serving()
        channel_b, stub_b = await _stub_for(replicas[1])
        channels.append(channel_b)
        await stub_b.CancelOptimization(pb.CancelOptimizationRequest(job_id=job_id), timeout=10)

        async def cancelled():
            job = await stub_b.GetOptimization(pb.GetOptimizationRequest(job_id=job_id), timeout=10)
            return job.state == "cancelled"

        await eventually(cancelled, timeout_s=30, interval_s=0.2)


async def test_a_job_queued_on_a_replica_that_dies_is_run_by_another(redis_server):
    """Jobs queue in the store, not in the replica that took them: a job queued behind a running one on A, which is
    then killed, is run by B (before, it stayed queued for ever, and an identical start got the stuck job back)."""
    from .test_optimization import METRIC, start_running_job

    args = _job_replica_args(redis_server, REDIS_DB + 2)
    replica_a, replica_b = ServeProcess(*args), ServeProcess(*args)  # both up before any job: B learns of it from the store
    channels = []
    async with _stopped_after([replica_a, replica_b], channels):
        await asyncio.gather(replica_a.serving(), replica_b.serving())
        (channel_a, stub_a), (channel_b, stub_b) = await _stub_for(replica_a), await _stub_for(replica_b)
        channels += [channel_a, channel_b]
        await start_running_job(stub_a, setup=True)
        queued = await stub_a.StartOptimization(pb.StartOptimizationRequest(
            program="coder", dataset="words", optimizer="labeled_few_shot", metric=METRIC), timeout=10)
        assert queued.state == "queued"
        replica_a.kill9()  # with its running job and the one queued behind it

        async def state_of(job_id: str) -> str:
            return (await stub_b.GetOptimization(pb.GetOptimizationRequest(job_id=job_id), timeout=10)).state

        async def queued_one_done():
            return await state_of(queued.job_id) == "succeeded"

        await eventually(queued_one_done, timeout_s=60, interval_s=0.3)


async def test_a_fallback_program_registered_on_one_replica_can_be_named_at_once_on_another(redis_server):
    """Registering on B a program whose fallback program A registered a moment ago: B looks again before refusing (it
    said "not registered" for ~0.2 s, until its poll); deleting that fallback program on A is then refused."""
    from .harness import running_app

    state = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB + 3}"
    async with running_app(state=state, workers=1) as (_, stub_a, _), running_app(state=state, workers=1) as (_, stub_b, _):
        for round_ in range(5):
            small = pb.ProgramSpec(name=f"small{round_}", signature="question -> answer")
            await stub_a.RegisterProgram(pb.RegisterProgramRequest(spec=small), timeout=30)
            qa = pb.ProgramSpec(name=f"qa{round_}", signature="question -> answer",
                                fallback=pb.FallbackSpec(chain=["program"], program=f"small{round_}"))
            await stub_b.RegisterProgram(pb.RegisterProgramRequest(spec=qa), timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub_a.DeleteProgram(pb.DeleteProgramRequest(name=f"small{round_}"), timeout=10)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, refused.value.details()
