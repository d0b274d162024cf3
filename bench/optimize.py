"""Background optimization benchmark: serving under a running job, promotion, the shipped optimizers; one JSON object.

    python bench/optimize.py [--seconds 5] [--repeats 3] [--in-flight 64] [--sim-latency fixed:20]
                             [--job-optimizers bootstrap_few_shot_with_random_search,mipro_v2]
                             [--optimizers labeled_few_shot,bootstrap_few_shot,...] [--promotion-jobs 3] [--flips 20]

One App in this process (simulated LM, `--workers` serving workers, one
optimizer worker, in-memory state, gRPC on 127.0.0.1:0), the program
`coder` (`word -> code`, the simulated LM's learnable task) and the shipped
dataset examples/optimize/dataset.jsonl (40 train, 30 dev) as `words`.
The operator allow-list (optimizer_lms) holds the simulated LM's model id,
so GEPA's reflection_lm can name it. Phases:

1. serving: --in-flight clients calling `coder` back to back (traditional
   mode: the base version answers) for --seconds, (a) with no job, (b) while a
   job of each of --job-optimizers runs (server-default options; mipro_v2
   auto=light). During (b) a keeper starts the next job (a new seed, so the
   dedup cache never hands back a finished job) as soon as one ends, and only
   calls that started and ended while GetOptimization said `running` count
   (polled every 50 ms, the interval kept to the polls that saw it running).
   The phases take turns within each of --repeats repeats, in an order rotated
   every repeat, so the machine's noise hits all of them. Figures: p50/p99 and
   calls/s (median and spread over repeats), the CPU (in cores) of the serving
   workers, the optimizer worker, the simulated LM and this process per phase,
   and the ratios job / no job (target issue 11: p99 <= 1.3x).
2. promotion latency: policy optimized + promotion auto (min_improvement 0.1);
   --promotion-jobs bootstrap_few_shot jobs (a different seed and demo count
   each, so each makes a new version, not an equal one), each watched
   with WatchOptimization; from the moment the stream delivers `succeeded`,
   4 pollers call Execute back to back until a response carries the job's
   version. The delay is the end of the first such call minus that moment
   (target <= 1 s); also from the job's server-side updated_at (wall clock,
   same machine). The first call needs the new version built on a worker.
   No other load runs meanwhile.
3. promotions under load: --in-flight clients while SetExecutionPolicy flips
   optimized_version between two versions --flips times, every --flip-interval-s:
   failed calls (target 0), and stale calls (sent after a flip returned, served
   by the other version).
4. the shipped optimizers (--optimizers; defaults: every catalog optimizer,
   with the small settings of examples/optimize/demo.py): baseline and
   optimized dev scores (exact match on `code`), the job's elapsed_s and LM
   calls, and the wall time from StartOptimization to the job's end; a job
   past --job-timeout-s is cancelled and reported so.

The load generator shares this process (and event loop) with the front, as
bench/state.py does. stdout carries the one JSON object; the log goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import contextlib
import itertools
import json
import os
import pathlib
import statistics
import sys
import time

import grpc
import psutil

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from closed_loop import percentile_ms  # noqa: E402  (bench/, as bench/state.py does)
from load_stats import spread  # noqa: E402

from dspy_pool import logs  # noqa: E402
from dspy_pool.optimize import catalog  # noqa: E402
from dspy_pool.optimize_cli import read_examples  # noqa: E402
from dspy_pool.server.app import App  # noqa: E402
from dspy_pool.server.config import build as server_config  # noqa: E402
from dspy_pool.v1 import dspy_pool_pb2 as pb  # noqa: E402
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc  # noqa: E402

DATASET_FILE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "optimize" / "dataset.jsonl"
PROGRAM = "coder"
DATASET = "words"
METRIC = pb.MetricSpec(kind="exact_match", fields=["code"])
SIM_MODEL = "openai/sim"  # the model id the workers give the simulated LM (server/app.py worker_settings)
FINISHED = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
TARGETS = {"p99_ratio_max": 1.3, "promotion_delay_s_max": 1.0, "failed_calls_during_promotions": 0}  # issue 11

# Phase 1(b): what runs while serving is measured (server defaults but for mipro_v2's preset).
JOB_OPTIONS: dict[str, dict] = {"bootstrap_few_shot_with_random_search": {}, "mipro_v2": {"auto": "light"}}
# Phase 4: the small settings of examples/optimize/demo.py (the whole set runs in seconds on two cores).
CATALOG_OPTIONS: dict[str, dict] = {
    "labeled_few_shot": {"k": 8},
    "bootstrap_few_shot": {"max_bootstrapped_demos": 4, "max_labeled_demos": 4},
    "bootstrap_few_shot_with_random_search": {"num_candidate_programs": 4, "max_labeled_demos": 4},
    "mipro_v2": {"auto": "light"},
    "copro": {"breadth": 4, "depth": 2},
    "simba": {"bsize": 8, "num_candidates": 4, "max_steps": 4, "max_demos": 4},
    "gepa": {"max_metric_calls": 300, "reflection_lm": SIM_MODEL, "reflection_minibatch_size": 4},
}
CPU_PARTS = ("serving_workers", "optimizer_worker", "sim_lm", "front_and_load")


def log(message: str) -> None:
    print(f"bench/optimize: {message}", file=sys.stderr, flush=True)



def examples(split: str) -> list[pb.Example]:
    return read_examples(str(DATASET_FILE), "", None)[split]  # as `dspy-pool datasets add` reads it


def cpu_seconds(app: App) -> tuple[float, ...]:
    """CPU seconds so far of the serving workers, the optimizer worker(s), the simulated LM and this process."""

    def of(pids) -> float:
        total = 0.0
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
        return total

    pool = app.pool.worker_pool
    sim = [app.sim.pid] if getattr(app, "sim", None) is not None else []
    return (of(h.pid for h in pool.handles()), of(h.pid for h in pool.optimizer_handles()), of(sim), of([os.getpid()]))


def optimization(optimizer: str, options: dict, seed: int, max_lm_calls: int = 0) -> pb.StartOptimizationRequest:
    request = pb.StartOptimizationRequest(program=PROGRAM, dataset=DATASET, optimizer=optimizer, metric=METRIC, seed=seed,
                                          budget=pb.OptimizationBudget(max_lm_calls=max_lm_calls))
    request.options.update(options)
    return request


async def set_policy(stub, **fields) -> None:
    await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(program=PROGRAM, **fields)), timeout=10)


async def load(stub, in_flight: int, done, tag: str) -> tuple[list[tuple[float, float, int]], collections.Counter]:
    """`in_flight` clients calling PROGRAM back to back until done(); (sent, ended, program_version) of each success."""
    records: list[tuple[float, float, int]] = []
    codes: collections.Counter = collections.Counter()

    async def client(number: int) -> None:
        call = 0
        while not done():
            request = pb.ExecuteRequest(program=PROGRAM)
            request.inputs.update({"word": f"{tag}c{number}q{call}"})
            call += 1
            sent = time.monotonic()
            try:
                response = await stub.Execute(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
                await asyncio.sleep(0.01)  # a refused call must not spin
                continue
            records.append((sent, time.monotonic(), response.program_version))

    await asyncio.gather(*(client(n) for n in range(in_flight)))
    return records, codes


class JobKeeper:
    """Keeps one job of `optimizer` running (a new seed each time) until stopped; the intervals it was seen running."""

    def __init__(self, stub, optimizer: str, seeds) -> None:
        self.stub, self.optimizer, self.seeds = stub, optimizer, seeds
        self.intervals: list[tuple[float, float]] = []
        self.jobs: list[dict] = []
        self.running = asyncio.Event()
        self.stop = asyncio.Event()
        self.versions: list[int] = []

    async def run(self) -> None:
        while not self.stop.is_set():
            started = await self.stub.StartOptimization(optimization(self.optimizer, JOB_OPTIONS[self.optimizer], next(self.seeds)), timeout=10)
            if started.reused:
                raise RuntimeError(f"job {started.job_id} was reused: the seeds must be new")
            first = last = None
            cancelled = False
            while True:
                job = await self.stub.GetOptimization(pb.GetOptimizationRequest(job_id=started.job_id), timeout=10)
                now = time.monotonic()
                if job.state == "running":
                    if first is None:
                        first = now
                        self.running.set()
                    last = now
                if job.state in FINISHED:
                    break
                if self.stop.is_set() and not cancelled:
                    await self.stub.CancelOptimization(pb.CancelOptimizationRequest(job_id=started.job_id), timeout=10)
                    cancelled = True
                await asyncio.sleep(0.05)
            if first is not None and last > first:
                self.intervals.append((first, last))
            if job.state == "succeeded":
                self.versions.append(job.result.version)
            elif not cancelled:
                log(f"{self.optimizer} job {job.job_id} ended {job.state}: {job.error[:200]}")
            self.jobs.append({"state": job.state, "lm_calls": job.progress.lm_calls or job.result.lm_calls})


def counted_in(records, intervals: list[tuple[float, float]], window_end: float) -> list[float]:
    """Latencies (ms) of calls that started and ended inside one interval, and ended by window_end."""
    starts = [a for a, _ in intervals]
    latencies = []
    for sent, ended, _ in records:
        if ended > window_end:
            continue
        index = bisect.bisect_right(starts, sent) - 1
        if index >= 0 and ended <= intervals[index][1]:
            latencies.append((ended - sent) * 1000)
    return latencies


def figures(latencies: list[float], covered_s: float, codes: collections.Counter, cpu: list[float], wall_s: float) -> dict:
    latencies.sort()
    return {"calls": len(latencies), "calls_per_s": len(latencies) / covered_s if covered_s > 0 else None,
            "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99), "covered_s": covered_s,
            "errors": dict(codes), "cpu_cores": {part: round(c / wall_s, 2) for part, c in zip(CPU_PARTS, cpu)}}


async def serving_phase(app: App, stub, args, phase: str, tag: str, seeds) -> tuple[dict, list[int], list[dict]]:
    """One phase of (1): `no_job`, or `job:OPTIMIZER` (measured only while its jobs run)."""
    keeper = task = None
    if phase != "no_job":
        keeper = JobKeeper(stub, phase.split(":", 1)[1], seeds)
        task = asyncio.get_running_loop().create_task(keeper.run())
        waiting = asyncio.get_running_loop().create_task(keeper.running.wait())
        await asyncio.wait({task, waiting}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if not keeper.running.is_set():
            waiting.cancel()
            keeper.stop.set()
            if task.done():
                task.result()  # raises what stopped the keeper
            raise RuntimeError(f"{phase}: no job was running within 60 s")
    before = cpu_seconds(app)
    started = time.monotonic()
    window_end = started + args.seconds
    records, codes = await load(stub, args.in_flight, lambda: time.monotonic() >= window_end, tag)
    cpu = [after - first for after, first in zip(cpu_seconds(app), before)]  # the last calls' drain included, alike for all
    wall_s = time.monotonic() - started
    if keeper is None:
        latencies = [(e - s) * 1000 for s, e, _ in records if e <= window_end]
        return figures(latencies, args.seconds, codes, cpu, wall_s), [], []
    keeper.stop.set()
    await task
    intervals = [(max(a, started), min(b, window_end)) for a, b in keeper.intervals if b > started and a < window_end]
    covered = sum(b - a for a, b in intervals)
    result = figures(counted_in(records, intervals, window_end), covered, codes, cpu, wall_s)
    result["jobs"] = len(keeper.jobs)
    result["job_states"] = dict(collections.Counter(j["state"] for j in keeper.jobs))
    result["job_lm_calls"] = sum(j["lm_calls"] for j in keeper.jobs)
    return result, keeper.versions, keeper.jobs


async def watch_to_end(stub, job_id: str, timeout_s: float) -> tuple[pb.OptimizationJob, float, float]:
    """WatchOptimization until the job ends: (the last message, monotonic and wall time it arrived)."""
    last = None
    async with asyncio.timeout(timeout_s):
        async for update in stub.WatchOptimization(pb.GetOptimizationRequest(job_id=job_id)):
            last = update
            if update.state in FINISHED:
                return update, time.monotonic(), time.time()
    raise RuntimeError(f"watch of {job_id} ended before the job did (last state {last.state if last else None})")


async def promotion_latency(stub, args, current_version: int) -> tuple[dict, list[int]]:
    """(2): auto promotion; the delay from a job's end (as watched) to the end of the first call its version served."""
    await set_policy(stub, mode="optimized", promotion="auto", min_improvement=0.1, min_dev_examples=10,
                     optimized_version=current_version)
    delays, server_delays, old_after, runs, versions = [], [], [], [], []
    for number in range(args.promotion_jobs):
        serving = (await stub.GetExecutionPolicy(pb.GetExecutionPolicyRequest(program=PROGRAM), timeout=10)).optimized_version
        # A different demo count each time: equal content would be the same version (nothing new to promote).
        options = {"max_bootstrapped_demos": 4, "max_labeled_demos": 5 + number}
        started = await stub.StartOptimization(optimization("bootstrap_few_shot", options, 3000 + number), timeout=10)
        job, finished_at, _ = await watch_to_end(stub, started.job_id, args.job_timeout_s)
        version = job.result.version
        if job.state != "succeeded" or not job.result.promoted or version == serving:
            runs.append({"state": job.state, "promoted": job.result.promoted, "version": version, "was_serving": serving,
                         "error": job.error[:200]})
            log(f"promotion job {number}: {job.state} promoted={job.result.promoted} version {version} (serving {serving}) {job.error[:200]}")
            continue
        seen: list[tuple[float, float, int]] = []
        found = asyncio.Event()

        async def poller(poller_number: int) -> None:
            call = 0
            while not found.is_set():
                request = pb.ExecuteRequest(program=PROGRAM)
                request.inputs.update({"word": f"promo{number}p{poller_number}q{call}"})
                call += 1
                response = await stub.Execute(request, timeout=30)
                ended = time.monotonic()
                seen.append((ended, time.time(), response.program_version))
                if response.program_version == version:
                    found.set()

        await asyncio.wait_for(asyncio.gather(*(poller(n) for n in range(4))), timeout=30)
        first_end, first_wall = min((e, w) for e, w, v in seen if v == version)
        delays.append(first_end - finished_at)
        server_delays.append(first_wall - job.updated_at.ToNanoseconds() / 1e9)
        old_after.append(sum(1 for e, _, v in seen if v != version))
        versions.append(version)
        runs.append({"version": version, "was_serving": serving, "promoted": True, "delay_ms": round(delays[-1] * 1000, 1),
                     "elapsed_s": round(job.result.elapsed_s, 2)})
        log(f"promotion job {number}: version {version} served {delays[-1] * 1000:.1f} ms after the watch saw it end")
    median = statistics.median(delays) if delays else None
    return {
        "jobs": args.promotion_jobs, "measured": len(delays), "optimizer": "bootstrap_few_shot", "pollers": 4,
        "delay_from_watched_end_ms": spread([d * 1000 for d in delays], 1),
        "delay_from_server_updated_at_ms": spread([d * 1000 for d in server_delays], 1),
        "calls_served_by_old_version_after_end": sum(old_after),
        "runs": runs, "target_s": TARGETS["promotion_delay_s_max"],
        "met": None if median is None else median <= TARGETS["promotion_delay_s_max"] and len(delays) == args.promotion_jobs,
    }, versions


async def promotions_under_load(stub, args, first: int, second: int) -> dict:
    """(3): the policy flips optimized_version between two versions under load; failed and stale calls."""
    await set_policy(stub, mode="optimized", promotion="manual", optimized_version=first)
    stop = asyncio.Event()
    loading = asyncio.get_running_loop().create_task(load(stub, args.in_flight, stop.is_set, "flip"))
    await asyncio.sleep(0.5)  # the load at full flight, the first version serving
    flips: list[tuple[float, float, int]] = []  # (sent, returned, version)
    flip_ms = []
    for number in range(args.flips):
        target = second if number % 2 == 0 else first
        sent = time.monotonic()
        await set_policy(stub, mode="optimized", promotion="manual", optimized_version=target)
        returned = time.monotonic()
        flips.append((sent, returned, target))
        flip_ms.append((returned - sent) * 1000)
        await asyncio.sleep(args.flip_interval_s)
    stop.set()
    records, codes = await loading
    stale = 0
    first_served_ms = []
    for index, (_, returned, target) in enumerate(flips):
        next_sent = flips[index + 1][0] if index + 1 < len(flips) else float("inf")
        mine = [(s, e, v) for s, e, v in records if returned <= s < next_sent]
        stale += sum(1 for _, _, v in mine if v != target)
        ends = [e for _, e, v in mine if v == target]
        if ends:
            first_served_ms.append((min(ends) - returned) * 1000)
    failed = sum(codes.values())
    return {
        "flips": args.flips, "versions": [first, second], "flip_interval_s": args.flip_interval_s, "in_flight": args.in_flight,
        "calls": len(records), "failed_calls": failed, "errors": dict(codes),
        "stale_calls_after_flip": stale, "flips_observed": len(first_served_ms),
        "set_policy_ms": spread(flip_ms, 1), "first_new_version_response_after_flip_ms": spread(first_served_ms, 1),
        "calls_by_version": {str(v): n for v, n in sorted(collections.Counter(v for _, _, v in records).items())},
        "target_failed_calls": TARGETS["failed_calls_during_promotions"], "met": failed == TARGETS["failed_calls_during_promotions"],
    }


async def shipped_optimizers(stub, args) -> dict:
    """(4): each optimizer once, alone, with the demo's small settings."""
    await set_policy(stub, mode="traditional", promotion="manual")
    out = {}
    for name in args.optimizers:
        options = CATALOG_OPTIONS.get(name, {})
        asked = time.monotonic()
        started = await stub.StartOptimization(optimization(name, options, 0, args.max_lm_calls), timeout=10)
        try:
            job, ended, _ = await watch_to_end(stub, started.job_id, args.job_timeout_s)
        except TimeoutError:
            await stub.CancelOptimization(pb.CancelOptimizationRequest(job_id=started.job_id), timeout=10)
            job, ended, _ = await watch_to_end(stub, started.job_id, 30)
            job_state = f"{job.state} (past --job-timeout-s {args.job_timeout_s})"
        else:
            job_state = job.state
        entry = {"options": options, "state": job_state, "wall_s": round(ended - asked, 2)}
        if job.state == "succeeded":
            r = job.result
            entry.update(baseline=round(r.baseline_score, 4), optimized=round(r.optimized_score, 4), improvement=round(r.optimized_score - r.baseline_score, 4),
                         dev_examples=r.dev_examples, elapsed_s=round(r.elapsed_s, 2), lm_calls=r.lm_calls, budget_limited=r.budget_limited, version=r.version)
        else:
            entry.update(error=job.error[:300], lm_calls=job.progress.lm_calls, elapsed_s=round(job.progress.elapsed_s, 2))
        out[name] = entry
        log(f"{name}: {job_state} baseline {entry.get('baseline')} optimized {entry.get('optimized')} "
            f"{entry.get('lm_calls')} LM calls {entry['wall_s']} s")
    return out


def summarize_serving(runs: dict[str, list[dict]], job_phases: list[str]) -> tuple[dict, dict]:
    phases = {}
    for phase, phase_runs in runs.items():
        phases[phase] = {
            "calls_per_s": spread([r["calls_per_s"] for r in phase_runs], 1),
            "p50_ms": spread([r["p50_ms"] for r in phase_runs], 1),
            "p99_ms": spread([r["p99_ms"] for r in phase_runs], 1),
            "calls": sum(r["calls"] for r in phase_runs),
            "covered_s": round(sum(r["covered_s"] for r in phase_runs), 2),
            "errors": dict(sum((collections.Counter(r["errors"]) for r in phase_runs), collections.Counter())),
            "cpu_cores": {part: statistics.median(r["cpu_cores"][part] for r in phase_runs) for part in CPU_PARTS},
        }
        if phase != "no_job":
            phases[phase]["jobs"] = sum(r["jobs"] for r in phase_runs)
            phases[phase]["job_lm_calls"] = sum(r["job_lm_calls"] for r in phase_runs)
    ratios = {}
    base = runs["no_job"]
    for phase in job_phases:
        mine = runs[phase]
        entry = {}
        for figure in ("p50_ms", "p99_ms", "calls_per_s"):
            medians = [statistics.median(r[figure] for r in rs if r[figure] is not None) for rs in (mine, base)]
            entry[figure.removesuffix("_ms")] = {
                "ratio": round(medians[0] / medians[1], 3),
                "per_repeat": spread([a[figure] / b[figure] for a, b in zip(mine, base) if a[figure] and b[figure]]),
            }
        entry["p99"]["target"] = TARGETS["p99_ratio_max"]
        entry["p99"]["met"] = entry["p99"]["ratio"] <= TARGETS["p99_ratio_max"]
        ratios[phase.split(":", 1)[1]] = entry
    return phases, ratios


async def run(args) -> dict:
    config = server_config(state="memory", lm="sim", sim_latency=args.sim_latency, workers=args.workers, optimizer_workers=1,
                           listen="127.0.0.1:0", log_level=args.log_level, max_queue=max(1000, 2 * args.in_flight),
                           optimizer_lms=(SIM_MODEL,))
    app = App(config)
    notes = ["load generator, front, workers, optimizer worker and simulated LM share this machine's cores",
             "serving calls use traditional mode in (1): the base version answers while jobs register new versions"]
    started = time.perf_counter()
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = pb_grpc.DSPyPoolStub(channel)
    seeds = itertools.count(1000)
    job_phases = [f"job:{name}" for name in args.job_optimizers]
    runs: dict[str, list[dict]] = {phase: [] for phase in ["no_job", *job_phases]}
    versions: list[int] = []
    try:
        log(f"serving on port {app.port} after {time.perf_counter() - started:.1f}s")
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name=PROGRAM, signature="word -> code")), timeout=30)
        for split in ("train", "dev"):
            await stub.AddExamples(pb.AddExamplesRequest(dataset=DATASET, split=split, examples=examples(split)), timeout=30)
        deadline = time.monotonic() + 60
        while not app.pool.worker_pool.optimizer_handles():
            if time.monotonic() > deadline:
                raise RuntimeError("no optimizer worker within 60 s")
            await asyncio.sleep(0.05)
        # Warm-up: connections and builds; one short job of each job optimizer (its imports in the optimizer worker).
        await load(stub, args.in_flight, (lambda end: lambda: time.monotonic() >= end)(time.monotonic() + args.warmup_s), "warm")
        for name in args.job_optimizers:
            warm = await stub.StartOptimization(optimization(name, JOB_OPTIONS[name], 1, max_lm_calls=100), timeout=10)
            job, _, _ = await watch_to_end(stub, warm.job_id, args.job_timeout_s)
            log(f"warm-up {name}: {job.state} in {job.result.elapsed_s:.1f}s")
            if job.state == "succeeded":
                versions.append(job.result.version)
        phases = ["no_job", *job_phases]
        for repeat in range(args.repeats):
            order = phases[repeat % len(phases):] + phases[:repeat % len(phases)]
            for phase in order:
                result, made, _ = await serving_phase(app, stub, args, phase, f"r{repeat}{phase[:5]}", seeds)
                versions += made
                runs[phase].append(result)
                log(f"repeat {repeat} {phase:45} {result['calls_per_s'] or 0:7.1f} calls/s p50 {result['p50_ms']} ms "
                    f"p99 {result['p99_ms']} ms over {result['covered_s']:.1f}s errors {result['errors']} cpu {result['cpu_cores']}")
        promotion, promoted = await promotion_latency(stub, args, versions[-1] if versions else 0)
        versions += promoted
        distinct = list(dict.fromkeys(reversed(versions)))  # the latest first
        if len(distinct) >= 2:
            flips = await promotions_under_load(stub, args, distinct[1], distinct[0])
            log(f"flips: {flips['failed_calls']} failed of {flips['calls']}, stale {flips['stale_calls_after_flip']}")
        else:
            flips = {"skipped": "fewer than two optimized versions to flip between", "met": None}
        optimizers = await shipped_optimizers(stub, args) if args.optimizers else {}
    finally:
        await channel.close()
        await app.stop(grace_s=2.0)

    serving, ratios = summarize_serving(runs, job_phases)
    skipped = sorted(set(catalog.optimizer_names()) - set(args.optimizers))
    if skipped:
        notes.append(f"optimizers not run (not in --optimizers): {', '.join(skipped)}")
    gepa = optimizers.get("gepa", {})
    if gepa.get("state") == "succeeded" and gepa["optimized"] <= gepa["baseline"]:
        notes.append("gepa found no better instruction: if the log (--log-level info) shows 'Batched reflection failed ... "
                     "api.openai.com', the optimizer worker sent the allow-listed reflection LM (openai/sim, no @API_BASE) "
                     "to the provider's default endpoint instead of the simulated LM")
    met = [r["p99"]["met"] for r in ratios.values()] + [promotion["met"], flips.get("met")]
    return {
        "bench": "optimize", "lm": "sim", "sim_latency": args.sim_latency, "workers": args.workers, "optimizer_workers": 1,
        "in_flight": args.in_flight, "seconds": args.seconds, "repeats": args.repeats, "warmup_s": args.warmup_s,
        "cpus": psutil.cpu_count(), "dataset": {"train": len(examples("train")), "dev": len(examples("dev"))},
        "serving": {"job_options": {n: JOB_OPTIONS[n] for n in args.job_optimizers}, "phases": serving, "ratios_vs_no_job": ratios},
        "promotion_latency": promotion, "promotions_under_load": flips, "optimizers": optimizers,
        "targets": TARGETS, "targets_met": all(m is True for m in met), "notes": notes,
    }


def names(value: str) -> list[str]:
    return [n.strip() for n in value.split(",") if n.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of load per serving phase and repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--sim-latency", default="fixed:20", help="the simulated LM's latency (fixed:MS, uniform:LO:HI, ...)")
    parser.add_argument("--workers", type=int, default=2, help="serving workers")
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--job-optimizers", type=names, default=list(JOB_OPTIONS),
                        help=f"comma-separated, the jobs run while serving is measured (of: {', '.join(JOB_OPTIONS)})")
    parser.add_argument("--optimizers", type=names, default=list(CATALOG_OPTIONS),
                        help="comma-separated catalog optimizers whose dev scores are measured ('' for none)")
    parser.add_argument("--promotion-jobs", type=int, default=3, help="jobs whose promotion delay is measured")
    parser.add_argument("--flips", type=int, default=20, help="promotions (policy flips) under load")
    parser.add_argument("--flip-interval-s", type=float, default=0.1)
    parser.add_argument("--max-lm-calls", type=int, default=0, help="budget of each job of phase 4 (0: none)")
    parser.add_argument("--job-timeout-s", type=float, default=180.0)
    parser.add_argument("--log-level", default="warning", help="the server's log level (to stderr); info shows the workers' output")
    args = parser.parse_args()
    if args.repeats < 1 or args.in_flight < 1 or args.seconds <= 0 or args.promotion_jobs < 1 or args.flips < 1:
        parser.error("--repeats, --in-flight, --promotion-jobs and --flips must be >= 1, --seconds > 0")
    if not args.job_optimizers or set(args.job_optimizers) - set(JOB_OPTIONS):
        parser.error(f"--job-optimizers: one or more of {', '.join(JOB_OPTIONS)}")
    unknown = sorted(set(args.optimizers) - set(catalog.optimizer_names()))
    if unknown:
        parser.error(f"--optimizers: unknown {', '.join(unknown)} (known: {', '.join(catalog.optimizer_names())})")
    logs.configure("console", args.log_level)  # stdout carries the one JSON object; the log goes to stderr
    with contextlib.redirect_stdout(sys.stderr):  # nothing but the JSON on stdout
        report = asyncio.run(run(args))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
