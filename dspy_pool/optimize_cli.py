"""`dspy-pool` commands for optimization: datasets, optimize, jobs, policy, stats, feedback.

    datasets add NAME FILE --split S --> read_examples (JSONL/JSON/YAML, every row checked) --> AddExamples per split
    optimize PROGRAM --dataset D --optimizer O ... --> StartOptimization --> WatchOptimization (a live line on
             a terminal's stderr) --> the result on stdout: the new version, dev scores, promoted
    jobs list|get|cancel|watch, policy get|set (read, change the named fields, write), stats PROGRAM
    feedback REQUEST_ID --score S --expected JSON --> RecordFeedback (a captured call's score, or an example)

The conventions are client_cli's, whose plumbing this module uses: --target, --timeout,
--json (one JSON object on stdout, nothing else), one-line errors on stderr, exit codes 0
done, 1 the server said no or the job did not succeed, 2 a bad command line or file (one
the server refuses as INVALID_ARGUMENT too), 130 interrupted. Rendering lives in jobs_view (pure).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import grpc

from dspy_pool.client_cli import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, MODES, UsageError, _console, _fail, _fill_struct, all_pages,
                                  _guarded, _non_negative_int, _parse_json, _print_json, _stub, _timeout, describe, ended_by_server,
                                  refused_file_exit, to_dict)
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

SPLITS = ("train", "dev")
BATCH_BYTES = 2 * 1024 * 1024  # examples per AddExamples, well under the server's request limit (4 MiB by default)
FINISHED = ("succeeded", "failed", "cancelled", "interrupted")


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register datasets, optimize, jobs, policy and stats on `dspy-pool`'s subcommands."""
    _add_datasets(commands, common)
    _add_optimize(commands, common)
    _add_jobs(commands, common)
    _add_policy(commands, common)
    stats = commands.add_parser("stats", parents=[common], help="calls, errors, latency and feedback per version and arm of a program")
    stats.add_argument("program")
    stats.set_defaults(handler=_guarded(_stats))
    _add_feedback(commands, common)


def _add_datasets(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    datasets = commands.add_parser("datasets", help="add labelled examples; list, show or delete datasets")
    verbs = datasets.add_subparsers(dest="verb", required=True)
    add = verbs.add_parser("add", parents=[common], help="add examples from a file",
                           description="Add labelled examples, each {inputs: {...}, outputs: {...}}, from a JSONL file "
                                       "(one per line), or a JSON or YAML list; - reads stdin. A row may name its own "
                                       "split (train or dev), which wins over --split.")
    add.add_argument("name", metavar="NAME")
    add.add_argument("file", metavar="FILE", help=".jsonl, .json, .yaml or .yml, or - for stdin")
    add.add_argument("--split", choices=SPLITS, default="",
                     help="train (what optimizers learn from) or dev (what versions are scored on), for rows that name none")
    add.set_defaults(handler=_guarded(_datasets_add))
    listing = verbs.add_parser("list", parents=[common], help="every dataset with its counts per split")
    listing.set_defaults(handler=_guarded(_datasets_list))
    for verb, handler, what in (("get", _datasets_get, "show a dataset's counts and content hash"),
                                ("delete", _datasets_delete, "delete a dataset and its examples")):
        parser = verbs.add_parser(verb, parents=[common], help=what)
        parser.add_argument("name", metavar="NAME")
        parser.set_defaults(handler=_guarded(handler))


def _add_optimize(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    optimize = commands.add_parser("optimize", parents=[common], help="optimize a program on a dataset (waits; Ctrl-C stops waiting)",
                                   description="Start a background optimization and wait for it with a live progress "
                                               "line, then print the new version and its dev scores. The job keeps "
                                               "running on the server if you stop waiting. --timeout bounds the start "
                                               "request, not the wait: the job's budget bounds the job.")
    optimize.add_argument("program")
    optimize.add_argument("--dataset", required=True, help="a dataset with train and dev examples")
    optimize.add_argument("--optimizer", required=True, metavar="NAME",
                          help="labeled_few_shot, bootstrap_few_shot, bootstrap_few_shot_with_random_search, mipro_v2, copro, simba, gepa")
    optimize.add_argument("--metric", default="exact_match", metavar="KIND",
                          help="exact_match (default), f1, contains, numeric_close, llm_judge, or an operator's kind")
    optimize.add_argument("--metric-field", action="append", default=[], metavar="FIELD",
                          help="an output field the metric compares (repeat; default: every expected output)")
    optimize.add_argument("--metric-option", action="append", default=[], metavar="KEY=VALUE", help="a metric option (repeat)")
    optimize.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                          help="an optimizer option, the value as JSON when it parses (3, true, [1,2]), else text (repeat)")
    optimize.add_argument("--max-lm-calls", type=_non_negative_int, default=0, metavar="N", help="LM calls the job may make (0: no limit)")
    optimize.add_argument("--max-seconds", type=_non_negative_float, default=0.0, metavar="S", help="seconds the job may run (0: no limit)")
    optimize.add_argument("--priority", type=int, default=0, help="higher runs first")
    optimize.add_argument("--base-version", type=_non_negative_int, default=0, metavar="N",
                          help="the version to optimize (default: the latest one a client registered)")
    optimize.add_argument("--seed", type=int, default=0)
    optimize.add_argument("--no-wait", action="store_true", help="print the job and return at once")
    optimize.set_defaults(handler=_guarded(_optimize))


def _add_jobs(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    jobs = commands.add_parser("jobs", help="list, show, watch or cancel optimization jobs")
    verbs = jobs.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", parents=[common], help="jobs of one program, or of all")
    listing.add_argument("program", nargs="?", default="")
    listing.set_defaults(handler=_guarded(_jobs_list))
    for verb, handler, what in (("get", _jobs_get, "show a job: what was asked, its progress or result"),
                                ("cancel", _jobs_cancel, "cancel a job (a running one stops at its next LM call)"),
                                ("watch", _jobs_watch, "follow a job until it ends, then print its result")):
        parser = verbs.add_parser(verb, parents=[common], help=what)
        parser.add_argument("job_id", metavar="ID")
        parser.set_defaults(handler=_guarded(handler))


def _add_policy(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    policy = commands.add_parser("policy", help="show or change how a program's calls choose a version")
    verbs = policy.add_subparsers(dest="verb", required=True)
    get = verbs.add_parser("get", parents=[common], help="a program's execution policy")
    get.add_argument("program")
    get.set_defaults(handler=_guarded(_policy_get))
    put = verbs.add_parser("set", parents=[common], help="change the fields named; the others keep their values")
    put.add_argument("program")
    put.add_argument("--mode", choices=MODES, help="traditional: the base version; optimized: the promoted one; "
                                                   "hybrid: a share to the promoted one; evaluation: run both")
    put.add_argument("--hybrid-percent", type=_percent, metavar="P", help="hybrid: percent of calls to the optimized version")
    put.add_argument("--sticky-sessions", action=argparse.BooleanOptionalAction, default=None,
                     help="hybrid: a session's calls always take the same arm")
    put.add_argument("--promotion", choices=("manual", "auto"), help="auto: promote a finished job's version when it beats the base")
    put.add_argument("--min-improvement", type=_finite_float, metavar="X", help="auto promotion: dev score gain required")
    put.add_argument("--min-dev-examples", type=_non_negative_int, metavar="N", help="auto promotion: dev examples required")
    put.add_argument("--optimized-version", type=_non_negative_int, metavar="N", help="the promoted version (0: none)")
    put.add_argument("--base-version", type=_non_negative_int, metavar="N", help="the base version (0: the latest registered)")
    put.set_defaults(handler=_guarded(_policy_set))


def _add_feedback(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    feedback = commands.add_parser("feedback", parents=[common], help="score a captured call, or give the outputs it should have given",
                                   description="Feedback on a call its program captured (the spec's capture: {sample_rate: ...}; "
                                               "REQUEST_ID is the request_id `call` prints). The score goes to the version's "
                                               "stats; expected outputs, or a score at or above the capture's good_score "
                                               "(default 1), make the call an example of the capture's dataset. A call "
                                               "takes feedback once.")
    feedback.add_argument("request_id", metavar="REQUEST_ID")
    feedback.add_argument("--score", type=_finite_float, metavar="S", help="how good the call's outputs were (e.g. 0..1)")
    feedback.add_argument("--expected", metavar="JSON", help='the outputs it should have given, a JSON object, e.g. \'{"answer": "4"}\'')
    feedback.set_defaults(handler=_guarded(_feedback))


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a number, 0 or more, got {text}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be within 0..100, got {text}")
    return value


# -- datasets -------------------------------------------------------------------------------


def _datasets_add(args: argparse.Namespace) -> int:
    by_split = read_examples(args.file, args.split, sys.stdin)  # the whole file is checked before any RPC
    added: dict[str, int] = {}
    dataset = None
    with _stub(args) as stub:
        # One AddExamples per split (a large split in batches of a few MiB): each is all or nothing.
        for split in sorted(by_split, key=SPLITS.index):
            for batch in batches(by_split[split]):
                request = pb.AddExamplesRequest(dataset=args.name, split=split, examples=batch)
                try:
                    dataset = stub.AddExamples(request, timeout=_timeout(args))
                except grpc.RpcError as exc:
                    failure = describe(exc, args.target, _timeout(args))
                    before = "; added before it: " + ", ".join(f"{n} to {s}" for s, n in added.items()) if added else ""
                    return _fail(f"{failure} (adding {_count(len(batch), 'example')} to {split}){before}",
                                 refused_file_exit(failure))
                added[split] = added.get(split, 0) + len(batch)
    if args.json:
        _print_json({"added": added, "dataset": to_dict(dataset)})
        return EXIT_OK
    from dspy_pool import jobs_view

    what = " and ".join(f"{_count(n, 'example')} to {split}" for split, n in added.items())
    print(f"added {what}; {jobs_view.dataset_line(dataset)}")
    return EXIT_OK


def _count(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


_EXAMPLE_KEYS = {"inputs", "outputs", "split"}


def read_examples(path: str, default_split: str, stdin) -> dict[str, list[pb.Example]]:
    """Examples by split from a JSONL, JSON or YAML file (or `-`: stdin, JSONL or JSON/YAML); UsageError naming the row."""
    if path == "-":
        source, text = "<stdin>", stdin.read()
        fmt = "jsonl" if _looks_like_jsonl(text) else "yaml"
    else:
        source = path
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
        suffix = Path(path).suffix.lower()
        fmt = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".yaml": "yaml", ".yml": "yaml"}.get(suffix)
        if fmt is None:
            raise UsageError(f"{path}: unknown format: name the file .jsonl, .json, .yaml or .yml")
    rows = _example_rows(text, fmt, source)
    if not rows:
        raise UsageError(f"{source}: no examples in the file")
    by_split: dict[str, list[pb.Example]] = {}
    for where, row in rows:
        example = _example(row, source, where)
        split = row.get("split") or default_split
        if not split:
            raise UsageError(f"{source}: {where}: no split: give --split train or --split dev, or a split in each row")
        by_split.setdefault(split, []).append(example)
    return by_split


def batches(examples: list[pb.Example], max_bytes: int = BATCH_BYTES) -> list[list[pb.Example]]:
    """Consecutive runs of examples of at most `max_bytes` each (one RPC each; the server's limit is 4 MiB or more)."""
    out: list[list[pb.Example]] = [[]]
    size = 0
    for example in examples:
        length = example.ByteSize() + 8  # the field tag and length around each example
        if out[-1] and size + length > max_bytes:
            out.append([])
            size = 0
        out[-1].append(example)
        size += length
    return out


def _looks_like_jsonl(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except json.JSONDecodeError:
        return False


def _example_rows(text: str, fmt: str, source: str) -> list[tuple[str, Any]]:
    """(where, row) pairs: "line N" for JSONL, "examples[i]" otherwise."""
    if fmt == "jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                rows.append((f"line {number}", _parse_json(line, f"{source}: line {number}")))
        return rows
    if fmt == "json":
        document = _parse_json(text, source)
    else:
        import yaml

        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UsageError(f"{source}: invalid YAML: {' '.join(str(exc).split())}") from None
    if isinstance(document, dict) and set(document) == {"examples"}:
        document = document["examples"]
    elif isinstance(document, dict):
        document = [document]  # one example
    if document is None:
        return []
    if not isinstance(document, list):
        raise UsageError(f"{source}: expected a list of examples, got {type(document).__name__}")
    return [(f"examples[{index}]", row) for index, row in enumerate(document)]


def _example(row: Any, source: str, where: str) -> pb.Example:
    if not isinstance(row, dict):
        raise UsageError(f"{source}: {where}: expected an object with inputs and outputs, got {type(row).__name__}")
    unknown = sorted(set(row) - _EXAMPLE_KEYS)
    if unknown:
        raise UsageError(f"{source}: {where}: unknown key {unknown[0]!r} (an example has inputs, outputs and optionally split)")
    if row.get("split") and row["split"] not in SPLITS:
        raise UsageError(f"{source}: {where}: split {row['split']!r} must be train or dev")
    example = pb.Example()
    for part in ("inputs", "outputs"):
        value = row.get(part)
        if not isinstance(value, dict) or not value:
            raise UsageError(f"{source}: {where}: {part} must be a non-empty object of field names to values")
        _fill_struct(getattr(example, part), value, f"{source}: {where}: {part}")
    return example


def _datasets_list(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        reply = pb.ListDatasetsResponse(datasets=all_pages(stub.ListDatasets, pb.ListDatasetsRequest(), "datasets", _timeout(args)))
    if args.json:
        _print_json(reply)
    elif not reply.datasets:
        print("no datasets")
    else:
        from dspy_pool import jobs_view

        _console().print(jobs_view.datasets_table(reply.datasets))
    return EXIT_OK


def _datasets_get(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        dataset = stub.GetDataset(pb.GetDatasetRequest(name=args.name), timeout=_timeout(args))
    if args.json:
        _print_json(dataset)
    else:
        from dspy_pool import jobs_view

        print(jobs_view.dataset_line(dataset))
    return EXIT_OK


def _datasets_delete(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        reply = stub.DeleteDataset(pb.DeleteDatasetRequest(name=args.name), timeout=_timeout(args))
    if args.json:
        _print_json(reply)
    else:
        print(f"deleted dataset {args.name}")
    return EXIT_OK


# -- optimize and jobs ---------------------------------------------------------------------


def parse_assignments(items: list[str], what: str) -> dict[str, Any]:
    """`KEY=VALUE` items -> a dict; a value is JSON when it parses (3, 0.5, true, [1, 2], {"a": 1}), else text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"{what} {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"{what} {item!r}: {text} is not a finite number")
        out[key.strip()] = value
    return out


def optimization_request(args: argparse.Namespace) -> pb.StartOptimizationRequest:
    request = pb.StartOptimizationRequest(
        program=args.program, dataset=args.dataset, optimizer=args.optimizer, priority=args.priority,
        base_version=args.base_version, seed=args.seed,
        metric=pb.MetricSpec(kind=args.metric, fields=args.metric_field),
        budget=pb.OptimizationBudget(max_lm_calls=args.max_lm_calls, max_seconds=args.max_seconds),
    )
    _fill_struct(request.options, parse_assignments(args.option, "--option"), "--option")
    _fill_struct(request.metric.options, parse_assignments(args.metric_option, "--metric-option"), "--metric-option")
    return request


def _optimize(args: argparse.Namespace) -> int:
    request = optimization_request(args)
    with _stub(args) as stub:
        job = stub.StartOptimization(request, timeout=_timeout(args))
        if args.no_wait:
            if args.json:
                _print_json(job)
            else:
                what = "found an identical job" if job.reused else "queued"
                print(f"{what}: job {job.job_id} ({job.state}); follow it with: dspy-pool jobs watch {job.job_id}")
            return EXIT_OK
        return _wait_for_job(stub, job, args)


def _jobs_watch(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        job = stub.GetOptimization(pb.GetOptimizationRequest(job_id=args.job_id), timeout=_timeout(args))
        return _wait_for_job(stub, job, args)


def _wait_for_job(stub: pb_grpc.DSPyPoolStub, job: pb.OptimizationJob, args: argparse.Namespace) -> int:
    """Follow the job (a live line on a terminal's stderr), then print its result; exit 1 unless it succeeded."""
    if job.state not in FINISHED:
        try:
            job = _follow(stub, job, quiet=args.json)
        except KeyboardInterrupt:
            return _fail(f"stopped waiting; job {job.job_id} keeps running (dspy-pool jobs cancel {job.job_id})",
                         EXIT_INTERRUPTED)
        except _WatchBroken as broken:
            job, failure = broken.last, describe(broken.error, args.target)
            if not ended_by_server(broken.error):
                return _fail(f"{failure}; job {job.job_id} may still be running (dspy-pool jobs watch {job.job_id})", EXIT_ERROR)
            return _fail(f"{failure}; {after_server_stopped(job)}", EXIT_ERROR)
        if job.state not in FINISHED:  # the server closed the watch early: it is shutting down
            return _fail(f"the server at {args.target} ended the watch (it is stopping); {after_server_stopped(job)}", EXIT_ERROR)
    from dspy_pool import jobs_view

    if args.json:
        _print_json(job)
    elif job.state == "succeeded":
        print("\n".join(jobs_view.result_lines(job)))
    if job.state != "succeeded":
        return _fail(f"optimization {job.job_id} {job.state}: {job.error or 'no reason given'}", EXIT_ERROR)
    return EXIT_OK


def after_server_stopped(job: pb.OptimizationJob) -> str:
    """What becomes of a job whose server stopped, as the job store has it (optimize/jobs.py): a running job
    stops with the server and shows as interrupted once it starts again; a queued one is queued again."""
    if job.state == "queued":
        return f"job {job.job_id} was queued: it stays queued and runs once the server is back (dspy-pool jobs watch {job.job_id})"
    from dspy_pool import jobs_view

    return (f"job {job.job_id} stopped with it and will show as interrupted once the server is back; "
            f"to start it again: {jobs_view.optimize_command(job.request)}")


class _WatchBroken(Exception):
    """WatchOptimization failed: the gRPC error, and the last state of the job it had sent."""

    def __init__(self, error: grpc.RpcError, last: pb.OptimizationJob) -> None:
        super().__init__(str(error))
        self.error, self.last = error, last


def _follow(stub: pb_grpc.DSPyPoolStub, job: pb.OptimizationJob, quiet: bool) -> pb.OptimizationJob:
    """The job's last state from WatchOptimization (no deadline: a job runs as long as its budget lets it);
    _WatchBroken when the watch fails."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    from dspy_pool import jobs_view

    console = Console(file=sys.stderr, highlight=False)
    stream = stub.WatchOptimization(pb.GetOptimizationRequest(job_id=job.job_id))
    try:
        if quiet:
            for job in stream:
                pass
        elif console.is_terminal:
            # Redrawn when the job changes, not on a timer: the server sets the pace, as in `top`.
            with Live(console=console, auto_refresh=False, transient=False) as live:
                for job in stream:
                    live.update(Text(jobs_view.progress_text(job), no_wrap=True, overflow="ellipsis"), refresh=True)
        else:
            # A log or a pipe: a line when the state or phase changes, not one per progress tick.
            shown = None
            for job in stream:
                if (job.state, job.progress.phase) != shown:
                    shown = (job.state, job.progress.phase)
                    print(jobs_view.progress_text(job), file=sys.stderr, flush=True)
    except grpc.RpcError as exc:
        raise _WatchBroken(exc, job) from exc
    finally:
        stream.cancel()
    return job


def _jobs_list(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        reply = pb.ListOptimizationsResponse(jobs=all_pages(stub.ListOptimizations, pb.ListOptimizationsRequest(program=args.program),
                                                            "jobs", _timeout(args)))
    if args.json:
        _print_json(reply)
    elif not reply.jobs:
        print(f"no optimization jobs{f' for {args.program}' if args.program else ''}")
    else:
        from dspy_pool import jobs_view

        _console().print(jobs_view.jobs_table(reply.jobs))
    return EXIT_OK


def _jobs_get(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        job = stub.GetOptimization(pb.GetOptimizationRequest(job_id=args.job_id), timeout=_timeout(args))
    if args.json:
        _print_json(job)
    else:
        from dspy_pool import jobs_view

        print("\n".join(jobs_view.job_lines(job)))
    return EXIT_OK


def _jobs_cancel(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        job = stub.CancelOptimization(pb.CancelOptimizationRequest(job_id=args.job_id), timeout=_timeout(args))
    if args.json:
        _print_json(job)
    elif job.state == "running":
        print(f"cancelling job {job.job_id}: it stops at its next LM call (dspy-pool jobs watch {job.job_id})")
    elif job.state == "cancelled":
        print(f"cancelled job {job.job_id}")
    else:
        print(f"job {job.job_id} had already {job.state}; nothing to cancel")
    return EXIT_OK


# -- execution policy and stats -------------------------------------------------------------


_POLICY_OPTIONS = ("mode", "hybrid_percent", "sticky_sessions", "promotion", "min_improvement", "min_dev_examples",
                   "optimized_version", "base_version")


def _policy_get(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        policy = stub.GetExecutionPolicy(pb.GetExecutionPolicyRequest(program=args.program), timeout=_timeout(args))
    _print_policy(policy, args)
    return EXIT_OK


def _policy_set(args: argparse.Namespace) -> int:
    changes = {name: getattr(args, name) for name in _POLICY_OPTIONS if getattr(args, name) is not None}
    if not changes:
        raise UsageError("nothing to change: name at least one of --mode, --hybrid-percent, --sticky-sessions, "
                         "--promotion, --min-improvement, --min-dev-examples, --optimized-version, --base-version")
    with _stub(args) as stub:
        # The server stores a whole policy: read it, change what the command line names, write it back.
        policy = stub.GetExecutionPolicy(pb.GetExecutionPolicyRequest(program=args.program), timeout=_timeout(args))
        policy.program = args.program
        for name, value in changes.items():
            setattr(policy, name, value)
        policy = stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=policy), timeout=_timeout(args))
    _print_policy(policy, args)
    return EXIT_OK


def _print_policy(policy: pb.ExecutionPolicy, args: argparse.Namespace) -> None:
    if args.json:
        _print_json(policy)
    else:
        from dspy_pool import jobs_view

        print("\n".join(jobs_view.policy_lines(policy)))


def _feedback(args: argparse.Namespace) -> int:
    if args.score is None and args.expected is None:
        raise UsageError("give --score, --expected, or both")
    request = pb.RecordFeedbackRequest(request_id=args.request_id)
    if args.score is not None:
        request.score, request.has_score = args.score, True
    if args.expected is not None:
        expected = _parse_json(args.expected, "--expected")
        if not isinstance(expected, dict) or not expected:
            raise UsageError("--expected must be a non-empty JSON object of output field names to values")
        _fill_struct(request.expected_outputs, expected, "--expected")
    with _stub(args) as stub:
        reply = stub.RecordFeedback(request, timeout=_timeout(args))
    if args.json:
        _print_json(reply)
        return EXIT_OK
    added = f"added an example to dataset {reply.dataset}" if reply.example_added else "no example added"
    print(f"feedback recorded for {reply.program} version {reply.version}: {added}")
    return EXIT_OK


def _stats(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        stats = stub.GetProgramStats(pb.GetProgramStatsRequest(program=args.program), timeout=_timeout(args))
    if args.json:
        _print_json(stats)
        return EXIT_OK
    from dspy_pool import jobs_view

    print(jobs_view.policy_lines(stats.policy)[0])
    if stats.arms:
        _console().print(jobs_view.stats_table(stats))
    else:
        print("no calls yet")
    return EXIT_OK
