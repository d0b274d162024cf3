"""Program statistics outlive the process and are shared by replicas: what each version served and the feedback it
got (GetProgramStats, the triggers) were in one front's memory and were lost at every restart or deploy, so an A/B
test of two versions started again from nothing each time."""

from __future__ import annotations

import asyncio

import pytest

from dspy_pool.state import StatsCount
from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import eventually, execute_request, running_app

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

REDIS_DB = 9  # this module's own database on the shared test server


def _arms(stats: pb.ProgramStats) -> dict:
    return {(arm.version, arm.arm): (arm.calls, arm.errors, arm.feedback_count, round(arm.feedback_score_mean, 3))
            for arm in stats.arms}


async def test_a_versions_figures_survive_a_restart(tmp_path):
    """Four calls and one feedback score, then a restart on the same state file: GetProgramStats still shows them."""
    state = f"sqlite:///{tmp_path}/state.db"
    spec = pb.ProgramSpec(name="qa", signature="question -> answer", capture=pb.CapturePolicy(sample_rate=1.0))
    async with running_app(state=state, workers=1) as (_, stub, _):
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
        replies = [await stub.Execute(execute_request("qa", question=f"q{i}"), timeout=20) for i in range(4)]
        await stub.RecordFeedback(pb.RecordFeedbackRequest(request_id=replies[0].request_id, score=0.5, has_score=True), timeout=10)
        before = _arms(await stub.GetProgramStats(pb.GetProgramStatsRequest(program="qa"), timeout=10))
    assert before == {(1, "traditional"): (4, 0, 1, 0.5)}
    async with running_app(state=state, workers=1) as (app, stub, _):
        after = _arms(await stub.GetProgramStats(pb.GetProgramStatsRequest(program="qa"), timeout=10))
        assert app.service.stats.all() == {}  # Prometheus's counters are this process's: none yet
    assert after == before


async def test_a_deleted_versions_figures_do_not_come_back_after_a_restart(tmp_path):
    state = f"sqlite:///{tmp_path}/state.db"
    async with running_app(state=state, workers=1) as (_, stub, _):
        for instructions in ("first", "second"):
            spec = pb.ProgramSpec(name="qa", signature="question -> answer", instructions=instructions)
            version = (await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)).version
            request = execute_request("qa", question="q")
            request.version = version
            await stub.Execute(request, timeout=20)
        await stub.DeleteProgram(pb.DeleteProgramRequest(name="qa", version=1), timeout=10)
    async with running_app(state=state, workers=1) as (_, stub, _):
        assert _arms(await stub.GetProgramStats(pb.GetProgramStatsRequest(program="qa"), timeout=10)) == {(2, "version"): (1, 0, 0, 0.0)}


async def test_replicas_on_one_redis_show_every_replicas_calls(redis_server):
    """Three calls on A, two on B: once both have synced (every 5 s; asked directly here), each shows five."""
    state = f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}"
    async with running_app(state=state, workers=1) as (app_a, stub_a, _), \
               running_app(state=state, workers=1) as (app_b, stub_b, _):
        await stub_a.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="shared", signature="question -> answer")),
                                     timeout=30)
        for stub, count in ((stub_a, 3), (stub_b, 2)):
            for i in range(count):
                await stub.Execute(execute_request("shared", question=f"q{i}"), timeout=20)
        for app in (app_a, app_b, app_a):
            assert await app.stats_sync.sync()
        for stub in (stub_a, stub_b):
            stats = await stub.GetProgramStats(pb.GetProgramStatsRequest(program="shared"), timeout=10)
            assert _arms(stats) == {(1, "traditional"): (5, 0, 0, 0.0)}


async def test_calls_in_flight_when_their_program_is_deleted_leave_nothing_behind(tmp_path):
    """Calls still running when their program is deleted finish, and make no breaker, statistic or store row for it
    again (a soak found 226 breakers and 251 stored statistics of 300 deleted programs)."""
    state = f"sqlite:///{tmp_path}/state.db"
    async with running_app(state=state, workers=1) as (app, stub, _):
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="doomed", signature="seconds -> slept",
                                                                                   module="sleepy")), timeout=30)
        calls = [asyncio.ensure_future(stub.Execute(execute_request("doomed", seconds=0.5), timeout=20)) for _ in range(4)]
        await eventually(lambda: app.pool.worker_pool.dispatcher.in_flight == 4)
        await stub.DeleteProgram(pb.DeleteProgramRequest(name="doomed"), timeout=10)
        await asyncio.gather(*calls, return_exceptions=True)
        assert await app.stats_sync.sync()
        status = await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)
        assert [b.program for b in status.breakers if b.program == "doomed"] == []
        assert [key for key in app.service.stats.all() if key[0] == "doomed"] == []
        assert [count for count in await app.store.load_stats() if count.program == "doomed"] == []


async def test_counts_a_replica_added_to_a_deleted_version_are_not_shown(tmp_path):
    """Another replica may add counts for a version deleted meanwhile (its calls finished before it saw the delete);
    GetProgramStats shows only versions that exist."""
    async with running_app(state=f"sqlite:///{tmp_path}/state.db", workers=1) as (app, stub, _):
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="qa", signature="question -> answer")), timeout=30)
        await stub.Execute(execute_request("qa", question="q"), timeout=20)
        # Version 7 was never here: the store drops its counts, and were they read, GetProgramStats would not show them.
        app.stats_sync.stats.stored([StatsCount("qa", 7, "traditional", calls=3)])
        assert _arms(await stub.GetProgramStats(pb.GetProgramStatsRequest(program="qa"), timeout=10)) == {
            (1, "traditional"): (1, 0, 0, 0.0)}


async def test_feedback_examples_count_toward_a_trigger_across_a_restart(tmp_path):
    """after_feedback_examples=3: two examples, a restart, one more: the job starts (the count was this process's, so
    the restart began it again from 0); a restart right after does not start another within min_interval_s."""
    from .test_optimization import METRIC, _examples

    state = f"sqlite:///{tmp_path}/state.db"
    settings = dict(state=state, workers=1, optimizer_workers=1, auto_optimize_tick_s=0.1)
    spec = pb.ProgramSpec(name="coder", signature="word -> code", capture=pb.CapturePolicy(sample_rate=1.0, dataset="words"))
    template = pb.StartOptimizationRequest(dataset="words", optimizer="labeled_few_shot", metric=METRIC)

    async def give_examples(stub, words: list[str]) -> None:
        for word in words:
            reply = await stub.Execute(execute_request("coder", word=word), timeout=20)
            await stub.RecordFeedback(pb.RecordFeedbackRequest(request_id=reply.request_id,
                                                               expected_outputs=_examples("dev")[0].outputs), timeout=10)

    async def jobs(stub) -> list:
        return list((await stub.ListOptimizations(pb.ListOptimizationsRequest(program="coder"), timeout=10)).jobs)

    async with running_app(**settings) as (app, stub, _):
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
        for split in ("train", "dev"):
            await stub.AddExamples(pb.AddExamplesRequest(dataset="words", split=split, examples=_examples(split)), timeout=30)
        await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(
            program="coder", auto_optimize=pb.AutoOptimize(job=template, after_feedback_examples=3, min_interval_s=3600))), timeout=10)
        await give_examples(stub, ["melon", "grape"])
        await asyncio.sleep(0.5)  # five trigger ticks: two examples start nothing
        assert await jobs(stub) == []
    async with running_app(**settings) as (_, stub, _):
        await give_examples(stub, ["lemon"])
        await eventually(lambda: jobs(stub), timeout_s=20)
    async with running_app(**settings) as (_, stub, _):
        await give_examples(stub, ["peach", "mango", "plum"])
        await asyncio.sleep(0.5)  # five trigger ticks: min_interval_s holds across the restart
        assert len(await jobs(stub)) == 1
