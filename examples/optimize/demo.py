"""Each shipped optimizer on the `word -> code` task, against the simulated LM: baseline vs optimized dev scores.

    python examples/optimize/demo.py                       # every optimizer
    python examples/optimize/demo.py --optimizers mipro_v2 copro --max-lm-calls 2000

Starts the simulated LM (dspy_pool.simlm) on a free 127.0.0.1 port, loads
dataset.jsonl (make_dataset.py writes it), and runs each optimizer through
dspy_pool.optimize.runner.run, as an optimizer worker would. Prints one JSON
object: per optimizer the baseline and optimized dev scores (exact match on
`code`), the LM calls used (the runner's count and the sim's), whether the
budget cut it short, and the seconds taken.

The simulated LM answers this task right about 30% of the time zero-shot and
85 to 95% of the time with good demos or the key phrase in its instructions
(see dspy_pool/simlm/learnable.py), so an optimizer that finds either shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")

import dspy  # noqa: E402

from dspy_pool.optimize import runner  # noqa: E402
from dspy_pool.optimize.task import Budget, Example, MetricSpec, OptimizeTask  # noqa: E402
from dspy_pool.simlm.process import start_sim_lm  # noqa: E402
from dspy_pool.v1 import dspy_pool_pb2 as pb  # noqa: E402

DATASET = Path(__file__).with_name("dataset.jsonl")
SIM_MODEL = "openai/sim"

# Small settings: the whole demo runs in well under a minute on two cores.
OPTIONS: dict[str, dict] = {
    "labeled_few_shot": {"k": 8},
    "bootstrap_few_shot": {"max_bootstrapped_demos": 4, "max_labeled_demos": 4},
    "bootstrap_few_shot_with_random_search": {"num_candidate_programs": 4, "max_labeled_demos": 4},
    "mipro_v2": {"auto": "light"},
    "copro": {"breadth": 4, "depth": 2},
    "simba": {"bsize": 8, "num_candidates": 4, "max_steps": 4, "max_demos": 4},
    "gepa": {"max_metric_calls": 300, "reflection_lm": SIM_MODEL, "reflection_minibatch_size": 4},
}


def load_dataset(path: Path = DATASET) -> dict[str, tuple[Example, ...]]:
    splits: dict[str, list[Example]] = {"train": [], "dev": []}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            splits[row["split"]].append(Example(row["inputs"], row["outputs"]))
    return {name: tuple(rows) for name, rows in splits.items()}


def program_spec() -> bytes:
    return pb.ProgramSpec(name="word_code", signature="word -> code").SerializeToString()


def make_task(optimizer: str, data: dict, max_lm_calls: int = 0, options: dict | None = None, seed: int = 0) -> OptimizeTask:
    return OptimizeTask(
        spec=program_spec(), train=data["train"], dev=data["dev"], optimizer=optimizer,
        options=OPTIONS[optimizer] if options is None else options, metric=MetricSpec("exact_match", ("code",)),
        budget=Budget(max_lm_calls=max_lm_calls), seed=seed, num_threads=4,
    )


async def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--max-lm-calls", type=int, default=0, help="budget per optimizer (0: none)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # DSPy's optimizers log every step
    data = load_dataset()
    sim = await start_sim_lm()
    try:
        lm = dspy.LM(SIM_MODEL, api_base=sim.api_base, api_key="sim-key", cache=False, num_retries=0)
        report: dict = {"dataset": {"train": len(data["train"]), "dev": len(data["dev"])}, "optimizers": {}}
        for name in args.optimizers:
            before = (await sim.stats())["requests"]
            result = await asyncio.to_thread(
                runner.run, make_task(name, data, args.max_lm_calls), lambda progress: None, lambda: False, lm=lm,
            )
            report["optimizers"][name] = {
                "options": OPTIONS[name],
                "baseline": round(result.baseline_score, 4),
                "optimized": round(result.optimized_score, 4),
                "lm_calls": result.lm_calls,
                "sim_requests": (await sim.stats())["requests"] - before,
                "budget_limited": result.budget_limited,
                "elapsed_s": round(result.elapsed_s, 2),
            }
        return report
    finally:
        await sim.stop()


if __name__ == "__main__":
    with contextlib.redirect_stdout(sys.stderr):  # DSPy's progress bars and prints; stdout carries only the JSON
        report = asyncio.run(main())
    print(json.dumps(report, indent=2))
