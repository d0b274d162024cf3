"""Background optimization end to end: datasets, jobs on optimizer workers, scored versions, promotion, execution modes.

One server per module (simulated LM over HTTP, one optimizer worker); every job runs DSPy's real
optimizer against the simulated LM's learnable task (dspy_pool/simlm/learnable.py).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import time

import grpc
import pytest
import pytest_asyncio
import structlog

from dspy_pool.optimize_cli import read_examples
from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import eventually, execute_request, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(180)]

DATASET = pathlib.Path(__file__).resolve().parents[2] / "examples" / "optimize" / "dataset.jsonl"
SPEC = pb.ProgramSpec(name="coder", signature="word -> code")
METRIC = pb.MetricSpec(kind="exact_match", fields=["code"])


def _examples(split: str) -> list[pb.Example]:
    return read_examples(str(DATASET), "", None)[split]  # as `dspy-pool datasets add` reads it


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with running_app(optimizer_workers=1, sim_latency="fixed:0", worker_concurrency=64, max_queue=1000,
                           auto_optimize_tick_s=0.1) as running:
        app, stub, _ = running
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=SPEC), timeout=30)
        for split in ("train", "dev"):
            await stub.AddExamples(pb.AddExamplesRequest(dataset="words", split=split, examples=_examples(split)), timeout=30)
        await eventually(lambda: app.pool.worker_pool.optimizer_handles(), timeout_s=30)
        yield running


async def _finished(stub, job_id: str, timeout_s: float = 120.0) -> pb.OptimizationJob:
    async def done():
        job = await stub.GetOptimization(pb.GetOptimizationRequest(job_id=job_id), timeout=10)
        return job if job.state not in ("queued", "running") else None

    return await eventually(done, timeout_s=timeout_s, interval_s=0.1)


async def start_running_job(stub, watcher=None, *, setup: bool = False, interval_s: float = 0.1) -> str:
    """Start a MIPROv2 job on `stub` and return its id once it runs and has called the LM (as seen from `watcher`,
    by default `stub`). With setup, first register SPEC and add the "words" dataset."""
    if setup:
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=SPEC), timeout=30)
        for split in ("train", "dev"):
            await stub.AddExamples(pb.AddExamplesRequest(dataset="words", split=split, examples=_examples(split)), timeout=30)
    started = await stub.StartOptimization(pb.StartOptimizationRequest(
        program="coder", dataset="words", optimizer="mipro_v2", metric=METRIC, seed=11), timeout=10)
    watcher = watcher or stub

    async def running():
        job = await watcher.GetOptimization(pb.GetOptimizationRequest(job_id=started.job_id), timeout=10)
        return job.state == "running" and job.progress.lm_calls > 0

    await eventually(running, timeout_s=60, interval_s=interval_s)
    return started.job_id


async def _error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_datasets_count_splits_and_hash_their_content(server):
    """GetDataset counts each split and hashes the content; a bad example is INVALID_ARGUMENT naming its index."""
    _, stub, _ = server
    dataset = await stub.GetDataset(pb.GetDatasetRequest(name="words"), timeout=10)
    assert dict(dataset.counts) == {"train": len(_examples("train")), "dev": len(_examples("dev"))} and dataset.content_hash
    bad = pb.Example()
    bad.inputs.update({"word": "x"})
    error = await _error(stub.AddExamples(pb.AddExamplesRequest(dataset="words", split="train", examples=[_examples("train")[0], bad]), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "examples[1].outputs" in error.details()


async def test_a_job_makes_a_better_version_that_auto_promotion_serves_in_optimized_mode(server):
    """bootstrap_few_shot on the learnable task: a new version scoring above the base, promoted, served in optimized mode."""
    _, stub, _ = server
    await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(
        program="coder", mode="optimized", promotion="auto", min_improvement=0.1, min_dev_examples=10)), timeout=10)
    with structlog.testing.capture_logs() as logs:
        started = await stub.StartOptimization(pb.StartOptimizationRequest(
            program="coder", dataset="words", optimizer="bootstrap_few_shot", metric=METRIC), timeout=10)
        job = await _finished(stub, started.job_id)
    assert job.state == "succeeded", job.error
    output = [entry["line"] for entry in logs if entry.get("event") == "worker_output"]
    assert output and not [line for line in output if "it/s]" in line]  # DSPy's own lines, no progress bars
    result = job.result
    assert result.optimized_score > result.baseline_score and result.promoted and result.version == 2
    program = await stub.GetProgram(pb.GetProgramRequest(name="coder", version=result.version), timeout=10)
    assert program.meta.job_id == started.job_id and program.meta.optimizer == "bootstrap_few_shot"
    assert program.meta.optimized_score == pytest.approx(result.optimized_score)
    reply = await stub.Execute(execute_request("coder", word="apple"), timeout=30)
    assert (reply.program_version, reply.execution_mode) == (result.version, "optimized")
    traditional = await stub.Execute(pb.ExecuteRequest(program="coder", mode="traditional", inputs=execute_request("coder", word="apple").inputs), timeout=30)
    assert (traditional.program_version, traditional.execution_mode) == (1, "traditional")


async def test_an_identical_start_returns_the_same_job(server):
    """Starting a job identical to a finished one returns that job (reused), not a new optimization."""
    _, stub, _ = server
    request = pb.StartOptimizationRequest(program="coder", dataset="words", optimizer="bootstrap_few_shot", metric=METRIC)
    again = await stub.StartOptimization(request, timeout=10)
    assert again.reused and again.state == "succeeded"


async def test_hybrid_splits_calls_by_percentage_and_sticky_sessions_keep_their_arm(server):
    """hybrid 30%: 400 calls land within 30% +- 10 on the optimized version; a sticky session never changes arm."""
    _, stub, _ = server
    await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(
        program="coder", mode="hybrid", hybrid_percent=30, sticky_sessions=True, optimized_version=2)), timeout=10)
    replies = await asyncio.gather(*(stub.Execute(execute_request("coder", word=f"w{n}"), timeout=60) for n in range(400)))
    optimized = sum(reply.execution_mode == "hybrid:optimized" for reply in replies)
    assert 80 <= optimized <= 160, optimized
    for session in ("s-a", "s-b", "s-c"):
        modes = {(await stub.Execute(execute_request("coder", session_id=session, word=f"x{k}"), timeout=30)).execution_mode for k in range(5)}
        assert len(modes) == 1, modes


async def test_evaluation_mode_returns_both_versions(server):
    """evaluation: the base answers and the response carries the promoted version's outputs, version and score."""
    _, stub, _ = server
    request = execute_request("coder", word="banana")
    request.mode = "evaluation"
    reply = await stub.Execute(request, timeout=30)
    assert reply.execution_mode == "evaluation" and reply.program_version == 1
    assert reply.evaluation.version == 2 and "code" in reply.evaluation.outputs and reply.evaluation.score > 0
    stats = await stub.GetProgramStats(pb.GetProgramStatsRequest(program="coder"), timeout=10)
    assert {(arm.version, arm.arm) for arm in stats.arms} >= {(1, "evaluation"), (2, "evaluation")}


async def test_a_budget_of_lm_calls_stops_the_job_and_is_never_exceeded(server):
    """max_lm_calls 75 (60 go to scoring base and result on dev): the job stops at the budget, budget_limited, within it."""
    _, stub, _ = server
    too_small = pb.StartOptimizationRequest(program="coder", dataset="words", optimizer="bootstrap_few_shot_with_random_search",
                                            metric=METRIC, budget=pb.OptimizationBudget(max_lm_calls=15), seed=7)
    error = await _error(stub.StartOptimization(too_small, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "at least 60" in error.details()
    started = await stub.StartOptimization(pb.StartOptimizationRequest(
        program="coder", dataset="words", optimizer="bootstrap_few_shot_with_random_search", metric=METRIC,
        budget=pb.OptimizationBudget(max_lm_calls=75), seed=7), timeout=10)
    job = await _finished(stub, started.job_id)
    assert job.state == "succeeded", job.error
    assert job.result.budget_limited and job.result.lm_calls <= 75


async def test_cancel_stops_a_running_job_within_two_seconds(server):
    """A running MIPROv2 job cancelled ends cancelled, promptly."""
    _, stub, _ = server
    job_id = await start_running_job(stub, interval_s=0.05)
    asked = time.monotonic()
    await stub.CancelOptimization(pb.CancelOptimizationRequest(job_id=job_id), timeout=10)
    job = await _finished(stub, job_id, timeout_s=10)
    took = time.monotonic() - asked
    assert job.state == "cancelled"
    print(f"cancel took {took:.2f}s")


async def test_killing_the_optimizer_worker_fails_its_job_and_serving_goes_on(server):
    """SIGKILL of the optimizer worker mid-job: the job fails saying so, every serving call meanwhile succeeds, a new worker comes."""
    app, stub, _ = server
    started = await stub.StartOptimization(pb.StartOptimizationRequest(
        program="coder", dataset="words", optimizer="mipro_v2", metric=METRIC, seed=13), timeout=10)

    async def running():
        job = await stub.GetOptimization(pb.GetOptimizationRequest(job_id=started.job_id), timeout=10)
        return job.state == "running"

    await eventually(running, timeout_s=60, interval_s=0.05)
    (victim,) = app.pool.worker_pool.optimizer_handles()
    calls = asyncio.gather(*(stub.Execute(pb.ExecuteRequest(program="coder", mode="traditional", inputs=execute_request("coder", word=f"k{n}").inputs), timeout=30) for n in range(40)))
    os.kill(victim.pid, signal.SIGKILL)
    assert all(reply.outputs["code"] for reply in await calls)
    job = await _finished(stub, started.job_id, timeout_s=20)
    assert job.state == "failed" and "optimizer worker died" in job.error
    await eventually(lambda: [h for h in app.pool.worker_pool.optimizer_handles() if h.pid != victim.pid], timeout_s=30)


async def test_bad_requests_are_invalid_argument(server):
    """Unknown optimizer option, unknown metric, an empty dataset: INVALID_ARGUMENT; unknown program or dataset: NOT_FOUND."""
    _, stub, _ = server
    options = pb.StartOptimizationRequest(program="coder", dataset="words", optimizer="bootstrap_few_shot", metric=METRIC)
    options.options.update({"no_such_option": 1})
    assert (await _error(stub.StartOptimization(options, timeout=10))).code() == grpc.StatusCode.INVALID_ARGUMENT
    metric = pb.StartOptimizationRequest(program="coder", dataset="words", optimizer="bootstrap_few_shot", metric=pb.MetricSpec(kind="vibes"))
    assert (await _error(stub.StartOptimization(metric, timeout=10))).code() == grpc.StatusCode.INVALID_ARGUMENT
    await stub.AddExamples(pb.AddExamplesRequest(dataset="train-only", split="train", examples=_examples("train")[:3]), timeout=10)
    empty = pb.StartOptimizationRequest(program="coder", dataset="train-only", optimizer="labeled_few_shot", metric=METRIC)
    error = await _error(stub.StartOptimization(empty, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "dev" in error.details()
    missing = pb.StartOptimizationRequest(program="coder", dataset="nope", optimizer="labeled_few_shot", metric=METRIC)
    assert (await _error(stub.StartOptimization(missing, timeout=10))).code() == grpc.StatusCode.NOT_FOUND
    # A metric field the program does not output would score every example 0 after spending the whole budget.
    typo = pb.StartOptimizationRequest(program="coder", dataset="words", optimizer="labeled_few_shot",
                                       metric=pb.MetricSpec(kind="exact_match", fields=["cod"]))
    error = await _error(stub.StartOptimization(typo, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'cod'" in error.details() and "outputs: code" in error.details()


async def test_promotion_under_load_fails_no_call(server):
    """64 calls in flight while the policy flips between versions 20 times: every call succeeds."""
    _, stub, _ = server
    stop = asyncio.Event()

    async def client(n: int) -> int:
        done = 0
        while not stop.is_set():
            reply = await stub.Execute(execute_request("coder", word=f"load{n}-{done}"), timeout=30)
            assert reply.outputs["code"]
            done += 1
        return done

    clients = [asyncio.ensure_future(client(n)) for n in range(64)]
    for flip in range(20):
        await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(
            program="coder", mode="optimized", optimized_version=2 if flip % 2 == 0 else 1)), timeout=10)
        await asyncio.sleep(0.05)  # the flips' cadence under load, not a wait for a condition
    stop.set()
    assert sum(await asyncio.gather(*clients)) > 64


async def test_optimized_mode_waits_for_a_pending_first_optimization_then_runs_the_base(server):
    """optimized mode, nothing promoted, a job running: the call waits max_optimization_wait_ms, then the base answers, saying so."""
    _, stub, _ = server
    await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="coder_pending", signature="word -> code")), timeout=30)
    await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(program="coder_pending", mode="optimized")), timeout=10)
    started = await stub.StartOptimization(pb.StartOptimizationRequest(
        program="coder_pending", dataset="words", optimizer="mipro_v2", metric=METRIC, seed=17), timeout=10)
    try:
        request = execute_request("coder_pending", word="cherry")
        request.max_optimization_wait_ms = 200
        reply = await stub.Execute(request, timeout=30)
        assert (reply.execution_mode, reply.fallback_reason, reply.program_version) == ("traditional", "optimization_pending", 1)
    finally:
        await stub.CancelOptimization(pb.CancelOptimizationRequest(job_id=started.job_id), timeout=10)
        await _finished(stub, started.job_id, timeout_s=20)


async def test_a_job_running_when_the_server_stops_is_interrupted_after_a_restart(tmp_path):
    """Job state lives in the store: a job that was running when the server stopped is marked interrupted on restart."""
    from dspy_pool.server.app import App

    from .harness import make_config

    config = make_config(state=f"sqlite:///{tmp_path}/state.db", optimizer_workers=1, sim_latency="fixed:0", workers=1)
    app = App(config)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

            stub = pb_grpc.DSPyPoolStub(channel)
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=SPEC), timeout=30)
            for split in ("train", "dev"):
                await stub.AddExamples(pb.AddExamplesRequest(dataset="words", split=split, examples=_examples(split)), timeout=30)
            await eventually(lambda: app.pool.worker_pool.optimizer_handles(), timeout_s=30)
            started = await stub.StartOptimization(pb.StartOptimizationRequest(
                program="coder", dataset="words", optimizer="mipro_v2", metric=METRIC), timeout=10)

            async def running():
                return (await stub.GetOptimization(pb.GetOptimizationRequest(job_id=started.job_id), timeout=10)).state == "running"

            await eventually(running, timeout_s=60, interval_s=0.05)
    finally:
        await app.stop()
    restarted = App(config)
    await restarted.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
            from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

            job = await pb_grpc.DSPyPoolStub(channel).GetOptimization(pb.GetOptimizationRequest(job_id=started.job_id), timeout=10)
            assert job.state == "interrupted" and "restarted" in job.error
    finally:
        await restarted.stop()


async def test_feedback_on_captured_calls_becomes_examples_and_triggers_an_optimization(server):
    """A capturing program: feedback with expected outputs adds examples, scores reach the stats, and after 3 examples
    the policy's auto_optimize starts its job by itself."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name="coder_fb", signature="word -> code", capture=pb.CapturePolicy(sample_rate=1.0, dataset="fb"))
    await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
    template = pb.StartOptimizationRequest(dataset="words", optimizer="labeled_few_shot", metric=METRIC)
    await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(
        program="coder_fb", auto_optimize=pb.AutoOptimize(job=template, after_feedback_examples=3, min_interval_s=1))), timeout=10)
    for n, word in enumerate(("melon", "grape", "lemon")):
        request = execute_request("coder_fb", word=word)
        request.request_id = f"fb-{n}"
        await stub.Execute(request, timeout=30)
        feedback = pb.RecordFeedbackRequest(request_id=f"fb-{n}", score=0.0, has_score=True)
        feedback.expected_outputs.update({"code": word[::-1].upper() + str(len(word))})
        reply = await stub.RecordFeedback(feedback, timeout=10)
        assert (reply.example_added, reply.dataset, reply.version) == (True, "fb", 1)
    assert dict((await stub.GetDataset(pb.GetDatasetRequest(name="fb"), timeout=10)).counts) == {"train": 3}
    error = await _error(stub.RecordFeedback(pb.RecordFeedbackRequest(request_id="fb-0", score=1, has_score=True), timeout=10))
    assert error.code() == grpc.StatusCode.NOT_FOUND  # one feedback per captured call
    stats = await stub.GetProgramStats(pb.GetProgramStatsRequest(program="coder_fb"), timeout=10)
    assert any(arm.feedback_count == 3 and arm.feedback_score_mean == 0.0 for arm in stats.arms)

    async def auto_started():
        jobs = await stub.ListOptimizations(pb.ListOptimizationsRequest(program="coder_fb"), timeout=10)
        return jobs.jobs

    (job,) = await eventually(auto_started, timeout_s=20, interval_s=0.1)
    assert job.request.optimizer == "labeled_few_shot"


async def test_deleting_the_promoted_version_leaves_a_policy_that_still_serves(server):
    """Deleting the version a policy promotes clears it from the policy (optimized mode then runs the base, saying
    optimization_pending) instead of failing every call NOT_FOUND; a program deleted whole and registered again starts
    from the default policy, not the old one."""
    _, stub, _ = server
    for signature in ("word -> code", "word -> code, note"):
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="coder_gone", signature=signature)), timeout=30)
    await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(
        program="coder_gone", mode="optimized", base_version=1, optimized_version=2)), timeout=10)
    assert (await stub.Execute(execute_request("coder_gone", word="kiwi"), timeout=30)).program_version == 2
    await stub.DeleteProgram(pb.DeleteProgramRequest(name="coder_gone", version=2), timeout=10)
    reply = await stub.Execute(execute_request("coder_gone", word="kiwi"), timeout=30)
    assert (reply.program_version, reply.fallback_reason) == (1, "optimization_pending")
    policy = await stub.GetExecutionPolicy(pb.GetExecutionPolicyRequest(program="coder_gone"), timeout=10)
    assert (policy.mode, policy.base_version, policy.optimized_version) == ("optimized", 1, 0)
    await stub.DeleteProgram(pb.DeleteProgramRequest(name="coder_gone"), timeout=10)
    again = await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="coder_gone", signature="word -> code")),
                                       timeout=30)
    policy = await stub.GetExecutionPolicy(pb.GetExecutionPolicyRequest(program="coder_gone"), timeout=10)
    assert (policy.mode or "traditional", policy.base_version, policy.optimized_version) == ("traditional", 0, 0)
    reply = await stub.Execute(execute_request("coder_gone", word="kiwi"), timeout=30)
    assert (reply.program_version, reply.execution_mode, reply.fallback_reason) == (again.version, "traditional", "")


async def test_cancelled_queued_jobs_give_their_place_in_the_queue_back():
    """With one job running and the queue at its limit, cancelling the queued ones frees their places at once (they
    counted toward --optimization-max-queue until the running job ended), and optimized mode no longer waits on them."""
    async with running_app(optimizer_workers=1, sim_latency="fixed:20", optimization_max_queue=2) as (app, stub, _):
        await eventually(lambda: app.pool.worker_pool.optimizer_handles(), timeout_s=30)
        running = await start_running_job(stub, setup=True)
        try:
            for round_ in range(3):  # each round fills the queue and cancels it: 6 cancels through a queue of 2
                queued = [await stub.StartOptimization(pb.StartOptimizationRequest(
                    program="coder", dataset="words", optimizer="labeled_few_shot", metric=METRIC, seed=100 + 10 * round_ + n),
                    timeout=10) for n in range(2)]
                assert [job.state for job in queued] == ["queued", "queued"]
                for job in queued:
                    assert (await stub.CancelOptimization(pb.CancelOptimizationRequest(job_id=job.job_id), timeout=10)).state == "cancelled"
            assert app.jobs.active("coder")  # the running one only
        finally:
            await stub.CancelOptimization(pb.CancelOptimizationRequest(job_id=running), timeout=10)
        await _finished(stub, running, timeout_s=20)
        await eventually(lambda: not app.jobs.active("coder"), timeout_s=10)


async def test_a_call_too_large_to_be_an_example_is_captured_for_its_score_only(server):
    """Inputs over --example-max-bytes (64 KiB here): the call is kept without its inputs and outputs (captures were
    bounded by count only: 10,000 captures of 4 MiB could hold 40 GB in the front); expected outputs for it are
    INVALID_ARGUMENT saying why, and the capture stays for a score, which counts."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name="coder_big", signature="word -> code", capture=pb.CapturePolicy(sample_rate=1.0))
    await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
    request = execute_request("coder_big", word="w" * 70_000)
    request.request_id = "big-call"
    await stub.Execute(request, timeout=30)
    expected = pb.RecordFeedbackRequest(request_id="big-call")
    expected.expected_outputs.update({"code": "X"})
    error = await _error(stub.RecordFeedback(expected, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "too large to become an example" in error.details()
    answer = await stub.RecordFeedback(pb.RecordFeedbackRequest(request_id="big-call", score=0.5, has_score=True), timeout=10)
    assert not answer.example_added and answer.program == "coder_big"
    stats = await stub.GetProgramStats(pb.GetProgramStatsRequest(program="coder_big"), timeout=10)
    assert [arm.feedback_count for arm in stats.arms] == [1]


async def test_a_job_whose_lm_call_hangs_stops_past_its_time_budget(monkeypatch):
    """The LM stops answering mid-job: the runner checks budget.max_seconds before each call, so a hung call kept the
    job running (its lease renewed) for ever. Now the job fails past the budget, saying why, and the optimizer worker
    is replaced; serving is unaffected."""
    from dspy_pool.optimize import jobs as jobs_module

    monkeypatch.setattr(jobs_module, "_OVERTIME_GRACE_S", 0.5)
    async with running_app(optimizer_workers=1, sim_latency="fixed:0") as (app, stub, _):
        await eventually(lambda: app.pool.worker_pool.optimizer_handles(), timeout_s=30)
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=SPEC), timeout=30)
        for split in ("train", "dev"):
            await stub.AddExamples(pb.AddExamplesRequest(dataset="words", split=split, examples=_examples(split)), timeout=30)
        await app.sim.set_faults(hang_rate=1.0)
        try:
            started = await stub.StartOptimization(pb.StartOptimizationRequest(
                program="coder", dataset="words", optimizer="bootstrap_few_shot", metric=METRIC,
                budget=pb.OptimizationBudget(max_seconds=1.0)), timeout=10)
            job = await _finished(stub, started.job_id, timeout_s=30)
        finally:
            await app.sim.set_faults(hang_rate=0.0)
        assert job.state == "failed" and "past budget.max_seconds (1 s)" in job.error, job
        assert (await stub.Execute(execute_request("coder", word="kiwi"), timeout=30)).outputs["code"]


async def test_a_job_whose_program_is_deleted_while_it_runs_ends_failed_saying_so():
    """The program deleted mid-job: the job ends failed, naming it, and its watchers see the end (it stayed "running"
    until the next restart: the finish step raised NOT_FOUND outside any handling)."""
    async with running_app(optimizer_workers=1, sim_latency="fixed:200") as (app, stub, _):
        await eventually(lambda: app.pool.worker_pool.optimizer_handles(), timeout_s=30)
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=SPEC), timeout=30)
        for split in ("train", "dev"):
            await stub.AddExamples(pb.AddExamplesRequest(dataset="words", split=split, examples=_examples(split)), timeout=30)
        started = await stub.StartOptimization(pb.StartOptimizationRequest(
            program="coder", dataset="words", optimizer="bootstrap_few_shot", metric=METRIC), timeout=10)

        async def running():
            job = await stub.GetOptimization(pb.GetOptimizationRequest(job_id=started.job_id), timeout=10)
            assert job.state in ("queued", "running"), job  # 30 dev examples at 200 ms a call: it runs for seconds
            return job.state == "running"

        await eventually(running, timeout_s=30)
        await stub.DeleteProgram(pb.DeleteProgramRequest(name="coder"), timeout=10)
        watched = [job async for job in stub.WatchOptimization(pb.GetOptimizationRequest(job_id=started.job_id), timeout=60)]
        assert watched[-1].state == "failed" and "was deleted while the job ran" in watched[-1].error, watched[-1]


async def test_datasets_are_listed_in_pages_by_name(server):
    """ListDatasets pages like ListPrograms (20,000 datasets made one 4.4 MB answer no default client could read):
    page_size, next_page_token, every dataset once and in order; a token from another listing is refused."""
    _, stub, _ = server
    example = pb.Example()
    example.inputs.update({"word": "a"})
    example.outputs.update({"code": "A"})
    for name in ("page-c", "page-a", "page-b"):
        await stub.AddExamples(pb.AddExamplesRequest(dataset=name, split="train", examples=[example]), timeout=10)
    names, token, pages = [], "", 0
    while True:
        reply = await stub.ListDatasets(pb.ListDatasetsRequest(page_size=2, page_token=token), timeout=10)
        assert len(reply.datasets) <= 2
        names += [dataset.name for dataset in reply.datasets]
        token, pages = reply.next_page_token, pages + 1
        if not token:
            break
    assert names == sorted(set(names)) and {"page-a", "page-b", "page-c"} <= set(names) and pages >= 2
    programs_token = (await stub.ListPrograms(pb.ListProgramsRequest(page_size=1), timeout=10)).next_page_token
    error = await _error(stub.ListDatasets(pb.ListDatasetsRequest(page_token=programs_token), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "another listing" in error.details()


async def test_a_version_records_the_dataset_it_learned_from_not_rows_added_while_it_ran():
    """Rows appended to the dataset while the job runs: the new version's dataset_hash is the one the job read (it was
    read at the end, claiming data the version never trained on)."""
    async with running_app(optimizer_workers=1, sim_latency="fixed:100") as (app, stub, _):
        await eventually(lambda: app.pool.worker_pool.optimizer_handles(), timeout_s=30)
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=SPEC), timeout=30)
        for split in ("train", "dev"):
            await stub.AddExamples(pb.AddExamplesRequest(dataset="words", split=split, examples=_examples(split)), timeout=30)
        read = await stub.GetDataset(pb.GetDatasetRequest(name="words"), timeout=10)
        started = await stub.StartOptimization(pb.StartOptimizationRequest(
            program="coder", dataset="words", optimizer="labeled_few_shot", metric=METRIC), timeout=10)

        async def running():
            return (await stub.GetOptimization(pb.GetOptimizationRequest(job_id=started.job_id), timeout=10)).state == "running"

        await eventually(running, timeout_s=30)
        grown = await stub.AddExamples(pb.AddExamplesRequest(dataset="words", split="train", examples=_examples("train")[:1]),
                                       timeout=10)
        job = await _finished(stub, started.job_id, timeout_s=60)
        assert job.state == "succeeded", job.error
        version = await stub.GetProgram(pb.GetProgramRequest(name="coder", version=job.result.version), timeout=10)
        assert version.meta.dataset_hash == read.content_hash != grown.content_hash


async def test_the_number_of_datasets_is_bounded():
    """--max-datasets: a new dataset beyond it is RESOURCE_EXHAUSTED naming the limit (one client made 20,000 in 7 s);
    adding to an existing one still works, and deleting one makes room."""
    async with running_app(optimizer_workers=0, max_datasets=2) as (_, stub, _channel):
        example = pb.Example()
        example.inputs.update({"word": "a"})
        example.outputs.update({"code": "A"})

        def add(name: str):
            return stub.AddExamples(pb.AddExamplesRequest(dataset=name, split="train", examples=[example]), timeout=10)

        await add("one")
        await add("two")
        error = await _error(add("three"))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit 2, --max-datasets" in error.details()
        assert (await add("one")).counts["train"] == 2
        await stub.DeleteDataset(pb.DeleteDatasetRequest(name="two"), timeout=10)
        assert (await add("three")).counts["train"] == 1


async def test_optimization_jobs_are_listed_newest_first_in_pages(server):
    """ListOptimizations pages (it stopped at the newest 100, with no way to the rest): every job once, newest first,
    the same as one large page; a token from another program's listing is refused."""
    _, stub, _ = server
    for seed in (301, 302, 303):  # three more jobs of their own, whatever the other tests left
        await stub.StartOptimization(pb.StartOptimizationRequest(
            program="coder", dataset="words", optimizer="labeled_few_shot", metric=METRIC, seed=seed), timeout=10)
    whole = (await stub.ListOptimizations(pb.ListOptimizationsRequest(program="coder"), timeout=10)).jobs
    paged, token = [], ""
    while True:
        reply = await stub.ListOptimizations(pb.ListOptimizationsRequest(program="coder", page_size=2, page_token=token), timeout=10)
        assert len(reply.jobs) <= 2
        paged += reply.jobs
        token = reply.next_page_token
        if not token:
            break
    assert [job.job_id for job in paged] == [job.job_id for job in whole] and len(paged) >= 3
    created = [job.created_at.ToNanoseconds() for job in paged]
    assert created == sorted(created, reverse=True)
    first = await stub.ListOptimizations(pb.ListOptimizationsRequest(program="coder", page_size=1), timeout=10)
    error = await _error(stub.ListOptimizations(pb.ListOptimizationsRequest(program="other", page_token=first.next_page_token),
                                                timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_finished_jobs_are_pruned_past_the_newest_kept(monkeypatch):
    """Starting and cancelling jobs in a loop made store rows without end: every 100 new jobs, the finished ones past
    the newest jobs_kept are deleted (2 here, every 3 new jobs); the queued and running ones stay."""
    from dspy_pool.optimize import jobs as jobs_module

    monkeypatch.setattr(jobs_module, "_PRUNE_EVERY", 3)
    async with running_app(optimizer_workers=1, sim_latency="fixed:20", optimization_jobs_kept=2) as (app, stub, _):
        await eventually(lambda: app.pool.worker_pool.optimizer_handles(), timeout_s=30)
        running = await start_running_job(stub, setup=True)  # the 1st new job
        try:
            for seed in range(400, 408):  # 8 more, each cancelled while queued
                queued = await stub.StartOptimization(pb.StartOptimizationRequest(
                    program="coder", dataset="words", optimizer="labeled_few_shot", metric=METRIC, seed=seed), timeout=10)
                await stub.CancelOptimization(pb.CancelOptimizationRequest(job_id=queued.job_id), timeout=10)
            jobs = (await stub.ListOptimizations(pb.ListOptimizationsRequest(), timeout=10)).jobs
        finally:
            await stub.CancelOptimization(pb.CancelOptimizationRequest(job_id=running), timeout=10)
        assert running in [job.job_id for job in jobs]  # running: never pruned
        finished = [job for job in jobs if job.state == "cancelled"]
        assert 2 <= len(finished) <= 4  # pruned to 2 at the 9th start, then at most the 2 cancels since


@pytest.mark.parametrize("auto, says", [
    (pb.AutoOptimize(after_feedback_examples=3), "optimizer is required"),
    (pb.AutoOptimize(on_error_rate=0.5, job=pb.StartOptimizationRequest(dataset="words", optimizer="labeled_few_shot",
                                                                        metric=pb.MetricSpec(kind="os.system"))), "metric"),
    (pb.AutoOptimize(on_score_drop=0.2, job=pb.StartOptimizationRequest(dataset="words", optimizer="labeled_few_shot",
                                                                        metric=pb.MetricSpec(kind="exact_match", fields=["nope"]))), "nope"),
], ids=["no-optimizer", "unknown-metric", "metric-field-not-an-output"])
async def test_an_auto_optimize_job_is_checked_as_start_optimization_checks_it(server, auto, says):
    """A policy's auto_optimize job gets StartOptimization's checks when it is set, not a log line when a trigger fires;
    thresholds with no job to start are refused too."""
    _, stub, _ = server
    await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="coder_auto_checked", signature="word -> code")), timeout=30)
    error = await _error(stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(
        policy=pb.ExecutionPolicy(program="coder_auto_checked", auto_optimize=auto)), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and says in error.details(), error.details()


async def test_a_finished_job_whose_version_was_deleted_is_run_again(server):
    """The optimization cache hands back a finished job only while its version exists: after the version is deleted,
    an identical start is a new job (it returned the old one, naming a version GetProgram said NOT_FOUND for)."""
    _, stub, _ = server
    await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="coder_redo", signature="word -> code")), timeout=30)
    request = pb.StartOptimizationRequest(program="coder_redo", dataset="words", optimizer="labeled_few_shot", metric=METRIC)
    first = await _finished(stub, (await stub.StartOptimization(request, timeout=10)).job_id)
    assert first.state == "succeeded" and (await stub.StartOptimization(request, timeout=10)).reused
    await stub.DeleteProgram(pb.DeleteProgramRequest(name="coder_redo", version=first.result.version), timeout=10)
    again = await stub.StartOptimization(request, timeout=10)
    assert not again.reused and again.job_id != first.job_id
    assert (await _finished(stub, again.job_id)).state == "succeeded"


async def test_auto_promotion_keeps_a_better_promoted_version(server):
    """With auto promotion, a later job that beats the base but scores below the version promoted now is not promoted
    (a copro run at 0.767 replaced a promoted 0.933), also after feedback added train examples to the dataset."""
    _, stub, _ = server
    await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="coder_keep", signature="word -> code")), timeout=30)
    for split in ("train", "dev"):
        await stub.AddExamples(pb.AddExamplesRequest(dataset="words_keep", split=split, examples=_examples(split)), timeout=30)
    await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(
        program="coder_keep", mode="optimized", promotion="auto", min_improvement=0.05, min_dev_examples=10)), timeout=10)

    async def run(options: dict) -> pb.OptimizationJob:
        request = pb.StartOptimizationRequest(program="coder_keep", dataset="words_keep", optimizer="labeled_few_shot", metric=METRIC)
        request.options.update(options)
        return await _finished(stub, (await stub.StartOptimization(request, timeout=10)).job_id)

    better = await run({})
    assert better.result.promoted, better
    await stub.AddExamples(pb.AddExamplesRequest(dataset="words_keep", split="train", examples=_examples("dev")[:1]), timeout=30)
    weaker = await run({"k": 1})
    assert weaker.result.optimized_score - weaker.result.baseline_score >= 0.05, weaker.result  # it beats the base...
    assert weaker.result.optimized_score < better.result.optimized_score and not weaker.result.promoted  # ...not the served one
    policy = await stub.GetExecutionPolicy(pb.GetExecutionPolicyRequest(program="coder_keep"), timeout=10)
    assert policy.optimized_version == better.result.version
