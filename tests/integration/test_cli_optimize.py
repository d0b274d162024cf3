"""`dspy-pool datasets|optimize|jobs|policy|stats` and `call --mode` against one real server per module.

The CLI runs in-process through `dspy_pool.cli.main` on a thread (its gRPC channel is
synchronous; the server shares this module's loop), with stdout and stderr captured; one
test runs `optimize` as a subprocess in a pseudo-terminal, as a user would. The server has
one serving worker and one optimizer worker; the pure helpers are tested first.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import select
import shlex
import sys
import time

import pytest
import pytest_asyncio
import structlog

from dspy_pool import jobs_view, optimize_cli
from dspy_pool.client_cli import UsageError
from dspy_pool.v1 import dspy_pool_pb2 as pb

from .cli_runner import cli_runner, write_file

pytestmark = pytest.mark.timeout(120)
on_server_loop = pytest.mark.asyncio(loop_scope="module")  # the async tests share the module's server and loop


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    from .harness import running_app

    # The server logs in this process, to the stdout the tests capture: keep its lines out.
    with structlog.testing.capture_logs():
        async with running_app(workers=1, optimizer_workers=1) as (app, _stub, _channel):
            yield app


@pytest.fixture
def target(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def cli(capsys, monkeypatch, target):
    """Run `dspy-pool ARGS --target <the server>` in-process; stdin text optional."""
    return cli_runner(capsys, monkeypatch, target)



def _rows(split: str | None, *pairs: tuple[str, str]) -> list[dict]:
    rows = [{"inputs": {"question": q}, "outputs": {"answer": a}} for q, a in pairs]
    return [{**row, "split": split} for row in rows] if split else rows


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


async def _register(cli, tmp_path, name: str) -> None:
    ran = await cli("register", write_file(tmp_path, f"{name}.yaml", f"name: {name}\nsignature: question -> answer\n"))
    assert ran.code == 0, ran.err


# -- pure: example files, KEY=VALUE options, rendering ------------------------------------------


def test_read_examples_groups_rows_by_split_from_jsonl_json_and_yaml(tmp_path):
    """Rows keep their own split, others take --split; JSONL, a JSON list and YAML {examples: [...]} all read."""
    jsonl = write_file(tmp_path, "d.jsonl", _jsonl(_rows("dev", ("a?", "1")) + _rows(None, ("b?", "2"), ("c?", "3"))))
    by_split = optimize_cli.read_examples(jsonl, "train", io.StringIO())
    assert {split: len(rows) for split, rows in by_split.items()} == {"dev": 1, "train": 2}
    assert dict(by_split["train"][1].inputs) == {"question": "c?"} and dict(by_split["train"][1].outputs) == {"answer": "3"}
    as_json = write_file(tmp_path, "d.json", json.dumps(_rows(None, ("a?", "1"))))
    assert len(optimize_cli.read_examples(as_json, "dev", io.StringIO())["dev"]) == 1
    as_yaml = write_file(tmp_path, "d.yaml", """\
        examples:
          - {inputs: {question: "a?"}, outputs: {answer: 1}, split: train}
        """)
    assert dict(optimize_cli.read_examples(as_yaml, "", io.StringIO())["train"][0].outputs) == {"answer": 1}
    piped = optimize_cli.read_examples("-", "train", io.StringIO(_jsonl(_rows(None, ("a?", "1"), ("b?", "2")))))
    assert len(piped["train"]) == 2


@pytest.mark.parametrize("name, text, split, message", [
    ("bad.jsonl", '{"inputs": {"q": "x"}, "outputs": {"a": "y"}}\n{"inputs": {"q": "x"}}\n', "train",
     "bad.jsonl: line 2: outputs must be a non-empty object"),
    ("bad.jsonl", '{"inputs": {"q": "x"}, "outputs": {"a": "y"}}\nnot json\n', "train", "bad.jsonl: line 2: invalid JSON"),
    ("bad.json", '[{"inputs": {"q": "x"}, "output": {"a": "y"}}]', "train", "bad.json: examples[0]: unknown key 'output'"),
    ("bad.yaml", "- {inputs: {q: x}, outputs: {a: y}, split: test}\n", "", "bad.yaml: examples[0]: split 'test' must be train or dev"),
    ("nosplit.yaml", "- {inputs: {q: x}, outputs: {a: y}}\n", "", "nosplit.yaml: examples[0]: no split"),
    ("data.csv", "q,a\n", "train", "data.csv: unknown format"),
    ("list.jsonl", '[1, 2]\n{"inputs": {"q": "x"}, "outputs": {"a": "y"}}\n', "train", "list.jsonl: line 1: expected an object"),
])
def test_bad_example_files_name_the_row(tmp_path, name, text, split, message):
    """A bad example file is a UsageError naming the file and the row (line N, or examples[i])."""
    path = write_file(tmp_path, name, text)
    with pytest.raises(UsageError) as raised:
        optimize_cli.read_examples(path, split, io.StringIO())
    assert str(raised.value).startswith(str(tmp_path)) and message in str(raised.value)


def test_large_splits_are_sent_in_batches_under_the_byte_limit():
    """Examples go in consecutive batches of at most max_bytes each (one oversized example alone); none is lost."""
    examples = [pb.Example() for _ in range(5)]
    for index, example in enumerate(examples):
        example.inputs.update({"q": "x" * (300 if index == 2 else 40)})
        example.outputs.update({"a": "y"})
    batched = optimize_cli.batches(examples, max_bytes=150)
    assert [len(batch) for batch in batched] == [2, 1, 2] and [e for batch in batched for e in batch] == examples
    assert optimize_cli.batches(examples) == [examples]


def test_options_parse_values_as_json_else_text():
    """--option KEY=VALUE: the value is JSON when it parses, else text; no '=' is a UsageError."""
    assert optimize_cli.parse_assignments(["k=3", "auto=light", "flag=true", "xs=[1, 2]", "t=0.5"], "--option") == \
        {"k": 3, "auto": "light", "flag": True, "xs": [1, 2], "t": 0.5}
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        optimize_cli.parse_assignments(["k"], "--option")


def _job(state: str, **fields) -> pb.OptimizationJob:
    job = pb.OptimizationJob(job_id="j1", state=state, base_version=1, **fields)
    job.request.program, job.request.optimizer, job.request.dataset = "qa", "labeled_few_shot", "qa_data"
    return job


def test_job_rendering_says_progress_result_and_failure():
    """The progress line, the result lines (scores, promotion hint) and a failed job's line read as intended."""
    running = _job("running", progress=pb.OptimizationProgress(phase="optimizing", trials_done=1, trials_planned=4,
                                                               best_score=0.5, has_best_score=True, lm_calls=7, elapsed_s=3))
    assert jobs_view.progress_text(running) == "qa: labeled_few_shot running: optimizing, 1/4 ████░░░░░░░░░░░░, best 0.500, 7 LM calls, 3s"
    done = _job("succeeded", result=pb.OptimizationResult(version=2, baseline_score=0.25, optimized_score=0.75, dev_examples=4,
                                                          lm_calls=20, elapsed_s=1.5))
    assert jobs_view.result_lines(done) == [
        "job j1 succeeded: qa version 2 (from version 1)",
        "dev score: baseline 0.250, optimized 0.750 (+0.500) on 4 examples",
        "20 LM calls in 1.5 s",
        "not promoted (to serve it: dspy-pool policy set qa --optimized-version 2)",
    ]
    assert jobs_view.result_lines(_job("failed", error="boom")) == ["job j1 failed: boom"]
    assert jobs_view.policy_lines(pb.ExecutionPolicy(program="qa", mode="hybrid", hybrid_percent=20, sticky_sessions=True))[0] == \
        "qa: mode hybrid (20% of calls to the optimized version, sticky sessions)"


def test_a_job_the_stopped_server_ran_says_interrupted_and_the_command_that_starts_it_again():
    """When the server stops under `optimize`, a running job is to show as interrupted, and the printed command,
    run again, asks for the same optimization."""
    request = pb.StartOptimizationRequest(program="qa", dataset="qa data", optimizer="mipro_v2", base_version=3, priority=2,
                                          seed=7, metric=pb.MetricSpec(kind="f1", fields=["answer"]),
                                          budget=pb.OptimizationBudget(max_lm_calls=400, max_seconds=90.5))
    request.options.update({"auto": "light", "max_demos": 4, "mode": "true", "xs": [1, 2]})
    request.metric.options.update({"threshold": 0.5})
    note = optimize_cli.after_server_stopped(pb.OptimizationJob(job_id="j1", state="running", request=request))
    assert "j1" in note and "will show as interrupted once the server is back" in note and "may still be running" not in note
    command = shlex.split(note.partition("to start it again: ")[2])
    assert command[:2] == ["dspy-pool", "optimize"]
    args = _parse(command[1:])
    assert optimize_cli.optimization_request(args) == request
    queued = optimize_cli.after_server_stopped(pb.OptimizationJob(job_id="j2", state="queued", request=request))
    assert "stays queued and runs once the server is back" in queued


def _parse(argv: list[str]):
    import argparse

    from dspy_pool import client_cli

    parser = argparse.ArgumentParser(prog="dspy-pool")
    client_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_stats_table_shows_feedback_count_and_mean_score():
    """`stats` has the feedback columns: the scores received for the version and their mean ('-' when none)."""
    from rich.console import Console

    stats = pb.ProgramStats(program="qa", arms=[
        pb.ArmStats(version=1, arm="traditional", calls=10, feedback_count=4, feedback_score_mean=0.625),
        pb.ArmStats(version=2, arm="optimized", calls=3)])
    console = Console(file=io.StringIO(), width=200)
    console.print(jobs_view.stats_table(stats))
    header, first, second = [line.split() for line in console.file.getvalue().splitlines()]
    assert header[-3:] == ["feedback", "mean", "score"]
    assert first[-2:] == ["4", "0.625"] and second[-2:] == ["0", "-"]


# -- against the server ---------------------------------------------------------------------------


@on_server_loop
async def test_datasets_add_list_get_delete(cli, tmp_path):
    """`datasets add` sends each split, prints the counts; list, get (--json) and delete see the dataset."""
    path = write_file(tmp_path, "qa.jsonl", _jsonl(_rows(None, ("2+2?", "4"), ("3+3?", "6")) + _rows("dev", ("1+1?", "2"))))
    added = await cli("datasets", "add", "cli_ds", path, "--split", "train")
    assert added.code == 0, added.err
    assert added.out.startswith("added 2 examples to train and 1 example to dev; cli_ds: train 2, dev 1, content ")
    listing = await cli("datasets", "list")
    assert listing.code == 0 and any(line.split()[:3] == ["cli_ds", "2", "1"] for line in listing.out.splitlines())
    shown = (await cli("datasets", "get", "cli_ds", "--json")).json()
    assert shown["name"] == "cli_ds" and shown["counts"] == {"train": 2, "dev": 1} and shown["content_hash"]
    more = await cli("datasets", "add", "cli_ds", "-", "--split", "train", "--json", stdin=_jsonl(_rows(None, ("a", "b"), ("c", "d"))))
    assert more.json()["added"] == {"train": 2} and more.json()["dataset"]["counts"]["train"] == 4
    deleted = await cli("datasets", "delete", "cli_ds")
    assert deleted.code == 0 and deleted.out.strip() == "deleted dataset cli_ds"
    gone = await cli("datasets", "get", "cli_ds")
    assert gone.code == 1 and gone.err.startswith("dspy-pool: NOT_FOUND: ") and len(gone.err.splitlines()) == 1


@on_server_loop
async def test_datasets_add_refuses_a_bad_file_before_sending(cli, tmp_path):
    """A bad row anywhere in the file: exit 2, the row named, and nothing was added."""
    path = write_file(tmp_path, "half.jsonl", _jsonl(_rows(None, ("a", "b"))) + '{"inputs": {"question": "x"}}\n')
    ran = await cli("datasets", "add", "cli_half", path, "--split", "train")
    assert ran.code == 2 and ran.out == "" and ran.err.startswith(f"dspy-pool: {path}: line 2: outputs")
    assert (await cli("datasets", "get", "cli_half")).code == 1


@on_server_loop
async def test_policy_set_changes_only_what_is_named(cli, tmp_path):
    """`policy set` changes the named fields and keeps the others; `policy get` shows them; nothing named is exit 2."""
    await _register(cli, tmp_path, "cli_policy")
    hybrid = await cli("policy", "set", "cli_policy", "--mode", "hybrid", "--hybrid-percent", "20", "--sticky-sessions")
    assert hybrid.code == 0, hybrid.err
    assert hybrid.out.splitlines()[0] == "cli_policy: mode hybrid (20% of calls to the optimized version, sticky sessions)"
    auto = await cli("policy", "set", "cli_policy", "--promotion", "auto", "--min-improvement", "0.05", "--json")
    assert auto.json()["mode"] == "hybrid" and auto.json()["hybrid_percent"] == 20 and auto.json()["promotion"] == "auto"
    shown = await cli("policy", "get", "cli_policy")
    assert shown.out.splitlines() == ["cli_policy: mode hybrid (20% of calls to the optimized version, sticky sessions)",
                                      "base version latest, optimized version none",
                                      "promotion auto (min improvement 0.05, min dev examples 0)"]
    nothing = await cli("policy", "set", "cli_policy")
    assert nothing.code == 2 and nothing.err.startswith("dspy-pool: nothing to change")
    unknown = await cli("policy", "get", "cli_no_such_program")
    assert unknown.code == 1 and unknown.err.startswith("dspy-pool: NOT_FOUND: ")


@on_server_loop
async def test_call_with_a_mode_prints_the_execution_mode_and_stats_count_it(cli, tmp_path):
    """`call --mode` says the mode on stderr (and in --json); evaluation prints the other arm; `stats` counts each arm."""
    await _register(cli, tmp_path, "cli_modes")
    changed = write_file(tmp_path, "v2.yaml", "name: cli_modes\nsignature: question -> answer\ninstructions: be brief\n")
    assert (await cli("register", changed)).code == 0
    assert (await cli("policy", "set", "cli_modes", "--base-version", "1", "--optimized-version", "2")).code == 0
    plain = await cli("call", "cli_modes", '{"question": "hi"}', "--mode", "traditional")
    assert plain.code == 0 and plain.err.startswith("cli_modes version 1, worker ") and ", mode traditional, " in plain.err
    optimized = (await cli("call", "cli_modes", '{"question": "hi"}', "--mode", "optimized", "--json")).json()
    assert optimized["execution_mode"] == "optimized" and optimized["program_version"] == 2
    evaluation = await cli("call", "cli_modes", '{"question": "hi"}', "--mode", "evaluation")
    assert evaluation.code == 0 and ", mode evaluation, " in evaluation.err
    assert evaluation.err.splitlines()[1].startswith("evaluation: version 2 answered in ")
    bad = await cli("call", "cli_modes", '{"question": "hi"}', "--mode", "sometimes")
    assert bad.code == 2 and "invalid choice" in bad.err

    stats = (await cli("stats", "cli_modes", "--json")).json()
    calls = {(arm["version"], arm["arm"]): int(arm["calls"]) for arm in stats["arms"]}
    assert calls == {(1, "traditional"): 1, (2, "optimized"): 1, (1, "evaluation"): 1, (2, "evaluation"): 1}
    table = await cli("stats", "cli_modes")
    assert table.code == 0 and table.out.startswith("cli_modes: mode traditional\n") and "optimized" in table.out


@on_server_loop
async def test_optimize_refuses_an_unknown_dataset_or_optimizer(cli, tmp_path):
    """`optimize` with a dataset that does not exist is NOT_FOUND, an unknown optimizer INVALID_ARGUMENT: exit 1."""
    await _register(cli, tmp_path, "cli_refused")
    missing = await cli("optimize", "cli_refused", "--dataset", "cli_no_such_ds", "--optimizer", "labeled_few_shot")
    assert missing.code == 1 and missing.err.startswith("dspy-pool: NOT_FOUND: ") and "cli_no_such_ds" in missing.err
    path = write_file(tmp_path, "tiny.jsonl", _jsonl(_rows("train", ("a", "b")) + _rows("dev", ("c", "d"))))
    assert (await cli("datasets", "add", "cli_refused_ds", path)).code == 0
    unknown = await cli("optimize", "cli_refused", "--dataset", "cli_refused_ds", "--optimizer", "no_such_optimizer")
    assert unknown.code == 1 and unknown.err.startswith("dspy-pool: INVALID_ARGUMENT: ") and "no_such_optimizer" in unknown.err
    option = await cli("optimize", "cli_refused", "--dataset", "cli_refused_ds", "--optimizer", "labeled_few_shot", "--option", "k")
    assert option.code == 2 and "expected KEY=VALUE" in option.err


TRAIN = (("What is 2+2?", "4"), ("What is the capital of France?", "Paris"), ("What color is the sky?", "blue"))
DEV = (("What is 3+3?", "6"), ("What is the capital of Italy?", "Rome"))


@on_server_loop
async def test_optimize_waits_and_prints_the_new_version_then_jobs_show_it(cli, tmp_path):
    """`optimize` with labeled_few_shot waits, prints the new version and scores; jobs list/get/watch/cancel see the job."""
    await _register(cli, tmp_path, "cli_opt")
    path = write_file(tmp_path, "opt.jsonl", _jsonl(_rows("train", *TRAIN) + _rows("dev", *DEV)))
    assert (await cli("datasets", "add", "cli_opt_ds", path)).code == 0
    ran = await cli("optimize", "cli_opt", "--dataset", "cli_opt_ds", "--optimizer", "labeled_few_shot",
                    "--metric", "exact_match", "--metric-field", "answer", "--option", "k=2", "--max-lm-calls", "500")
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    job_id = lines[0].split()[1]
    assert lines[0] == f"job {job_id} succeeded: cli_opt version 2 (from version 1)"
    assert lines[1].startswith("dev score: baseline ") and lines[1].endswith(" on 2 examples")
    assert "succeeded" in ran.err.splitlines()[-1]  # the progress lines (stderr is not a terminal: one per change)

    listed = (await cli("jobs", "list", "cli_opt", "--json")).json()["jobs"]
    assert [job["job_id"] for job in listed] == [job_id] and listed[0]["result"]["version"] == 2
    table = await cli("jobs", "list")
    assert any(line.split()[:2] == [job_id, "cli_opt"] for line in table.out.splitlines())
    shown = await cli("jobs", "get", job_id)
    assert shown.out.splitlines()[0] == f"job {job_id}: succeeded" and "metric exact_match on answer" in shown.out
    assert "options: k=2" in shown.out
    watched = await cli("jobs", "watch", job_id)
    assert watched.code == 0 and watched.out.splitlines()[0] == lines[0]
    cancelled = await cli("jobs", "cancel", job_id)
    assert cancelled.out.strip() == f"job {job_id} had already succeeded; nothing to cancel"
    program = (await cli("programs", "get", "cli_opt", "--version", "2", "--json")).json()
    assert program["meta"]["job_id"] == job_id and program["meta"]["optimizer"] == "labeled_few_shot"

    again = await cli("optimize", "cli_opt", "--dataset", "cli_opt_ds", "--optimizer", "labeled_few_shot", "--metric-field",
                      "answer", "--option", "k=2", "--max-lm-calls", "500", "--no-wait", "--json")
    assert again.json()["job_id"] == job_id and again.json()["reused"] is True
    assert (await cli("jobs", "get", "no-such-job")).err.startswith("dspy-pool: NOT_FOUND: ")


@on_server_loop
async def test_optimize_in_a_terminal_draws_a_live_line_then_the_result(target, tmp_path, cli):
    """`python -m dspy_pool.cli optimize` in a terminal redraws one progress line, prints the result, exits 0."""
    await _register(cli, tmp_path, "cli_tty")
    path = write_file(tmp_path, "tty.jsonl", _jsonl(_rows("train", *TRAIN) + _rows("dev", *DEV)))
    assert (await cli("datasets", "add", "cli_tty_ds", path)).code == 0
    leader, follower = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dspy_pool.cli", "optimize", "cli_tty", "--dataset", "cli_tty_ds", "--optimizer",
        "labeled_few_shot", "--target", target, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    try:
        seen = await asyncio.to_thread(_read_terminal, leader, lambda text: b"dev score:" in text and b"promoted" in text)
        await asyncio.wait_for(process.wait(), 30)
    finally:
        os.close(leader)
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = seen.decode(errors="replace")
    assert process.returncode == 0 and "Traceback" not in text, text[-2000:]
    assert "\r\x1b[2K" in text and "cli_tty: labeled_few_shot" in text  # redrawn in place
    assert "succeeded: cli_tty version 2 (from version 1)" in text


def _read_terminal(fd: int, until, timeout_s: float = 60.0) -> bytes:
    """What the program wrote to its terminal, until `until(seen)`, EOF, or timeout_s."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while not until(seen) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the program exited and closed its end
            break
        if not chunk:
            break
        seen += chunk
    return seen


@on_server_loop
async def test_feedback_scores_a_captured_call_or_makes_it_an_example(cli, tmp_path):
    """`feedback ID --score` counts in `stats`; `--expected` adds the call to the capture's dataset; a call takes
    feedback once (then NOT_FOUND, exit 1); neither option is a usage error (exit 2)."""
    spec = write_file(tmp_path, "fb.yaml", "name: cli_fb\nsignature: question -> answer\n"
                                           "capture: {sample_rate: 1, dataset: cli_fb_data}\n")
    assert (await cli("register", spec)).code == 0
    for request_id in ("fb-1", "fb-2"):
        assert (await cli("call", "cli_fb", '{"question": "2+2?"}', "--request-id", request_id)).code == 0

    scored = await cli("feedback", "fb-1", "--score", "0.25")
    assert scored.code == 0, scored.err
    assert scored.out.strip() == "feedback recorded for cli_fb version 1: no example added"
    corrected = await cli("feedback", "fb-2", "--expected", '{"answer": "4"}', "--json")
    assert corrected.json() == {"example_added": True, "dataset": "cli_fb_data", "program": "cli_fb", "version": 1}
    assert (await cli("datasets", "get", "cli_fb_data", "--json")).json()["counts"] == {"train": 1}

    again = await cli("feedback", "fb-1", "--score", "1")
    assert again.code == 1 and again.err.startswith("dspy-pool: NOT_FOUND: ")
    nothing = await cli("feedback", "fb-3")
    assert nothing.code == 2 and "give --score, --expected, or both" in nothing.err
    not_an_object = await cli("feedback", "fb-3", "--expected", '["4"]')
    assert not_an_object.code == 2 and "--expected must be a non-empty JSON object" in not_an_object.err

    table = (await cli("stats", "cli_fb")).out.splitlines()
    assert table[1].split()[-3:] == ["feedback", "mean", "score"]
    assert table[2].split()[-2:] == ["1", "0.250"]


@on_server_loop
async def test_examples_the_server_refuses_exit_2(cli, tmp_path):
    """Examples the server refuses (INVALID_ARGUMENT: here the dataset name) exit 2, as when the client finds the fault."""
    path = write_file(tmp_path, "rows.jsonl", _jsonl(_rows("train", ("2+2?", "4"))))
    ran = await cli("datasets", "add", "no spaces allowed!", path)
    assert ran.code == 2 and ran.err.startswith("dspy-pool: INVALID_ARGUMENT: "), ran.err
