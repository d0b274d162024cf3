"""The Python client's optimization calls (clients/python) against one real server per module.

Datasets, execution policies, per-arm stats, `execute(mode=...)` and its `execution_mode`,
and `optimize(...)`. The client is imported from the source tree (clients/python on
sys.path). One server with one serving worker and one optimizer worker, on this module's
event loop, so the blocking Client runs in a thread.
"""

import asyncio
import io
import pathlib
import sys
import time

import grpc
import pytest
import pytest_asyncio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "clients" / "python"))

try:
    from dspy_pool_client import (AsyncClient, Client, DeadlineExceeded, FeedbackResult, InvalidArgument, NotFound,
                                  OptimizationFailed, OptimizationJob, RetryPolicy)
    from dspy_pool_client import optimization as client_optimization
    from dspy_pool_client._gen import dspy_pool_pb2 as client_pb
    from dspy_pool_client.progress import ProgressLine, progress_line
except TypeError as error:  # the same proto file registered twice with different content
    raise ImportError("clients/python/dspy_pool_client/_gen is stale against proto/: run python clients/python/generate.py") from error

pytestmark = pytest.mark.timeout(120)
on_server_loop = pytest.mark.asyncio(loop_scope="module")  # the async tests share the module's server and loop

QA = "question -> answer"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def target():
    from .harness import running_app

    async with running_app(workers=1, optimizer_workers=1) as (app, _stub, _channel):
        yield f"127.0.0.1:{app.port}"


def examples(*pairs: tuple[str, str]) -> list[dict]:
    return [{"inputs": {"question": q}, "outputs": {"answer": a}} for q, a in pairs]


# -- pure: conversion and the progress line ----------------------------------------------------


def test_examples_convert_like_structs_and_bad_ones_name_their_index():
    """Examples are dicts of inputs and outputs (ints stay ints); a bad one raises naming examples[i]."""
    request = client_optimization.add_examples_request("d", "train", [{"inputs": {"q": "x", "n": 3}, "outputs": {"a": [1, 2.5]}}])
    assert request.dataset == "d" and request.split == "train"
    assert dict(request.examples[0].inputs) == {"q": "x", "n": 3} and list(request.examples[0].outputs["a"]) == [1, 2.5]
    with pytest.raises(TypeError, match=r"examples\[1\]\.outputs"):
        client_optimization.add_examples_request("d", "dev", [{"inputs": {"q": "x"}, "outputs": {"a": 1}}, {"inputs": {"q": "y"}}])
    with pytest.raises(TypeError, match=r"examples\[0\]: unknown keys \['output'\]"):
        client_optimization.add_examples_request("d", "dev", [{"inputs": {"q": "x"}, "output": {"a": 1}}])
    with pytest.raises(ValueError, match="split must be one of train, dev"):
        client_optimization.add_examples_request("d", "test", examples(("q", "a")))
    with pytest.raises(ValueError, match="its split is 'dev'"):
        client_optimization.add_examples_request("d", "train", [{**examples(("q", "a"))[0], "split": "dev"}])


def _job(state: str, **fields) -> OptimizationJob:
    message = client_pb.OptimizationJob(job_id="j1", state=state, **fields)
    message.request.program, message.request.optimizer, message.request.dataset = "qa", "labeled_few_shot", "d"
    return OptimizationJob.from_proto(message)


def test_progress_line_says_phase_trials_best_score_and_result():
    """The progress line shows a running job's phase, trials bar and best score, and a finished one's outcome."""
    running = _job("running", progress=client_pb.OptimizationProgress(phase="optimizing", trials_done=2, trials_planned=4,
                                                                       best_score=0.75, has_best_score=True, lm_calls=9, elapsed_s=61))
    assert progress_line(running) == "qa: labeled_few_shot running: optimizing, 2/4 [########--------], best 0.750, 9 LM calls, 1m01s"
    done = _job("succeeded", result=client_pb.OptimizationResult(version=3, baseline_score=0.25, optimized_score=0.5,
                                                                 lm_calls=12, elapsed_s=4, promoted=True))
    assert progress_line(done) == "qa: labeled_few_shot succeeded: version 3, dev 0.250 -> 0.500, promoted, 12 LM calls, 4s"
    assert progress_line(_job("failed", error="boom")) == "qa: labeled_few_shot failed: boom"
    assert len(progress_line(running, width=30)) == 30


def test_progress_line_is_drawn_only_on_a_terminal(monkeypatch):
    """ProgressLine draws on stderr only when it is a terminal and progress is on; close() ends the line."""
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert ProgressLine.for_stderr(True) is None
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert ProgressLine.for_stderr(False) is None
    line = ProgressLine.for_stderr(True)
    line.update(_job("queued"))
    line.update(_job("failed", error="boom"))
    line.close()
    drawn = terminal.getvalue()
    assert drawn.endswith("\r\x1b[2Kqa: labeled_few_shot failed: boom\n") and drawn.count("\r") == 2


def test_a_failed_job_raises_optimization_failed_with_the_server_text():
    """A job that ended failed, cancelled or interrupted raises OptimizationFailed carrying its state and error text."""
    outcome = client_optimization.outcome
    with pytest.raises(OptimizationFailed) as raised:
        outcome(_job("failed", error="metric raised ValueError: no field answer"))
    assert raised.value.state == "failed" and raised.value.reason == "OPTIMIZATION_FAILED"
    assert "metric raised ValueError: no field answer" in str(raised.value) and raised.value.job.job_id == "j1"
    with pytest.raises(OptimizationFailed, match="cancelled"):
        outcome(_job("cancelled", error="cancelled before it started"))
    assert outcome(_job("succeeded")).succeeded


class _Stream:
    """A WatchOptimization reply as the sync stub returns it: iterable, cancellable; raises `error` after `jobs`."""

    def __init__(self, jobs, error=None):
        self.jobs, self.error, self.cancelled = jobs, error, False

    def __iter__(self):
        yield from self.jobs
        if self.error is not None:
            raise self.error

    def cancel(self):
        self.cancelled = True


class _RpcError(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return "transport says no"

    def trailing_metadata(self):
        return ()


def _message(state: str) -> "client_pb.OptimizationJob":
    message = client_pb.OptimizationJob(job_id="j1", state=state)
    message.request.program = "qa"
    return message


def test_watch_opens_again_after_a_broken_or_closed_stream(monkeypatch):
    """watch_optimization reopens a stream that broke (UNAVAILABLE) or ended early, and stops at a finished state."""
    streams = [_Stream([_message("queued")], _RpcError(grpc.StatusCode.UNAVAILABLE)), _Stream([_message("running")]),
               _Stream([_message("running"), _message("succeeded")])]
    opened = []

    def watch(request, timeout=None, metadata=()):
        opened.append(request.job_id)
        return streams[len(opened) - 1]

    monkeypatch.setattr(time, "sleep", lambda s: None)
    with Client("127.0.0.1:1", retries=RetryPolicy(max_attempts=3)) as client:
        monkeypatch.setattr(client._stub, "WatchOptimization", watch)
        states = [job.state for job in client.watch_optimization("j1")]
    assert states == ["queued", "running", "running", "succeeded"] and opened == ["j1"] * 3
    assert all(stream.cancelled for stream in streams)


def test_waiting_past_the_timeout_is_a_client_deadline(monkeypatch):
    """When the watch's deadline passes, DeadlineExceeded (CLIENT_DEADLINE) says the job's last state."""
    with Client("127.0.0.1:1") as client:
        monkeypatch.setattr(client._stub, "WatchOptimization",
                            lambda request, timeout=None, metadata=(): _Stream([_message("running")],
                                                                               _RpcError(grpc.StatusCode.DEADLINE_EXCEEDED)))
        with pytest.raises(DeadlineExceeded) as raised:
            client.wait_for_optimization("j1", progress=False, timeout=5)
    assert raised.value.reason == "CLIENT_DEADLINE" and "still running" in str(raised.value)


def test_policy_changes_keep_the_fields_not_named():
    """merged_policy replaces only the fields given (not None) and keeps the rest of the stored policy."""
    current = client_pb.ExecutionPolicy(program="qa", mode="hybrid", hybrid_percent=20, optimized_version=3, promotion="auto")
    merged = client_optimization.merged_policy(current, "qa", {"mode": "evaluation", "hybrid_percent": None, "sticky_sessions": False})
    assert (merged.mode, merged.hybrid_percent, merged.optimized_version, merged.promotion) == ("evaluation", 20, 3, "auto")
    with pytest.raises(TypeError, match="unknown policy fields"):
        client_optimization.merged_policy(current, "qa", {"modes": "optimized"})


# -- against the server ---------------------------------------------------------------------------


@on_server_loop
async def test_datasets_add_get_list_delete(target):
    """add_examples appends to a split and returns the counts; get, list and delete see the same dataset."""
    with Client(target, default_timeout=20) as client:
        first = await asyncio.to_thread(client.add_examples, "py_ds", "train", examples(("2+2?", "4"), ("3+3?", "6")))
        second = await asyncio.to_thread(client.add_examples, "py_ds", "dev", examples(("1+1?", "2")))
        got = await asyncio.to_thread(client.get_dataset, "py_ds")
        listed = await asyncio.to_thread(client.list_datasets)
        deleted = await asyncio.to_thread(client.delete_dataset, "py_ds")
        with pytest.raises(NotFound):
            await asyncio.to_thread(client.get_dataset, "py_ds")
    assert first.counts == {"train": 2} and second.counts == {"dev": 1, "train": 2}
    assert first.content_hash != second.content_hash and got.content_hash == second.content_hash
    assert got.updated_at is not None and "py_ds" in [d.name for d in listed] and deleted is True


@on_server_loop
async def test_async_dataset_errors_are_typed(target):
    """The async client: a bad dataset name is INVALID_ARGUMENT from the server; deleting a missing one NOT_FOUND."""
    async with AsyncClient(target, default_timeout=20) as client:
        with pytest.raises(InvalidArgument, match="dataset name"):
            await client.add_examples("bad name!", "train", examples(("q", "a")))
        with pytest.raises(NotFound):
            await client.delete_dataset("py_no_such_dataset")
        added = await client.add_examples("py_async_ds", "train", examples(("q", "a")))
    assert added.name == "py_async_ds" and added.counts == {"train": 1}


@on_server_loop
async def test_set_execution_policy_changes_only_the_named_fields(target):
    """set_execution_policy stores the fields named; a later call naming others keeps them; get returns the same."""
    async with AsyncClient(target, default_timeout=20) as client:
        await client.register_program("py_policy", QA)
        default = await client.get_execution_policy("py_policy")
        hybrid = await client.set_execution_policy("py_policy", mode="hybrid", hybrid_percent=20, sticky_sessions=True)
        auto = await client.set_execution_policy("py_policy", promotion="auto", min_improvement=0.05, min_dev_examples=2)
        got = await client.get_execution_policy("py_policy")
        with pytest.raises(InvalidArgument):
            await client.set_execution_policy("py_policy", mode="sometimes")
        with pytest.raises(NotFound):
            await client.get_execution_policy("py_no_such_program")
    assert (default.mode, default.promotion, default.optimized_version) == ("traditional", "manual", 0)
    assert (hybrid.mode, hybrid.hybrid_percent, hybrid.sticky_sessions) == ("hybrid", 20, True)
    assert got == auto and (auto.mode, auto.hybrid_percent, auto.promotion, auto.min_dev_examples) == ("hybrid", 20, "auto", 2)


@on_server_loop
async def test_execute_with_a_mode_says_how_the_version_was_chosen(target):
    """execute(mode=...) returns execution_mode; evaluation mode runs the optimized version beside and returns it."""
    async with AsyncClient(target, default_timeout=20) as client:
        await client.register_program("py_modes", QA)
        await client.register_program("py_modes", QA, instructions="Answer briefly.")  # version 2
        await client.set_execution_policy("py_modes", base_version=1)
        question = {"question": "What is DSPy?"}
        traditional = await client.execute("py_modes", question, mode="traditional")
        pending = await client.execute("py_modes", question, mode="optimized")
        named = await client.execute("py_modes", question, version=2, mode="optimized")
        await client.set_execution_policy("py_modes", optimized_version=2)
        optimized = await client.execute("py_modes", question, mode="optimized")
        evaluation = await client.execute("py_modes", question, mode="evaluation")
    assert (traditional.execution_mode, traditional.version, traditional.evaluation) == ("traditional", 1, None)
    assert (pending.execution_mode, pending.version, pending.fallback_reason) == ("traditional", 1, "optimization_pending")
    assert (named.execution_mode, named.version) == ("version", 2)
    assert (optimized.execution_mode, optimized.version) == ("optimized", 2)
    assert (evaluation.execution_mode, evaluation.version) == ("evaluation", 1)
    assert evaluation.evaluation.version == 2 and evaluation.evaluation.error == ""
    assert evaluation.evaluation.outputs["answer"] and evaluation.evaluation.latency_ms > 0


@on_server_loop
async def test_program_stats_count_calls_per_version_and_arm(target):
    """program_stats after a few calls: calls per (version, arm), latencies, and the policy in force."""
    with Client(target, default_timeout=20) as client:
        await asyncio.to_thread(client.register_program, "py_stats", QA)
        for _ in range(3):
            await asyncio.to_thread(client.execute, "py_stats", {"question": "hi"}, mode="traditional")
        await asyncio.to_thread(client.execute, "py_stats", {"question": "hi"}, version=1)
        stats = await asyncio.to_thread(client.program_stats, "py_stats")
    arms = {(arm.version, arm.arm): arm for arm in stats.arms}
    assert stats.program == "py_stats" and stats.policy.mode == "traditional"
    assert set(arms) == {(1, "traditional"), (1, "version")}
    assert arms[1, "traditional"].calls == 3 and arms[1, "version"].calls == 1
    assert arms[1, "traditional"].errors == 0 and arms[1, "traditional"].latency_p95_ms >= arms[1, "traditional"].latency_p50_ms > 0


@on_server_loop
async def test_record_feedback_scores_a_captured_call_or_makes_it_an_example(target):
    """record_feedback on a captured call (Result.request_id): a score counts in program_stats' feedback fields;
    expected outputs add the call to the capture's dataset; a second feedback on one call is NotFound."""
    with Client(target, default_timeout=20) as client:
        await asyncio.to_thread(client.register_program, "py_fb", QA, capture={"sample_rate": 1, "dataset": "py_fb_data"})
        first = await asyncio.to_thread(client.execute, "py_fb", {"question": "2+2?"})
        second = await asyncio.to_thread(client.execute, "py_fb", {"question": "3+3?"})
        scored = await asyncio.to_thread(lambda: client.record_feedback(first.request_id, score=0.25))
        corrected = await asyncio.to_thread(lambda: client.record_feedback(second.request_id, expected_outputs={"answer": "6"}))
        with pytest.raises(NotFound):
            await asyncio.to_thread(lambda: client.record_feedback(first.request_id, score=1.0))
        dataset = await asyncio.to_thread(client.get_dataset, "py_fb_data")
        stats = await asyncio.to_thread(client.program_stats, "py_fb")
    assert scored == FeedbackResult(example_added=False, dataset="", program="py_fb", version=1)
    assert corrected == FeedbackResult(example_added=True, dataset="py_fb_data", program="py_fb", version=1)
    assert dataset.counts == {"train": 1}
    assert [(arm.feedback_count, arm.feedback_score_mean) for arm in stats.arms] == [(1, 0.25)]


@on_server_loop
async def test_async_record_feedback_with_a_good_score_keeps_the_outputs_as_an_example(target):
    """AsyncClient.record_feedback: a score at or above the capture's good_score makes the call's own outputs an example;
    a request that names no feedback is refused before any call."""
    async with AsyncClient(target, default_timeout=20) as client:
        await client.register_program("py_fb_async", QA, capture={"sample_rate": 1, "good_score": 0.8})
        result = await client.execute("py_fb_async", {"question": "hi"})
        reply = await client.record_feedback(result.request_id, score=0.9)
        with pytest.raises(ValueError, match="give a score, expected_outputs, or both"):
            await client.record_feedback(result.request_id)
    assert reply.example_added and reply.dataset == "py_fb_async-feedback" and reply.version == 1


@on_server_loop
async def test_start_optimization_checks_program_and_dataset(target):
    """StartOptimization: an unknown dataset is NOT_FOUND; one without dev examples is INVALID_ARGUMENT."""
    async with AsyncClient(target, default_timeout=20) as client:
        await client.register_program("py_checks", QA)
        await client.add_examples("py_train_only", "train", examples(("q", "a")))
        with pytest.raises(NotFound):
            await client.start_optimization("py_checks", "py_no_such_dataset", "labeled_few_shot")
        with pytest.raises(InvalidArgument, match="dev"):
            await client.start_optimization("py_checks", "py_train_only", "labeled_few_shot")
        with pytest.raises(NotFound):
            await client.get_optimization("py-no-such-job")


@on_server_loop
async def test_optimize_labeled_few_shot_returns_a_new_version(target):
    """optimize() waits for a labeled_few_shot job on a tiny dataset and returns it with a new, scored version."""
    train = examples(("What is 2+2?", "4"), ("What is the capital of France?", "Paris"), ("What color is the sky?", "blue"))
    dev = examples(("What is 3+3?", "6"), ("What is the capital of Italy?", "Rome"))
    with Client(target, default_timeout=20) as client:
        base = await asyncio.to_thread(client.register_program, "py_opt", QA)
        await asyncio.to_thread(client.add_examples, "py_opt_ds", "train", train)
        await asyncio.to_thread(client.add_examples, "py_opt_ds", "dev", dev)
        job = await asyncio.to_thread(lambda: client.optimize("py_opt", "py_opt_ds", "labeled_few_shot",
                                                              metric={"kind": "exact_match", "fields": ["answer"]},
                                                              progress=False, timeout=100))
        program = await asyncio.to_thread(client.get_program, "py_opt", job.result.version)
        listed = await asyncio.to_thread(client.list_optimizations, "py_opt")
        again = await asyncio.to_thread(lambda: client.optimize("py_opt", "py_opt_ds", "labeled_few_shot",
                                                                metric={"kind": "exact_match", "fields": ["answer"]},
                                                                progress=False, timeout=100))
    assert job.state == "succeeded" and job.finished and job.error == ""
    assert job.result.version > base.version and job.base_version == base.version
    assert job.result.dev_examples == 2 and 0.0 <= job.result.optimized_score <= 1.0
    assert program.meta is not None and program.meta.job_id == job.job_id and program.meta.optimizer == "labeled_few_shot"
    assert program.meta.base_version == base.version and program.meta.dataset == "py_opt_ds"
    assert job.job_id in [j.job_id for j in listed]
    assert again.reused and again.job_id == job.job_id and again.result.version == job.result.version


@on_server_loop
async def test_async_watch_follows_a_job_to_its_end(target):
    """AsyncClient: start_optimization returns a queued or running job; watch_optimization yields it until it ends."""
    async with AsyncClient(target, default_timeout=20) as client:
        base = await client.register_program("py_watch", QA)
        await client.add_examples("py_watch_ds", "train", examples(("2+2?", "4"), ("3+3?", "6")))
        await client.add_examples("py_watch_ds", "dev", examples(("1+1?", "2")))
        started = await client.start_optimization("py_watch", "py_watch_ds", "labeled_few_shot", options={"k": 1}, seed=7,
                                                  budget={"max_lm_calls": 100})
        seen = [job async for job in client.watch_optimization(started.job_id, timeout=100)]
        waited = await client.wait_for_optimization(started.job_id, progress=False, timeout=100)
        optimized = await client.optimize("py_watch", "py_watch_ds", "labeled_few_shot", options={"k": 1}, seed=7,
                                          budget={"max_lm_calls": 100}, progress=False)
    assert started.state in ("queued", "running", "succeeded") and not started.reused
    assert started.raw.request.options["k"] == 1 and started.raw.request.budget.max_lm_calls == 100
    assert [job.state for job in seen][-1] == "succeeded" and all(not job.finished for job in seen[:-1])
    assert waited.result.version == seen[-1].result.version > base.version
    assert optimized.reused and optimized.job_id == started.job_id
