"""One optimization job, in an optimizer worker: DSPy's real optimizer under a budget, cancellable.

    run(task, on_progress, cancelled)                       (the calling thread: watches, reports)
      check: catalog options, metric, examples vs the signature, budget >= 2 x dev
      job thread ──────────────────────────────────────────────────────────────────────────────
        baseline    the base program (programs.build(task.spec)) scored on dev      -> B calls
        optimizing  dspy.<Optimizer>(metric, options).compile(base, trainset=train)
                    under a call cap of max_lm_calls - B (B kept back for the last step)
                    and a deadline of max_seconds less about the baseline's time
        evaluating  the result saved (dump_state, no LM), rebuilt through programs.build
                    (exactly what will be served) and scored on dev
      ─────────────────────────────────────────────────────────────────────────────────────────
      every 50 ms: cancelled()? -> refuse every further LM call, raise task.Cancelled (within
                                   about 1 s, even while an LM call hangs: the job thread is left to unwind)
                   progress changed? -> on_progress(Progress) (phase changes at once, else <= 4/s)

Budget. Every LM call of the job (the program's, the optimizer's proposals,
GEPA's reflection LM, an llm_judge metric) goes through one gate that counts
it before it is sent and refuses it once the phase's cap or deadline is
reached: max_lm_calls is never exceeded. A call is one DSPy LM call, and a
call for n completions counts n (DSPy sends n requests); an answer from
DSPy's cache counts too, DSPy's own retries of a failed call do not. The
gate also holds the job to `num_threads` calls at a time and refuses every
call once the job is cancelled. A refusal is raised as a BaseException, so
DSPy's `except Exception` error handling (which would score it as a failed
example and carry on) lets it through and the optimizer stops. A call in
flight at the deadline finishes; max_seconds bounds when calls start.

Best so far, when the budget stops an optimizer (budget_limited is then set):
  - any optimizer that scores candidates with dspy.Evaluate (random search,
    MIPROv2, COPRO): the best-scoring candidate among those it scored on its
    whole validation split (minibatch scores are not compared with full ones);
  - bootstrap_few_shot: the demos bootstrapped so far, topped up with labeled
    train examples as BootstrapFewShot itself does;
  - gepa: asked to stop (its stop_callbacks) when the rest of the budget
    cannot cover another iteration, it returns its best candidate itself;
  - otherwise (nothing scored yet, simba, labeled_few_shot): the base program.
If the final scoring itself cannot finish within the budget, the result is
the base program with its baseline score. A budget too small to score the
base program on dev is InvalidArgument: there is nothing to compare with.

Progress.best_score: the baseline's dev score once known; while optimizing,
the best score the optimizer saw on its own validation split; at "done", the
optimized dev score. trials_done counts the optimizer's completed candidate
evaluations (bootstrap_few_shot: train examples tried); trials_planned is 0
when the optimizer does not say in advance.

Seeds: MIPROv2, SIMBA and GEPA take the task's seed; LabeledFewShot,
BootstrapFewShot and random search use DSPy's fixed seeds (deterministic anyway).

The optimized state never carries an LM or LM kwargs (each predictor's "lm"
is null and "config" is left out: the spec's lm_options apply on load), so it
passes programs.check_saved_state (hard rule 9).
"""

from __future__ import annotations

import asyncio
import copy
import importlib.util
import itertools
import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import dspy
from dspy.utils.callback import BaseCallback

from dspy_pool import kinds
from dspy_pool.errors import ErrorKind, InvalidArgument, PoolError
from dspy_pool.optimize import catalog
from dspy_pool.optimize.metrics import Metric, build_metric
from dspy_pool.optimize.task import Budget, Cancelled, Example, OptimizeResult, OptimizeTask, Progress
from dspy_pool.pool import programs
from dspy_pool.v1 import dspy_pool_pb2 as pb

POLL_S = 0.05
PROGRESS_INTERVAL_S = 0.25  # at most 4 progress reports a second, phase changes aside
CANCEL_GRACE_S = 1.0  # how long a cancelled job's thread may take to unwind before run() gives up on it
FINAL_EVAL_TIME_FACTOR = 1.5  # the final scoring's time, kept back from the optimizer: baseline time x this
MIN_TRAIN = {"mipro_v2": 2}

LMResolver = Callable[[str], Any]


# --- the gate: budget, cancellation, concurrency ---------------------------------


class _Stop(BaseException):
    """Refused LM call. A BaseException so DSPy's `except Exception` handlers let it through."""


class _BudgetReached(_Stop):
    pass


class _CancelledStop(_Stop):
    pass


class _LMDown(_Stop):
    """The LM failed LM_FAILURES_IN_A_ROW calls in a row: the job stops rather than keep calling a provider that is
    down (optimizers score a failed call 0 and go on: hundreds of requests into an outage, then a failed job)."""

    def __init__(self, failures: int, last: BaseException) -> None:
        super().__init__(f"the LM failed {failures} calls in a row, so the job stopped (last: {type(last).__name__}: {last})")
        self.last = last


LM_FAILURES_IN_A_ROW = 20
TRANSIENT_RETRIES = 3  # a rate limit or a provider's 5xx is asked again this often, each time counted in the budget
_TRANSIENT = (dspy.LMRateLimitError, dspy.LMServerError, dspy.LMTransportError)
_MAX_RETRY_WAIT_S = 30.0
RETRY_BASE_S = 0.5  # the first wait without a retry-after; doubling


def transient_wait_s(error: BaseException, attempt: int) -> float | None:
    """How long to wait before asking again after `error` on try number `attempt` (1 for the first); None: do not.

    A rate limit or a provider's 5xx says nothing about the candidate being scored: scoring it 0 (or failing the
    job, as the baseline's scoring did at the first 500) would judge the optimizer on the provider's bad minute.
    The provider's retry-after is honoured (capped), else 0.5, 1, 2 s.
    """
    if attempt > TRANSIENT_RETRIES or not isinstance(error, _TRANSIENT):
        return None
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, (int, float)) and retry_after > 0:
        return min(float(retry_after), _MAX_RETRY_WAIT_S)
    return RETRY_BASE_S * 2 ** (attempt - 1)


class _Budget:
    """The job's LM calls: one count for every phase, the concurrency cap, the cancel flag."""

    def __init__(self, max_calls: int, num_threads: int, cancelled: Callable[[], bool]) -> None:
        self.max_calls = max_calls
        self.used = 0
        self.refused = 0
        self.failures_in_a_row = 0  # LM calls that raised, since the last that answered
        self.lm_down: _LMDown | None = None
        self._cancelled = cancelled
        self.cancel_event = threading.Event()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, num_threads))

    def __deepcopy__(self, memo: dict) -> "_Budget":
        return self  # shared by design: LM copies in copied programs still count against it

    def cancel(self) -> None:
        """No call is admitted once this returns (take() checks under the same lock)."""
        with self._lock:
            self.cancel_event.set()

    def _check_cancel(self) -> None:
        if self.cancel_event.is_set() or self._cancelled():
            self.cancel_event.set()
            raise _CancelledStop("optimization cancelled")

    def answered(self) -> None:
        with self._lock:
            self.failures_in_a_row = 0

    def failed(self, error: BaseException, attempt: int) -> float | None:
        """Try number `attempt` of an LM call raised `error`: how long to wait before asking again (None: the error
        stands). Past LM_FAILURES_IN_A_ROW in a row, no call is admitted any more."""
        with self._lock:
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= LM_FAILURES_IN_A_ROW and self.lm_down is None:
                self.lm_down = _LMDown(self.failures_in_a_row, error)
        return transient_wait_s(error, attempt)

    def take(self, phase: "_Phase", units: int = 1) -> None:
        """Count `units` calls for `phase`, or raise: cancelled, the LM down, phase over, cap or deadline reached."""
        with self._lock:
            self._check_cancel()
            if self.lm_down is not None:
                raise self.lm_down
            if phase.closed:
                raise _BudgetReached(f"the {phase.name} phase is over")
            if phase.cap and self.used + units > phase.cap:
                self.refused += 1
                raise _BudgetReached(f"LM call budget reached ({self.used} calls)")
            if phase.deadline is not None and time.monotonic() >= phase.deadline:
                self.refused += 1
                raise _BudgetReached("time budget reached")
            self.used += units

    def wait(self, seconds: float) -> None:
        """Sleep `seconds` before asking the LM again, or until the job is cancelled (the next take() then refuses)."""
        self.cancel_event.wait(seconds)

    def acquire_slot(self) -> None:
        while not self._slots.acquire(timeout=POLL_S):
            self._check_cancel()

    def release_slot(self) -> None:
        self._slots.release()


@dataclass
class _Phase:
    """One stage's view of the budget: its absolute call cap (0: none) and deadline; closed once it ends."""

    name: str
    budget: _Budget
    cap: int = 0
    deadline: float | None = None
    closed: bool = False

    def __deepcopy__(self, memo: dict) -> "_Phase":
        return self

    def remaining(self) -> int | None:
        return None if not self.cap else max(0, self.cap - self.budget.used)

    def close(self) -> None:
        """Calls from threads the stage left behind are refused from now on."""
        self.closed = True


class _GatedMixin:
    """Every call counted by the phase's gate before it is sent. Copies (lm.copy) share the gate."""

    _gate_phase: _Phase

    def __call__(self, *args, **kwargs):
        phase = self._gate_phase
        phase.budget.acquire_slot()
        try:
            for attempt in itertools.count(1):
                phase.budget.take(phase, self._units(kwargs))
                try:
                    answer = super().__call__(*args, **kwargs)
                except Exception as error:
                    wait_s = phase.budget.failed(error, attempt)
                    if wait_s is None:
                        raise
                    phase.budget.wait(wait_s)  # cancel-aware: a cancelled job stops waiting at once
                    continue
                phase.budget.answered()
                return answer
        finally:
            phase.budget.release_slot()

    async def acall(self, *args, **kwargs):
        phase = self._gate_phase
        for attempt in itertools.count(1):
            phase.budget.take(phase, self._units(kwargs))  # no slot: waiting for one would block the event loop
            try:
                answer = await super().acall(*args, **kwargs)
            except Exception as error:
                wait_s = phase.budget.failed(error, attempt)
                if wait_s is None:
                    raise
                await asyncio.sleep(wait_s)
                continue
            phase.budget.answered()
            return answer

    def _units(self, kwargs: dict) -> int:
        """A call for n completions is n requests to the provider (DSPy sends them one by one): it counts n."""
        n = kwargs.get("n") or (getattr(self, "kwargs", None) or {}).get("n") or 1
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1


_gated_classes: dict[type, type] = {}
_gated_lock = threading.Lock()


def gated(lm: Any, phase: _Phase) -> Any:
    """A runtime copy of `lm` (same client, same settings) whose calls go through `phase`'s gate."""
    cls = type(lm)
    with _gated_lock:
        sub = _gated_classes.get(cls)
        if sub is None:
            sub = _gated_classes[cls] = type(f"Gated{cls.__name__}", (_GatedMixin, cls), {})
    copied = copy.copy(lm)
    copied.history = []
    copied.__class__ = sub
    copied._gate_phase = phase
    return copied


# --- best so far and progress ------------------------------------------------------


class _Status:
    """What the job thread is doing; the calling thread reads it to report Progress.

    Each phase change is kept as a snapshot until the calling thread drains it,
    so no phase goes unreported however short it was.
    """

    def __init__(self, calls: Callable[[], int], started: float) -> None:
        self._calls = calls
        self._started = started
        self._lock = threading.Lock()
        self._changes: list[Progress] = []
        self.phase = "starting"
        self.trials_done = 0
        self.trials_planned = 0
        self.best_score: float | None = None

    def set(self, **changes: Any) -> None:
        with self._lock:
            moved = changes.get("phase", self.phase) != self.phase
            for name, value in changes.items():
                setattr(self, name, value)
            if moved:
                self._changes.append(self._snapshot())

    def add_trial(self) -> None:
        with self._lock:
            self.trials_done += 1

    def _snapshot(self) -> Progress:
        return Progress(self.phase, self.trials_done, self.trials_planned, self.best_score, self._calls(),
                        time.monotonic() - self._started)

    def progress(self) -> Progress:
        with self._lock:
            return self._snapshot()

    def drain(self) -> list[Progress]:
        with self._lock:
            changes, self._changes = self._changes, []
            return changes


class _Candidates(BaseCallback):
    """Records the optimizer's own evaluations (dspy.Evaluate): the best program scored on its whole validation split."""

    def __init__(self, status: _Status, count_trials: bool) -> None:
        self._status = status
        self._count_trials = count_trials
        self._started: dict[str, tuple[Any, int]] = {}
        self._lock = threading.Lock()
        self.best: tuple[int, float, Any] | None = None  # (examples, score 0..1, a copy of the program)
        self.closed = False

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        devset = inputs.get("devset") or getattr(instance, "devset", None) or []
        self._started[call_id] = (inputs.get("program"), len(devset))

    def on_evaluate_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        program, size = self._started.pop(call_id, (None, 0))
        score = getattr(outputs, "score", None)
        if exception is not None or program is None or score is None or self.closed:
            return
        score = float(score) / 100.0  # dspy.Evaluate reports a percentage
        if self._count_trials:
            self._status.add_trial()
        with self._lock:
            best = self.best
            if best is None or size > best[0] or (size == best[0] and score > best[1]):
                self.best = (size, score, program.deepcopy())
                self._status.set(best_score=score)


# --- scoring --------------------------------------------------------------------


def _evaluate(module: Any, examples: list[dspy.Example], metric: Metric, lm: Any, num_threads: int) -> float:
    """The mean metric over examples; a refused call (_Stop) ends it, other failures score 0 up to max_errors."""
    max_errors = dspy.settings.max_errors
    errors = 0
    lock = threading.Lock()

    def one(example: dspy.Example) -> float:
        nonlocal errors
        with dspy.context(lm=lm, trace=[]):  # this example's: DSPy's global trace would keep it (see pool/worker.py)
            try:
                return metric(example, module(**example.inputs()))
            except Exception:
                with lock:
                    errors += 1
                    if errors >= max_errors:
                        raise
                return 0.0

    pool = ThreadPoolExecutor(max_workers=max(1, min(num_threads, len(examples))), thread_name_prefix="optimize-eval")
    try:
        scores = [future.result() for future in [pool.submit(one, example) for example in examples]]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return sum(scores) / len(scores)


# --- the optimizers ---------------------------------------------------------------


@dataclass
class _Job:
    """What an optimizer adapter needs; `partial` may give its best-so-far when the budget stops it."""

    student: Any
    train: list[dspy.Example]
    options: dict[str, Any]
    metric: Callable[..., float]
    seed: int
    num_threads: int
    phase: _Phase
    named_lm: LMResolver
    status: _Status
    partial: Callable[[], Any] | None = None
    wound_down: bool = False


def _labeled_few_shot(job: _Job) -> Any:
    return dspy.LabeledFewShot(k=job.options["k"]).compile(job.student, trainset=job.train)


def _bootstrap_few_shot(job: _Job) -> Any:
    o = job.options
    optimizer = dspy.BootstrapFewShot(
        metric=job.metric, metric_threshold=o.get("metric_threshold"), max_bootstrapped_demos=o["max_bootstrapped_demos"],
        max_labeled_demos=o["max_labeled_demos"], max_rounds=o["max_rounds"],
    )
    job.partial = lambda: _bootstrapped_so_far(optimizer, job)
    job.status.set(trials_planned=len(job.train) * o["max_rounds"])
    return optimizer.compile(job.student, trainset=job.train)


def _bootstrapped_so_far(optimizer: Any, job: _Job) -> Any:
    """What BootstrapFewShot._train would make of the traces collected so far; None if there are none."""
    traces = getattr(optimizer, "name2traces", None)
    if not traces or not any(traces.values()):
        return None
    o = job.options
    bootstrapped = [demo for demos in traces.values() for demo in demos]
    used = {_input_key(demo, job.train[0]) for demo in bootstrapped}
    rest = [example for example in job.train if _input_key(example, example) not in used]
    rng = random.Random(0)
    program = job.student.reset_copy()
    for name, predictor in program.named_predictors():
        augmented = traces.get(name, [])[: o["max_bootstrapped_demos"]]
        size = max(0, min(o["max_labeled_demos"] - len(augmented), len(rest)))
        predictor.demos = augmented + rng.sample(rest, size)
    return program


def _input_key(values: Any, example: dspy.Example) -> str:
    names = sorted(example.inputs().keys())
    return json.dumps([str(values.get(n)) for n in names])


def _random_search(job: _Job) -> Any:
    o = job.options
    stop = o.get("stop_at_score")
    optimizer = dspy.BootstrapFewShotWithRandomSearch(
        metric=job.metric, max_bootstrapped_demos=o["max_bootstrapped_demos"], max_labeled_demos=o["max_labeled_demos"],
        max_rounds=o["max_rounds"], num_candidate_programs=o["num_candidate_programs"], num_threads=job.num_threads,
        stop_at_score=None if stop is None else stop * 100.0, metric_threshold=o.get("metric_threshold"),
    )
    job.status.set(trials_planned=o["num_candidate_programs"] + 3)  # plus zero-shot, labeled only, unshuffled
    return optimizer.compile(job.student, trainset=job.train)


def _mipro_v2(job: _Job) -> Any:
    o = job.options
    auto = None if o["auto"] == catalog.NO_AUTO else o["auto"]
    optimizer = dspy.MIPROv2(
        metric=job.metric, auto=auto, num_candidates=o.get("num_candidates"),
        max_bootstrapped_demos=o["max_bootstrapped_demos"], max_labeled_demos=o["max_labeled_demos"],
        num_threads=job.num_threads, seed=job.seed, verbose=False,
    )
    extra: dict[str, Any] = {}
    if auto is None:
        extra["num_trials"] = o["num_trials"]
        job.status.set(trials_planned=o["num_trials"] + 1)
    # MIPROv2 keeps 80% of train for validation; a minibatch only helps (and is only allowed) when it is smaller.
    valset_size = min(1000, max(1, int(len(job.train) * 0.8)))
    return optimizer.compile(
        job.student, trainset=job.train, seed=job.seed, minibatch=o["minibatch"] and valset_size > o["minibatch_size"],
        minibatch_size=o["minibatch_size"], minibatch_full_eval_steps=o["minibatch_full_eval_steps"], **extra,
    )


def _copro(job: _Job) -> Any:
    o = job.options
    optimizer = dspy.COPRO(metric=job.metric, breadth=o["breadth"], depth=o["depth"],
                           init_temperature=o["init_temperature"], track_stats=False)
    job.status.set(trials_planned=o["breadth"] * o["depth"])
    return optimizer.compile(job.student, trainset=job.train,
                             eval_kwargs={"num_threads": job.num_threads, "display_progress": False})


def _simba(job: _Job) -> Any:
    o = job.options
    if o["bsize"] > len(job.train):
        raise InvalidArgument(f"optimizer 'simba': option 'bsize' ({o['bsize']}) exceeds the train split "
                              f"({len(job.train)} examples)")
    optimizer = dspy.SIMBA(metric=job.metric, bsize=o["bsize"], num_candidates=o["num_candidates"],
                           max_steps=o["max_steps"], max_demos=o["max_demos"], num_threads=job.num_threads)
    return optimizer.compile(job.student, trainset=job.train, seed=job.seed)


def _gepa(job: _Job) -> Any:
    o = job.options
    auto = None if o["auto"] == catalog.NO_AUTO else o["auto"]
    # One GEPA iteration scores a minibatch twice, reflects once, and may score the whole validation split.
    margin = len(job.train) + 2 * o["reflection_minibatch_size"] + 2

    def wind_down(_state: Any) -> bool:
        remaining = job.phase.remaining()
        deadline = job.phase.deadline
        if (remaining is not None and remaining < margin) or (deadline is not None and time.monotonic() >= deadline):
            job.wound_down = True
        return job.wound_down

    optimizer = dspy.GEPA(
        metric=job.metric, auto=auto, max_metric_calls=o.get("max_metric_calls"), max_full_evals=o.get("max_full_evals"),
        reflection_lm=job.named_lm(o["reflection_lm"]), reflection_minibatch_size=o["reflection_minibatch_size"],
        candidate_selection_strategy=o["candidate_selection_strategy"], use_merge=o["use_merge"],
        skip_perfect_score=o["skip_perfect_score"], num_threads=job.num_threads, seed=job.seed,
        gepa_kwargs={"stop_callbacks": [wind_down]},
    )
    return optimizer.compile(job.student, trainset=job.train)


_OPTIMIZERS: Mapping[str, Callable[[_Job], Any]] = {
    "labeled_few_shot": _labeled_few_shot,
    "bootstrap_few_shot": _bootstrap_few_shot,
    "bootstrap_few_shot_with_random_search": _random_search,
    "mipro_v2": _mipro_v2,
    "copro": _copro,
    "simba": _simba,
    "gepa": _gepa,
}
assert set(_OPTIMIZERS) == set(catalog.OPTIMIZERS), "every catalog optimizer needs an adapter here"
_EVALUATE_TRIALS = frozenset({"bootstrap_few_shot_with_random_search", "mipro_v2", "copro"})


# --- saved state -------------------------------------------------------------------


def saved_state(module: Any) -> str:
    """The module's state as JSON with no LM and no LM kwargs in it (programs.check_saved_state accepts it)."""
    state = module.dump_state()
    entries = [state] if isinstance(module, dspy.Predict) else [v for v in state.values() if isinstance(v, dict)]
    for entry in entries:
        entry["lm"] = None
        entry.pop("config", None)
    return json.dumps(state, ensure_ascii=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "toDict"):
        return value.toDict()
    return str(value)


# --- the job ------------------------------------------------------------------------


@dataclass
class _Prepared:
    spec: pb.ProgramSpec
    base: programs.BuiltProgram
    train: list[dspy.Example]
    dev: list[dspy.Example]
    options: dict[str, Any]
    lms: dict[str, Any]  # allow-listed named LMs (judge, reflection), resolved, not yet gated
    lm: Any
    rules: programs.BuildRules
    budget: Budget


def _examples(given: tuple[Example, ...], split: str, base: programs.BuiltProgram) -> list[dspy.Example]:
    if not given:
        raise InvalidArgument(f"the {split} split is empty")
    outputs = set(base.output_names)
    examples = []
    for number, example in enumerate(given):
        try:
            inputs = base.call_inputs(dict(example.inputs))
        except InvalidArgument as exc:
            raise InvalidArgument(f"{split} example {number}: {exc.message}") from None
        unknown = sorted(set(example.outputs) - outputs)
        if unknown:
            raise InvalidArgument(f"{split} example {number}: {unknown[0]!r} is not an output field "
                                  f"(outputs: {', '.join(base.output_names)})")
        if not example.outputs:
            raise InvalidArgument(f"{split} example {number} has no expected outputs")
        examples.append(dspy.Example(**inputs, **dict(example.outputs)).with_inputs(*inputs))
    return examples


class _AnyModel:
    """The front checked the allow-list; in the worker the resolver (lm_for) is the gate."""

    def __contains__(self, name: object) -> bool:
        return True


def _prepare(task: OptimizeTask, lm: Any, lm_for: LMResolver | None, rules: programs.BuildRules) -> _Prepared:
    if lm is None:
        raise RuntimeError("no LM configured for the optimizer worker (dspy.configure(lm=...) or lm=)")
    options = catalog.check_optimizer(task.optimizer, task.options, _AnyModel())
    if task.optimizer == "mipro_v2" and importlib.util.find_spec("optuna") is None:
        # MIPROv2 imports it only after bootstrapping and proposing: refuse before spending those calls.
        raise PoolError("optimizer 'mipro_v2' needs the optuna package, which this server does not have installed",
                        kind=ErrorKind.FAILED_PRECONDITION)
    kinds.load_builtins()  # already done in a zygote's children; idempotent
    spec = pb.ProgramSpec.FromString(task.spec)
    base = programs.build(spec, rules)
    train = _examples(task.train, "train", base)
    dev = _examples(task.dev, "dev", base)
    if len(train) < MIN_TRAIN.get(task.optimizer, 1):
        raise InvalidArgument(f"optimizer {task.optimizer!r} needs at least {MIN_TRAIN[task.optimizer]} train examples")
    budget = task.budget
    if budget.max_lm_calls < 0 or budget.max_seconds < 0:
        raise InvalidArgument("budget: max_lm_calls and max_seconds must not be negative (0: no limit)")
    if budget.max_lm_calls and budget.max_lm_calls < 2 * len(dev):
        raise InvalidArgument(f"budget: max_lm_calls={budget.max_lm_calls} cannot score {len(dev)} dev examples twice "
                              f"(the base and the result): at least {2 * len(dev)} calls are needed")
    resolve = lm_for or _default_resolver(lm)
    names = [options[n] for n in sorted(catalog.OPTIMIZERS[task.optimizer].lm_options) if n in options]
    declared = catalog.METRICS.get(task.metric.kind)
    if declared is not None:
        names += [task.metric.options[n] for n in sorted(declared.lm_options) if n in task.metric.options]
    lms = {name: resolve(name) for name in names}
    build_metric(task.metric, lm_for=lms.__getitem__)  # checks the metric before any LM call is spent
    return _Prepared(spec, base, train, dev, options, lms, lm, rules, budget)


def _default_resolver(lm: Any) -> LMResolver:
    def resolve(name: str) -> Any:
        if name == getattr(lm, "model", None):
            return lm
        raise InvalidArgument(f"model {name!r} is not available to this optimizer worker")

    return resolve


class _Runner:
    """The job thread's work: baseline, optimize, final scoring, each a phase of the one budget."""

    def __init__(self, task: OptimizeTask, prepared: _Prepared, budget: _Budget, status: _Status, started: float) -> None:
        self.task = task
        self.p = prepared
        self.budget = budget
        self.status = status
        self.started = started
        self.num_threads = max(1, task.num_threads)

    def _phase(self, name: str, cap: int, deadline: float | None) -> tuple[_Phase, Any, Metric]:
        phase = _Phase(name, self.budget, cap=cap, deadline=deadline)
        named = {model: gated(lm, phase) for model, lm in self.p.lms.items()}
        return phase, gated(self.p.lm, phase), build_metric(self.task.metric, lm_for=named.__getitem__)

    def _deadline(self, reserve_s: float = 0.0) -> float | None:
        limit = self.p.budget.max_seconds
        return None if not limit else self.started + limit - reserve_s

    def run(self) -> OptimizeResult:
        max_calls = self.p.budget.max_lm_calls
        self.status.set(phase="baseline")
        phase, lm, metric = self._phase("baseline", max_calls, self._deadline())
        began = time.monotonic()
        try:
            baseline = _evaluate(self.p.base.module, self.p.dev, metric, lm, self.num_threads)
        except _BudgetReached:
            raise InvalidArgument(f"budget: it ran out while scoring the base program on {len(self.p.dev)} dev examples "
                                  f"({self.budget.used} LM calls); give the job a larger budget or a smaller dev split") from None
        finally:
            phase.close()
        baseline_calls, baseline_s = self.budget.used, time.monotonic() - began
        self.status.set(best_score=baseline)

        self.status.set(phase="optimizing", best_score=None)
        cap = max(self.budget.used, max_calls - baseline_calls) if max_calls else 0
        program, limited = self._optimize(cap, self._deadline(baseline_s * FINAL_EVAL_TIME_FACTOR))
        if program is None:
            return self._base_result(baseline, limited)

        state_json = saved_state(program)
        spec = pb.ProgramSpec()
        spec.CopyFrom(self.p.spec)
        spec.state_json = state_json
        rebuilt = programs.build(spec, self.p.rules)  # what the server will run; refuses state it would not accept
        self.status.set(phase="evaluating", best_score=None)
        phase, lm, metric = self._phase("evaluating", max_calls, self._deadline())
        try:
            optimized = _evaluate(rebuilt.module, self.p.dev, metric, lm, self.num_threads)
        except _BudgetReached:
            return self._base_result(baseline, True)
        finally:
            phase.close()
        self.status.set(phase="done", best_score=optimized)
        return self._result(state_json, baseline, optimized, limited)

    def _optimize(self, cap: int, deadline: float | None) -> tuple[Any, bool]:
        """The optimized program (None: keep the base) and whether the budget cut it short."""
        phase, lm, metric = self._phase("optimizing", cap, deadline)
        name = self.task.optimizer
        recorder = _Candidates(self.status, count_trials=name in _EVALUATE_TRIALS)
        counted = _counting(metric, self.status, count=name == "bootstrap_few_shot")
        job = _Job(self.p.base.module, list(self.p.train), dict(self.p.options), counted, self.task.seed,
                   self.num_threads, phase, lambda model: gated(self.p.lms[model], phase), self.status)
        refused_before = self.budget.refused
        try:
            # The job's own trace (freed with it), not DSPy's process-wide list, which kept every candidate's calls.
            with dspy.context(lm=lm, trace=[], callbacks=[*(dspy.settings.get("callbacks") or []), recorder]):
                program = _OPTIMIZERS[name](job)
            stopped = False
        except _BudgetReached:
            stopped = True
            program = None
        finally:
            phase.close()
            recorder.closed = True
        limited = stopped or job.wound_down or self.budget.refused > refused_before
        if stopped:
            if recorder.best is not None:
                program = recorder.best[2]
            elif job.partial is not None:
                program = job.partial()
        if program is not None:
            for predictor in program.predictors():
                predictor.lm = None  # optimizers (SIMBA) may pin their LM copies on predictors
        return program, limited

    def _base_result(self, baseline: float, limited: bool) -> OptimizeResult:
        """Nothing better than the base program was found (or could be scored): it is the result."""
        self.status.set(phase="done", best_score=baseline)
        return self._result(saved_state(self.p.base.module), baseline, baseline, limited)

    def _result(self, state_json: str, baseline: float, optimized: float, limited: bool) -> OptimizeResult:
        return OptimizeResult(
            state_json=state_json, baseline_score=baseline, optimized_score=optimized, dev_examples=len(self.p.dev),
            lm_calls=self.budget.used, budget_limited=limited, elapsed_s=time.monotonic() - self.started,
        )


def _counting(metric: Metric, status: _Status, count: bool) -> Callable[..., float]:
    if not count:
        return metric

    def counted(*args: Any, **kwargs: Any) -> float:
        status.add_trial()
        return metric(*args, **kwargs)

    return counted


def run(task: OptimizeTask, on_progress: Callable[[Progress], None], cancelled: Callable[[], bool], *,
        lm: Any = None, lm_for: LMResolver | None = None, rules: programs.BuildRules = programs.BuildRules()) -> OptimizeResult:
    """Run one optimization job to its result; InvalidArgument for a bad job, task.Cancelled once cancelled() is true.

    `lm`: the LM the program and the optimizer call (default: dspy.settings.lm of the
    calling thread). `lm_for`: resolves an allow-listed model name (GEPA's reflection_lm,
    an llm_judge model) to an LM; by default only the configured LM's own model name
    resolves. `rules`: the operator's BuildRules, as the workers build programs with.
    `cancelled` must be cheap and thread-safe: it is polled here and before every LM call.
    """
    started = time.monotonic()
    if cancelled():
        raise Cancelled("optimization cancelled before it started")
    prepared = _prepare(task, lm if lm is not None else dspy.settings.lm, lm_for, rules)
    budget = _Budget(task.budget.max_lm_calls, max(1, task.num_threads), cancelled)
    status = _Status(lambda: budget.used, started)
    runner = _Runner(task, prepared, budget, status, started)
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = runner.run()
        except BaseException as exc:  # handed to the calling thread, which raises it
            outcome["error"] = exc

    thread = threading.Thread(target=work, name="optimize-job", daemon=True)
    thread.start()
    reporter = _Reporter(on_progress)
    try:
        while thread.is_alive():
            thread.join(POLL_S)
            if not thread.is_alive():
                break
            if cancelled() or budget.cancel_event.is_set():
                budget.cancel()
                thread.join(CANCEL_GRACE_S)  # let it unwind if it can; it makes no more LM calls either way
                raise Cancelled(f"optimization cancelled after {budget.used} LM calls")
            reporter.pump(status)
    except BaseException:  # on_progress or cancelled() raised, or we were interrupted: the job stops calling too
        budget.cancel()
        raise
    error = outcome.get("error")
    if isinstance(error, _CancelledStop):
        raise Cancelled(f"optimization cancelled after {budget.used} LM calls") from None
    if isinstance(error, _LMDown):
        raise RuntimeError(str(error)) from error.last
    if error is not None:
        raise error
    reporter.pump(status)
    return outcome["result"]


class _Reporter:
    """Progress at every phase change, else at most every PROGRESS_INTERVAL_S and only when something moved."""

    def __init__(self, on_progress: Callable[[Progress], None]) -> None:
        self._on_progress = on_progress
        self._last: Progress | None = None
        self._last_at = 0.0

    def pump(self, status: _Status) -> None:
        for change in status.drain():
            self._send(change)
        progress, last = status.progress(), self._last
        if last is not None and replace(progress, elapsed_s=0.0) == replace(last, elapsed_s=0.0):
            return
        if last is not None and progress.phase == last.phase and time.monotonic() - self._last_at < PROGRESS_INTERVAL_S:
            return
        self._send(progress)

    def _send(self, progress: Progress) -> None:
        self._last, self._last_at = progress, time.monotonic()
        self._on_progress(progress)
