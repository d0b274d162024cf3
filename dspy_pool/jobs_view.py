"""Datasets, optimization jobs, execution policies and program stats -> text and rich tables for the CLI.

What `dspy-pool datasets|optimize|jobs|policy|stats` print. Pure: messages in, strings and
tables out; no I/O, no clock.
"""

from __future__ import annotations

import datetime
import json
import shlex

from google.protobuf import json_format
from rich.table import Table
from rich.text import Text

from dspy_pool.status_view import duration
from dspy_pool.v1 import dspy_pool_pb2 as pb

FINISHED = ("succeeded", "failed", "cancelled", "interrupted")
_STATE_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "bold red", "cancelled": "magenta",
                "interrupted": "red"}
_BAR_WIDTH = 16


def _when(timestamp) -> str:
    if not timestamp.seconds and not timestamp.nanos:
        return "-"
    return timestamp.ToDatetime(tzinfo=datetime.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


# -- datasets ----------------------------------------------------------------------------------


def dataset_line(dataset: pb.Dataset) -> str:
    """`words: train 40, dev 30, content 1a2b3c4d5e6f, updated 2025-...`"""
    counts = ", ".join(f"{split} {dataset.counts[split]}" for split in _splits(dataset)) or "no examples"
    return f"{dataset.name}: {counts}, content {dataset.content_hash[:12] or '-'}, updated {_when(dataset.updated_at)}"


def _splits(dataset: pb.Dataset) -> list[str]:
    known = [split for split in ("train", "dev") if split in dataset.counts]
    return known + sorted(split for split in dataset.counts if split not in known)


def datasets_table(datasets) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("name", "train", "dev", "updated", "hash"):
        table.add_column(column, justify="right" if column in ("train", "dev") else "left")
    for dataset in datasets:
        table.add_row(dataset.name, str(dataset.counts.get("train", 0)), str(dataset.counts.get("dev", 0)),
                      _when(dataset.updated_at), dataset.content_hash[:12])
    return table


# -- jobs ----------------------------------------------------------------------------------------


def _bar(done: int, planned: int) -> str:
    filled = min(_BAR_WIDTH, round(_BAR_WIDTH * done / planned)) if planned > 0 else 0
    return "█" * filled + "░" * (_BAR_WIDTH - filled)


def progress_text(job: pb.OptimizationJob) -> str:
    """One line while a job waits or runs: state, phase, a bar of trials, best score, LM calls, time."""
    request, progress = job.request, job.progress
    head = f"{request.program}: {request.optimizer} {job.state}"
    parts = []
    if job.state == "running":
        if progress.phase:
            parts.append(progress.phase)
        if progress.trials_planned:
            parts.append(f"{progress.trials_done}/{progress.trials_planned} {_bar(progress.trials_done, progress.trials_planned)}")
        elif progress.trials_done:
            parts.append(_plural(progress.trials_done, "trial"))
        if progress.has_best_score:
            parts.append(f"best {progress.best_score:.3f}")
        parts.append(f"{_plural(progress.lm_calls, 'LM call')}, {duration(progress.elapsed_s)}")
    elif job.state in FINISHED and job.state != "succeeded":
        parts.append(job.error or "no reason given")
    return head + (": " + ", ".join(parts) if parts else "")


def result_lines(job: pb.OptimizationJob) -> list[str]:
    """What a finished job produced (succeeded), or why it did not."""
    request, result = job.request, job.result
    base = job.base_version or request.base_version
    if job.state != "succeeded":
        return [f"job {job.job_id} {job.state}: {job.error or 'no reason given'}"]
    lines = [f"job {job.job_id} succeeded: {request.program} version {result.version}"
             + (f" (from version {base})" if base else "") + (", reused: an identical job had run" if job.reused else "")]
    change = result.optimized_score - result.baseline_score
    lines.append(f"dev score: baseline {result.baseline_score:.3f}, optimized {result.optimized_score:.3f} ({change:+.3f})"
                 f" on {_plural(result.dev_examples, 'example')}")
    lines.append(f"{_plural(result.lm_calls, 'LM call')} in {result.elapsed_s:.1f} s"
                 + (" (stopped at the budget: the best result so far)" if result.budget_limited else ""))
    if result.promoted:
        lines.append(f"promoted: calls in optimized mode now run version {result.version}")
    else:
        lines.append(f"not promoted (to serve it: dspy-pool policy set {request.program} --optimized-version {result.version})")
    return lines


def job_lines(job: pb.OptimizationJob) -> list[str]:
    """`jobs get`: what was asked, where it stands, and its result."""
    request = job.request
    metric = request.metric.kind or "-"
    if request.metric.fields:
        metric += f" on {', '.join(request.metric.fields)}"
    lines = [f"job {job.job_id}: {job.state}",
             f"program {request.program} version {job.base_version or request.base_version or 'latest'}, "
             f"optimizer {request.optimizer}, dataset {request.dataset}"
             + (f" (content {job.dataset_hash[:12]})" if job.dataset_hash else "") + f", metric {metric}"]
    if request.options.fields:
        options = ", ".join(f"{key}={_plain(value)}" for key, value in sorted(request.options.items()))
        lines.append(f"options: {options}")
    budget = request.budget
    if budget.max_lm_calls or budget.max_seconds or request.priority:
        lines.append(f"budget: {budget.max_lm_calls or 'no limit on'} LM calls, "
                     f"{f'{budget.max_seconds:g} s' if budget.max_seconds else 'no time limit'}; priority {request.priority}")
    lines.append(f"created {_when(job.created_at)}, updated {_when(job.updated_at)}")
    if job.state in ("queued", "running"):
        lines.append(progress_text(job))
    else:
        lines.extend(result_lines(job)[1:] if job.state == "succeeded" else [f"error: {job.error or 'no reason given'}"])
    return lines


def optimize_command(request: pb.StartOptimizationRequest) -> str:
    """The `dspy-pool optimize` command that starts this request again (for a job that was interrupted)."""
    words = ["dspy-pool", "optimize", request.program, "--dataset", request.dataset, "--optimizer", request.optimizer]
    if request.metric.kind and request.metric.kind != "exact_match":
        words += ["--metric", request.metric.kind]
    for field in request.metric.fields:
        words += ["--metric-field", field]
    for flag, struct in (("--metric-option", request.metric.options), ("--option", request.options)):
        for key, value in sorted(json_format.MessageToDict(struct).items()):
            words += [flag, f"{key}={_option_text(value)}"]
    numbers = (("--max-lm-calls", request.budget.max_lm_calls), ("--max-seconds", request.budget.max_seconds),
               ("--priority", request.priority), ("--base-version", request.base_version), ("--seed", request.seed))
    words += [word for flag, number in numbers if number for word in (flag, _plain(number))]
    return shlex.join(words)


def _option_text(value) -> str:
    """A KEY=VALUE value as `--option` reads it back: JSON when it parses, else text."""
    if isinstance(value, str):
        try:
            json.loads(value)
        except json.JSONDecodeError:
            return value  # plain text reads back as itself
    return json.dumps(_integral(value), ensure_ascii=False)


def _integral(value):
    # A Struct holds doubles: 4.0 was 4 on the command line.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral(item) for item in value]
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    return value


def _plain(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _job_summary(job: pb.OptimizationJob) -> str:
    if job.state == "succeeded":
        result = job.result
        return f"v{result.version}: {result.baseline_score:.3f} -> {result.optimized_score:.3f}" + (" promoted" if result.promoted else "")
    if job.state == "running":
        progress = job.progress
        trials = f" {progress.trials_done}/{progress.trials_planned}" if progress.trials_planned else ""
        return f"{progress.phase or 'running'}{trials}, {_plural(progress.lm_calls, 'LM call')}"
    if job.state in FINISHED:
        error = job.error or ""
        return error if len(error) <= 48 else error[:45] + "..."
    return ""


def jobs_table(jobs) -> Table:
    """A row per job; the id is never cut (it is what `jobs get|watch|cancel` take), the rest shrinks to fit."""
    table = Table(box=None, header_style="bold")
    table.add_column("job", no_wrap=True, min_width=32)
    for column in ("program", "optimizer", "dataset", "state", "progress or result"):
        table.add_column(column)
    for job in jobs:
        request = job.request
        table.add_row(job.job_id, f"{request.program} v{job.base_version or request.base_version}", request.optimizer,
                      request.dataset, Text(job.state, style=_STATE_STYLE.get(job.state, "")), _job_summary(job))
    return table


# -- execution policy and stats ---------------------------------------------------------------------


def policy_lines(policy: pb.ExecutionPolicy) -> list[str]:
    mode = policy.mode or "traditional"
    if mode == "hybrid":
        mode += f" ({policy.hybrid_percent:g}% of calls to the optimized version" + (", sticky sessions)" if policy.sticky_sessions else ")")
    promotion = policy.promotion or "manual"
    if promotion == "auto":
        promotion += f" (min improvement {policy.min_improvement:g}, min dev examples {policy.min_dev_examples})"
    return [f"{policy.program}: mode {mode}",
            f"base version {policy.base_version or 'latest'}, optimized version {policy.optimized_version or 'none'}",
            f"promotion {promotion}"]


def stats_table(stats: pb.ProgramStats) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("version", "arm", "calls", "errors", "error rate", "p50 ms", "p95 ms", "feedback", "mean score"):
        table.add_column(column, justify="left" if column == "arm" else "right")
    for arm in stats.arms:
        # Feedback is per version: every arm of a version shows the same count and mean.
        mean = f"{arm.feedback_score_mean:.3f}" if arm.feedback_count else "-"
        table.add_row(str(arm.version), arm.arm, str(arm.calls), str(arm.errors), f"{arm.error_rate:.1%}",
                      f"{arm.latency_p50_ms:.1f}", f"{arm.latency_p95_ms:.1f}", str(arm.feedback_count), mean)
    return table
