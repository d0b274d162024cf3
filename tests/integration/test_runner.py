"""runner.run: DSPy's real optimizers against the simulated LM over HTTP, under budgets, cancellable."""

import asyncio
import json
import os
import re
import threading
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")

import dspy
import pytest
import pytest_asyncio

from dspy_pool.errors import InvalidArgument
from dspy_pool.optimize import runner
from dspy_pool.optimize.task import Budget, Cancelled, Example, MetricSpec, OptimizeTask
from dspy_pool.pool import programs
from dspy_pool.simlm.process import start_sim_lm
from dspy_pool.v1 import dspy_pool_pb2 as pb

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

DATASET = Path(__file__).resolve().parents[2] / "examples" / "optimize" / "dataset.jsonl"
SIM_MODEL = "openai/sim"


def load(split):
    rows = [json.loads(line) for line in DATASET.read_text().splitlines() if line.strip()]
    return tuple(Example(r["inputs"], r["outputs"]) for r in rows if r["split"] == split)


TRAIN, DEV = load("train"), load("dev")
SPEC = pb.ProgramSpec(name="word_code", signature="word -> code")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim():
    process = await start_sim_lm()
    yield process
    await process.stop()


def sim_lm(sim, cache=True, **options):
    return dspy.LM(SIM_MODEL, api_base=sim.api_base, api_key="sim-key", cache=cache, num_retries=0, **options)


def task(optimizer, options=None, *, train=TRAIN, dev=DEV, budget=Budget(), spec=SPEC, metric=None, seed=0):
    return OptimizeTask(spec=spec.SerializeToString(), train=train, dev=dev, optimizer=optimizer, options=options or {},
                        metric=metric or MetricSpec("exact_match", ("code",)), budget=budget, seed=seed, num_threads=4)


async def optimize(job, lm, progress=None, cancelled=lambda: False, **kwargs):
    reports = [] if progress is None else progress
    return await asyncio.to_thread(runner.run, job, reports.append, cancelled, lm=lm, **kwargs)


async def requests(sim):
    return (await sim.stats())["requests"]


def rebuilt(state_json, spec=SPEC):
    with_state = pb.ProgramSpec()
    with_state.CopyFrom(spec)
    with_state.state_json = state_json
    return programs.build(with_state)


IMPROVERS = [
    ("labeled_few_shot", {"k": 8}),
    ("bootstrap_few_shot", {"max_bootstrapped_demos": 4, "max_labeled_demos": 4}),
    ("bootstrap_few_shot_with_random_search", {"num_candidate_programs": 2, "max_labeled_demos": 4}),
    ("mipro_v2", {"auto": "light"}),
    ("mipro_v2", {"auto": "none", "num_trials": 3, "num_candidates": 2}),
    ("copro", {"breadth": 4, "depth": 2}),
    ("simba", {"bsize": 8, "num_candidates": 4, "max_steps": 4, "max_demos": 4}),
    ("gepa", {"max_metric_calls": 300, "reflection_lm": SIM_MODEL, "reflection_minibatch_size": 4}),
]


@pytest.mark.parametrize(("optimizer", "options"), IMPROVERS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(IMPROVERS)])
async def test_optimizer_beats_the_baseline_and_its_state_round_trips(sim, optimizer, options):
    """The real DSPy optimizer lifts the dev score on the shipped dataset; its state loads back through programs.build."""
    result = await optimize(task(optimizer, options), sim_lm(sim))
    assert result.dev_examples == len(DEV)
    assert result.optimized_score > result.baseline_score
    assert not result.budget_limited and result.lm_calls >= 2 * len(DEV)
    state = json.loads(result.state_json)
    assert state["lm"] is None and "config" not in state
    program = rebuilt(result.state_json)
    assert program.module.demos or program.module.signature.instructions != programs.build(SPEC).module.signature.instructions


async def test_state_round_trips_for_chain_of_thought_with_lm_options(sim):
    """A ChainOfThought program with lm_options: its saved state holds no LM config and loads with the operator's rules."""
    spec = pb.ProgramSpec(name="word_code", signature="word -> code", module="chain_of_thought")
    spec.lm_options.update({"temperature": 0.0})
    rules = programs.BuildRules(lm_options={"temperature": runner.catalog.Option(float, min=0, max=2)})
    result = await optimize(task("bootstrap_few_shot", {"max_bootstrapped_demos": 2, "max_labeled_demos": 2}, spec=spec),
                            sim_lm(sim), rules=rules)
    state = json.loads(result.state_json)
    assert state["predict"]["lm"] is None and "config" not in state["predict"]
    assert any(demo.get("augmented") for demo in state["predict"]["demos"])
    with_state = pb.ProgramSpec()
    with_state.CopyFrom(spec)
    with_state.state_json = result.state_json
    program = programs.build(with_state, rules)
    assert program.module.predict.config == {"temperature": 0.0}
    assert result.optimized_score > result.baseline_score


async def test_progress_reports_each_phase_in_order(sim):
    """Progress comes at each phase change, LM calls never go down, and the last report is the result."""
    reports = []
    result = await optimize(task("labeled_few_shot", {"k": 8}), sim_lm(sim), reports)
    phases = [p.phase for p in reports]
    assert [phase for i, phase in enumerate(phases) if i == 0 or phases[i - 1] != phase] == [
        "baseline", "optimizing", "evaluating", "done"]
    assert [p.lm_calls for p in reports] == sorted(p.lm_calls for p in reports)
    assert reports[-1].lm_calls == result.lm_calls and reports[-1].best_score == result.optimized_score


async def test_random_search_reports_trials(sim):
    """Random search reports its candidate evaluations as trials, out of num_candidate_programs + 3."""
    reports = []
    await optimize(task("bootstrap_few_shot_with_random_search", {"num_candidate_programs": 2}), sim_lm(sim), reports)
    optimizing = [p for p in reports if p.phase == "optimizing"]
    assert optimizing[-1].trials_planned == 5 and reports[-1].trials_planned == 5
    assert reports[-1].trials_done == 5


async def test_call_budget_is_never_exceeded_and_keeps_the_best_candidate(sim):
    """Random search cut short by max_lm_calls: the sim sees at most N requests; the best scored candidate is kept."""
    limit = 2 * len(DEV) + 85  # zero-shot and labeled-only candidates scored, then the budget runs out
    before = await requests(sim)
    result = await optimize(task("bootstrap_few_shot_with_random_search", {"num_candidate_programs": 8},
                                 budget=Budget(max_lm_calls=limit)), sim_lm(sim, cache=False))
    served = await requests(sim) - before
    assert result.budget_limited
    assert served <= result.lm_calls <= limit  # counted before sending: one may never arrive
    assert result.optimized_score > result.baseline_score  # the labeled-only candidate beat zero-shot
    assert rebuilt(result.state_json).module.demos


async def test_bootstrap_cut_short_keeps_the_demos_bootstrapped_so_far(sim):
    """bootstrap_few_shot with room for two bootstrap attempts: those demos (topped up with labels) are the result."""
    limit = 2 * len(DEV) + 2
    before = await requests(sim)
    result = await optimize(task("bootstrap_few_shot", {"max_bootstrapped_demos": 4, "max_labeled_demos": 4},
                                 budget=Budget(max_lm_calls=limit)), sim_lm(sim, cache=False))
    assert await requests(sim) - before <= result.lm_calls <= limit  # counted before sending: one may never arrive
    assert result.budget_limited
    demos = json.loads(result.state_json)["demos"]
    assert 1 <= sum(1 for d in demos if d.get("augmented")) <= 2 and len(demos) == 4
    assert result.optimized_score > result.baseline_score


@pytest.mark.parametrize(("optimizer", "options"), [
    ("copro", {"breadth": 4, "depth": 2}),  # proposals ask for n completions: n requests each
    ("mipro_v2", {"auto": "light"}),
    ("simba", {"bsize": 8, "num_candidates": 4, "max_steps": 8}),
])
async def test_every_optimizer_stays_within_the_call_budget(sim, optimizer, options):
    """Whatever the optimizer does (n completions, proposals, parallel batches), the sim sees at most N requests."""
    limit = 2 * len(DEV) + 90
    before = await requests(sim)
    result = await optimize(task(optimizer, options, budget=Budget(max_lm_calls=limit)), sim_lm(sim, cache=False))
    assert result.budget_limited
    assert await requests(sim) - before <= result.lm_calls <= limit  # counted before sending: one may never arrive
    rebuilt(result.state_json)  # whatever was kept loads back


async def test_budget_too_small_for_scoring_is_refused_before_any_call(sim):
    """A budget that cannot score dev twice is InvalidArgument, and no LM call is made."""
    before = await requests(sim)
    with pytest.raises(InvalidArgument, match="max_lm_calls=59 cannot score 30 dev examples twice"):
        await optimize(task("labeled_few_shot", budget=Budget(max_lm_calls=59)), sim_lm(sim, cache=False))
    assert await requests(sim) == before


async def test_time_budget_stops_the_optimizer(sim):
    """max_seconds cuts a long random search short; the job still returns a scored result."""
    result = await optimize(task("bootstrap_few_shot_with_random_search", {"num_candidate_programs": 64},
                                 budget=Budget(max_seconds=1.5)), sim_lm(sim, cache=False))
    assert result.budget_limited
    assert result.lm_calls < 2 * len(DEV) + 67 * len(TRAIN)  # far fewer than the whole search


@pytest.mark.parametrize(("optimizer", "options", "problem"), [
    ("dspy.Ensemble", {}, "unknown optimizer"),
    ("labeled_few_shot", {"k": 0}, "'k'.*below the minimum"),
    ("bootstrap_few_shot", {"teacher_settings": {}}, "'teacher_settings' is not accepted"),
    ("mipro_v2", {"auto": "light", "num_trials": 2}, "cannot be combined"),
    ("simba", {"bsize": 64}, "'bsize' \\(64\\) exceeds the train split"),
    ("gepa", {"reflection_lm": "openai/other"}, "model 'openai/other' is not available"),
])
async def test_bad_options_are_invalid_argument(sim, optimizer, options, problem):
    """Bad optimizer names or options are InvalidArgument naming the problem."""
    with pytest.raises(InvalidArgument, match=problem):
        await optimize(task(optimizer, options), sim_lm(sim))


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"dev": ()}, "the dev split is empty"),
    ({"train": (Example({"question": "x"}, {"code": "X"}),)}, "train example 0: unknown input 'question'"),
    ({"train": (Example({"word": "x"}, {"answer": "X"}),)}, "train example 0: 'answer' is not an output field"),
    ({"metric": MetricSpec("exact_match", (), {"fuzzy": True})}, "'fuzzy' is not accepted"),
    ({"spec": pb.ProgramSpec(name="x", signature="word -> code", module="nope")}, "unknown module kind 'nope'"),
])
async def test_bad_jobs_are_invalid_argument(sim, kwargs, problem):
    """Examples that do not fit the signature, a bad metric or spec: InvalidArgument before any LM call."""
    before = await requests(sim)
    with pytest.raises(InvalidArgument, match=problem):
        await optimize(task("labeled_few_shot", **kwargs), sim_lm(sim, cache=False))
    assert await requests(sim) == before


async def test_cancel_stops_the_job_within_two_seconds(sim):
    """cancelled() turning true mid-optimization raises Cancelled promptly, and no LM call follows."""
    cancel = threading.Event()
    flagged_at = []

    def on_progress(progress):
        if progress.phase == "optimizing" and progress.lm_calls > 2 * len(DEV) and not cancel.is_set():
            flagged_at.append(time.monotonic())
            cancel.set()

    job = task("bootstrap_few_shot_with_random_search", {"num_candidate_programs": 64})
    before = await requests(sim)
    with pytest.raises(Cancelled, match=r"after (\d+) LM calls") as raised:
        await asyncio.to_thread(runner.run, job, on_progress, cancel.is_set, lm=sim_lm(sim, cache=False))
    took = time.monotonic() - flagged_at[0]
    admitted = int(re.search(r"after (\d+) LM calls", str(raised.value)).group(1))
    await asyncio.sleep(0.3)  # calls already in flight land
    landed = await requests(sim) - before
    await asyncio.sleep(0.3)
    assert await requests(sim) - before == landed <= admitted  # nothing is sent after the cancel
    assert took < 15.0, f"cancel took {took:.2f}s"  # promptly: the 64 candidates would take minutes
    print(f"cancel_to_raise_s={took:.3f}")


async def test_cancel_while_an_lm_call_hangs(sim):
    """Even with every LM call hanging, cancelled() ends run() with Cancelled promptly."""
    await sim.set_faults(hang_rate=1.0)
    try:
        cancel = threading.Event()
        threading.Timer(0.5, cancel.set).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            await optimize(task("labeled_few_shot"), sim_lm(sim, cache=False, timeout=10), cancelled=cancel.is_set)
        took = time.monotonic() - started - 0.5
        assert took < 9.0, f"cancel took {took:.2f}s"  # not waiting out the hanging call's 10 s timeout
        print(f"cancel_mid_call_s={took:.3f}")
    finally:
        await sim.set_faults(hang_rate=0.0)


async def test_judge_and_reflection_calls_count_against_the_budget(sim):
    """GEPA's reflection LM and an llm_judge metric go through the same gate: the sim sees no more than the budget."""
    limit = 2 * len(DEV) + 40
    before = await requests(sim)
    lm = sim_lm(sim, cache=False)
    resolved = []

    def lm_for(name):
        resolved.append(name)
        return lm

    metric = MetricSpec("llm_judge", ("code",), {"rubric": "Is the code the reversed word plus its length?", "model": "judge"})
    result = await optimize(task("gepa", {"max_metric_calls": 200, "reflection_lm": "reflector"}, budget=Budget(limit),
                                 metric=metric, dev=DEV[:10]), lm, lm_for=lm_for)
    assert sorted(set(resolved)) == ["judge", "reflector"]
    assert await requests(sim) - before <= result.lm_calls <= limit  # counted before sending: one may never arrive


@pytest.mark.parametrize(("optimizer", "options"), [
    ("simba", {"bsize": 8, "num_candidates": 4, "max_steps": 4, "max_demos": 4}),
    ("gepa", {"max_metric_calls": 300, "reflection_lm": SIM_MODEL, "reflection_minibatch_size": 4}),
], ids=["simba", "gepa"])
async def test_a_job_stops_when_the_lm_fails_call_after_call(sim, optimizer, options, monkeypatch):
    """The provider goes down while the optimizer runs: optimizers score a failed call 0 and go on (up to 358 requests
    into an outage, then a failed job). After LM_FAILURES_IN_A_ROW failures in a row the job stops, saying why.
    (Transient errors are asked again after a wait: no retries here, so that the test does not wait.)"""
    monkeypatch.setattr(runner, "TRANSIENT_RETRIES", 0)
    loop = asyncio.get_running_loop()
    counted: dict[str, int] = {}

    def on_progress(progress) -> None:  # on the thread running the job: the outage starts as the optimizing phase does
        if progress.phase == "optimizing" and not counted:
            counted["before"] = asyncio.run_coroutine_threadsafe(requests(sim), loop).result()
            asyncio.run_coroutine_threadsafe(sim.set_faults(error_rate=1.0), loop).result()

    try:
        with pytest.raises(RuntimeError, match=f"the LM failed {runner.LM_FAILURES_IN_A_ROW} calls in a row"):
            await asyncio.to_thread(runner.run, task(optimizer, options), on_progress, lambda: False, lm=sim_lm(sim, cache=False))
        sent = await requests(sim) - counted["before"]
    finally:
        await sim.set_faults(error_rate=0.0)
    assert sent <= runner.LM_FAILURES_IN_A_ROW + 16, sent  # calls already in flight on the other threads finish (was 358)


async def test_transient_lm_errors_are_asked_again_after_a_wait():
    """The pure policy: a rate limit waits what the provider said (capped at 30 s), a 5xx or a dropped connection
    0.5, 1, 2 s; past TRANSIENT_RETRIES, or for any other error, the error stands."""
    limited = dspy.LMRateLimitError("slow down", retry_after=2.0)
    assert runner.transient_wait_s(limited, 1) == 2.0
    assert runner.transient_wait_s(dspy.LMRateLimitError("slow down", retry_after=600.0), 1) == 30.0
    server = dspy.LMServerError("boom")
    assert [runner.transient_wait_s(server, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, None]
    assert runner.transient_wait_s(dspy.LMAuthError("no"), 1) is None and runner.transient_wait_s(ValueError(), 1) is None


async def test_a_flaky_provider_does_not_fail_the_job(sim, monkeypatch):
    """40 % of calls answered 500: each is asked again (counted in the budget), so the baseline and the final scoring
    see real answers (the first 500 while scoring the base failed the whole job). Waits of 10 ms here, not 0.5 s."""
    monkeypatch.setattr(runner, "RETRY_BASE_S", 0.01)
    await sim.set_faults(error_rate=0.4)
    try:
        result = await optimize(task("labeled_few_shot", {"k": 8}), sim_lm(sim, cache=False))
    finally:
        await sim.set_faults(error_rate=0.0)
    assert result.dev_examples == len(DEV) and result.optimized_score > result.baseline_score
