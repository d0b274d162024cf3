"""Plain Python values <-> protobuf messages, and the typed results the client returns.

Struct conversion (inputs, outputs, demos, static fallback outputs):
- dict -> Struct: keys must be str; values may be None, bool, int, float, str,
  list/tuple and dict (nested). Anything else raises TypeError on the client
  (convert dataclasses or pydantic models to dicts first).
- Struct -> dict: google.protobuf.Struct has one number type, a double. Every
  number comes back as float on the wire; the client turns integral floats
  (3.0) whose magnitude is below 2**53 back into int (3), recursively, so a
  round trip of ints gives ints. A genuine float such as 2.5 stays float; a
  float that happens to be integral (2.0) comes back as int 2. Integers
  beyond 2**53 lose precision: send them as strings.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from google.protobuf import struct_pb2

from ._gen import dspy_pool_pb2 as pb

MAX_EXACT_INT = 2**53


def _check_value(value: Any, path: str) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_EXACT_INT:
            raise TypeError(f"{path}: integer {value} cannot travel exactly as a Struct number (a double); send it as a string")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path}: {value} is not a finite number")
        return value
    if isinstance(value, Mapping):
        return {_key(k, path): _check_value(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_check_value(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{path}: {type(value).__name__} is not a Struct value (use dict, list, str, int, float, bool or None)")


def _key(key: Any, path: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"{path}: Struct keys must be str, not {type(key).__name__}")
    return key


def to_struct(values: Mapping[str, Any] | None, message: struct_pb2.Struct | None = None) -> struct_pb2.Struct:
    message = message if message is not None else struct_pb2.Struct()
    if values is not None and not isinstance(values, Mapping):
        raise TypeError(f"$: a Struct is built from a mapping of names to values, not {type(values).__name__}")
    if values:
        message.update(_check_value(values, "$"))
    return message


def _from_value(value: Any) -> Any:
    if isinstance(value, struct_pb2.Struct):
        return {key: _from_value(item) for key, item in value.items()}
    if isinstance(value, struct_pb2.ListValue):
        return [_from_value(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) <= MAX_EXACT_INT:  # as to_struct lets them go
        return int(value)
    return value


def from_struct(message: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _from_value(item) for key, item in message.items()}


def _timestamp(message) -> _dt.datetime | None:
    if message.seconds == 0 and message.nanos == 0:
        return None
    return message.ToDatetime(tzinfo=_dt.timezone.utc)


# -- results ----------------------------------------------------------------

@dataclass(frozen=True)
class Timings:
    queue_wait_ms: float = 0.0
    execution_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class Result:
    """One Execute: the outputs as a dict, and where and how it ran."""

    outputs: dict[str, Any]
    program: str
    version: int
    worker_id: int
    worker_pid: int
    served_by: str
    fallback_reason: str
    timings: Timings
    usage: Usage
    request_id: str
    session_id: str = ""
    # How the version was chosen: "traditional", "optimized", "hybrid:optimized", "hybrid:traditional",
    # "evaluation", or "version" (the call named one).
    execution_mode: str = ""
    evaluation: "EvaluationArm | None" = None   # evaluation mode: the other version's answer
    cache_level: str = ""                        # served_by "cache": "memory" or "store"
    session_started: bool = False                # this call began the session (its history was empty)
    # Why the session's earlier history is gone: "evicted", "expired", or "closed" (closed while this call ran).
    session_lost: str = ""

    @classmethod
    def from_proto(cls, message: pb.ExecuteResponse) -> "Result":
        return cls(
            outputs=from_struct(message.outputs), program=message.program, version=message.program_version,
            worker_id=message.worker.id, worker_pid=message.worker.pid, served_by=message.served_by,
            fallback_reason=message.fallback_reason,
            timings=Timings(message.timings.queue_wait_ms, message.timings.execution_ms, message.timings.total_ms),
            usage=Usage(message.usage.prompt_tokens, message.usage.completion_tokens, message.usage.total_tokens),
            request_id=message.request_id, session_id=message.session_id, execution_mode=message.execution_mode,
            evaluation=EvaluationArm.from_proto(message.evaluation) if message.HasField("evaluation") else None,
            cache_level=message.cache_level, session_started=message.session_started, session_lost=message.session_lost,
        )


@dataclass(frozen=True)
class EvaluationArm:
    """Evaluation mode's other version: its outputs (or its error), latency and dev score."""

    outputs: dict[str, Any]
    version: int
    latency_ms: float
    score: float       # its dev score when an optimization measured one, else 0.0
    error: str = ""    # set when that version failed; the call's own outputs still stand

    @classmethod
    def from_proto(cls, message: pb.EvaluationArm) -> "EvaluationArm":
        return cls(from_struct(message.outputs), message.version, message.latency_ms, message.score, message.error)


@dataclass(frozen=True)
class ProgramInfo:
    name: str
    version: int
    content_hash: str
    created: bool                      # True when this registration made a new version
    input_names: list[str]
    output_names: list[str]
    module: str
    signature: str
    created_at: _dt.datetime | None
    raw: pb.Program = field(repr=False, compare=False)
    meta: "ProgramMeta | None" = None  # set on versions an optimization produced

    @classmethod
    def from_proto(cls, message: pb.Program) -> "ProgramInfo":
        return cls(
            name=message.spec.name, version=message.version, content_hash=message.content_hash, created=message.created,
            input_names=list(message.input_names), output_names=list(message.output_names),
            module=message.spec.module or "predict", signature=message.spec.signature,
            created_at=_timestamp(message.created_at), raw=message,
            meta=ProgramMeta.from_proto(message.meta) if message.HasField("meta") else None,
        )


@dataclass(frozen=True)
class ProgramMeta:
    """Where an optimized version came from and how it scored on the dataset's dev split."""

    job_id: str
    optimizer: str
    options: dict[str, Any]
    dataset: str
    dataset_hash: str
    lm: str
    base_version: int
    baseline_score: float   # the base version's dev score
    optimized_score: float  # this version's dev score
    dev_examples: int
    budget_limited: bool
    metric: "Metric"

    @classmethod
    def from_proto(cls, message: pb.ProgramMeta) -> "ProgramMeta":
        return cls(
            job_id=message.job_id, optimizer=message.optimizer, options=from_struct(message.options),
            dataset=message.dataset, dataset_hash=message.dataset_hash, lm=message.lm, base_version=message.base_version,
            baseline_score=message.baseline_score, optimized_score=message.optimized_score,
            dev_examples=message.dev_examples, budget_limited=message.budget_limited, metric=Metric.from_proto(message.metric),
        )


@dataclass(frozen=True)
class SessionTurn:
    program: str
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    turns: list[SessionTurn]
    preferred_worker: int
    created_at: _dt.datetime | None
    last_used_at: _dt.datetime | None
    turns_left_out: int = 0  # older turns past --session-history-max-bytes, not in `turns`

    @classmethod
    def from_proto(cls, message: pb.Session) -> "SessionInfo":
        return cls(
            session_id=message.session_id,
            turns=[SessionTurn(t.program, from_struct(t.inputs), from_struct(t.outputs)) for t in message.turns],
            preferred_worker=message.preferred_worker,
            created_at=_timestamp(message.created_at), last_used_at=_timestamp(message.last_used_at),
            turns_left_out=message.turns_left_out,
        )


@dataclass(frozen=True)
class WorkerInfo:
    id: int
    pid: int
    state: str
    in_flight: int
    served: int
    failed: int
    rss_bytes: int
    uptime_s: float


@dataclass(frozen=True)
class PoolStatus:
    serving: bool
    workers: list[WorkerInfo]
    queue_depth: int
    in_flight: int
    completed: int
    failed: int
    rejected: int
    worker_restarts: int
    sessions: int
    programs: int
    uptime_s: float
    raw: pb.PoolStatus = field(repr=False, compare=False)

    @classmethod
    def from_proto(cls, message: pb.PoolStatus) -> "PoolStatus":
        workers = [WorkerInfo(w.id, w.pid, w.state, w.in_flight, w.served, w.failed, w.rss_bytes, w.uptime_s) for w in message.workers]
        return cls(
            serving=message.serving, workers=workers, queue_depth=message.queue_depth, in_flight=message.in_flight,
            completed=message.completed, failed=message.failed, rejected=message.rejected,
            worker_restarts=message.worker_restarts, sessions=message.sessions, programs=message.programs,
            uptime_s=message.uptime_s, raw=message,
        )


# -- requests ---------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One signature field with a type and description (adds to, or replaces, the string signature)."""

    name: str
    type: str = ""
    description: str = ""


@dataclass(frozen=True)
class Fallback:
    """What the server tries when the primary call fails: chain of "cache", "lm", "program", "static", "fail"."""

    chain: tuple[str, ...] = ()
    lm: str = ""
    lm_api_base: str = ""
    program: str = ""
    static_outputs: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Metric:
    """How an optimization scores a version: a declarative metric kind (clients never send code).

    kind: exact_match, f1, contains, numeric_close, llm_judge, or one the operator registered;
    fields: the output fields compared (empty: every expected output field); options: the kind's options.
    """

    kind: str = "exact_match"
    fields: tuple[str, ...] = ()
    options: Mapping[str, Any] | None = None

    @classmethod
    def from_proto(cls, message: pb.MetricSpec) -> "Metric":
        return cls(message.kind, tuple(message.fields), from_struct(message.options))

    def to_proto(self) -> pb.MetricSpec:
        message = pb.MetricSpec(kind=self.kind, fields=list(self.fields))
        to_struct(self.options, message.options)
        return message


def metric_to_proto(metric: "str | Metric | Mapping[str, Any]") -> pb.MetricSpec:
    """A metric given as its kind ("exact_match"), a Metric, or a dict {"kind", "fields", "options"}."""
    if isinstance(metric, str):
        return Metric(metric).to_proto()
    if isinstance(metric, Mapping):
        unknown = set(metric) - {"kind", "fields", "options"}
        if unknown:
            raise TypeError(f"metric: unknown keys {sorted(unknown)} (expected kind, fields, options)")
        fields = metric.get("fields", ())
        metric = Metric(metric.get("kind", "exact_match"), (fields,) if isinstance(fields, str) else tuple(fields),
                        metric.get("options"))
    if not isinstance(metric, Metric):
        raise TypeError(f"metric must be a kind name, a Metric or a dict, not {type(metric).__name__}")
    return metric.to_proto()


def fallback_to_proto(fallback: Fallback | Mapping[str, Any] | None) -> pb.FallbackSpec | None:
    if fallback is None:
        return None
    if isinstance(fallback, Mapping):
        fallback = Fallback(**{**fallback, "chain": tuple(fallback.get("chain", ()))})
    message = pb.FallbackSpec(chain=list(fallback.chain), lm=fallback.lm, lm_api_base=fallback.lm_api_base, program=fallback.program)
    if fallback.static_outputs:
        to_struct(fallback.static_outputs, message.static_outputs)
    return message


def program_spec(name: str, signature: str = "", module: str = "predict", *, instructions: str = "",
                 demos: list[Mapping[str, Any]] | None = None, fallback: Fallback | Mapping[str, Any] | None = None,
                 input_fields: list[Field] | None = None, output_fields: list[Field] | None = None,
                 state_json: str = "", module_options: Mapping[str, Any] | None = None, description: str = "",
                 warmup_inputs: list[Mapping[str, Any]] | None = None,
                 capture: Mapping[str, Any] | None = None) -> pb.ProgramSpec:
    spec = pb.ProgramSpec(name=name, signature=signature, module=module, instructions=instructions,
                          state_json=state_json, description=description)
    for item in input_fields or ():
        spec.input_fields.add(name=item.name, type=item.type, description=item.description)
    for item in output_fields or ():
        spec.output_fields.add(name=item.name, type=item.type, description=item.description)
    for demo in demos or ():
        to_struct(demo, spec.demos.add())
    for inputs in warmup_inputs or ():
        to_struct(inputs, spec.warmup_inputs.add())
    if module_options:
        to_struct(module_options, spec.module_options)
    fallback_message = fallback_to_proto(fallback)
    if fallback_message is not None:
        spec.fallback.CopyFrom(fallback_message)
    if capture is not None:
        spec.capture.CopyFrom(capture_to_proto(capture))
    return spec


CAPTURE_KEYS = ("sample_rate", "max_examples", "dataset", "split", "good_score")


def capture_to_proto(capture: Mapping[str, Any]) -> pb.CapturePolicy:
    """{"sample_rate": 0..1, "max_examples", "dataset", "split", "good_score"}: which calls the server keeps for
    record_feedback."""
    unknown = set(capture) - set(CAPTURE_KEYS)
    if unknown:
        raise TypeError(f"capture: unknown keys {sorted(unknown)} (expected {', '.join(CAPTURE_KEYS)})")
    return pb.CapturePolicy(**capture)


def execute_request(program: str, inputs: Mapping[str, Any] | None, version: int = 0, session_id: str | None = None,
                    request_id: str | None = None, mode: str = "", max_optimization_wait_ms: int = 0) -> pb.ExecuteRequest:
    if max_optimization_wait_ms < 0:
        raise ValueError("max_optimization_wait_ms must be >= 0")
    request = pb.ExecuteRequest(program=program, version=version, session_id=session_id or "", request_id=request_id or "",
                                mode=mode or "", max_optimization_wait_ms=int(max_optimization_wait_ms))
    to_struct(inputs, request.inputs)
    return request
