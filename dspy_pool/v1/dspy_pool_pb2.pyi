import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FieldSpec(_message.Message):
    __slots__ = ("name", "type", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class CachePolicy(_message.Message):
    __slots__ = ("mode", "ttl_s")
    MODE_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    mode: str
    ttl_s: float
    def __init__(self, mode: _Optional[str] = ..., ttl_s: _Optional[float] = ...) -> None: ...

class CapturePolicy(_message.Message):
    __slots__ = ("sample_rate", "max_examples", "dataset", "split", "good_score")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    MAX_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    GOOD_SCORE_FIELD_NUMBER: _ClassVar[int]
    sample_rate: float
    max_examples: int
    dataset: str
    split: str
    good_score: float
    def __init__(self, sample_rate: _Optional[float] = ..., max_examples: _Optional[int] = ..., dataset: _Optional[str] = ..., split: _Optional[str] = ..., good_score: _Optional[float] = ...) -> None: ...

class FallbackSpec(_message.Message):
    __slots__ = ("chain", "lm", "lm_api_base", "program", "static_outputs")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    LM_FIELD_NUMBER: _ClassVar[int]
    LM_API_BASE_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    STATIC_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    chain: _containers.RepeatedScalarFieldContainer[str]
    lm: str
    lm_api_base: str
    program: str
    static_outputs: _struct_pb2.Struct
    def __init__(self, chain: _Optional[_Iterable[str]] = ..., lm: _Optional[str] = ..., lm_api_base: _Optional[str] = ..., program: _Optional[str] = ..., static_outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class ProgramSpec(_message.Message):
    __slots__ = ("name", "signature", "input_fields", "output_fields", "module", "instructions", "demos", "state_json", "module_options", "fallback", "description", "warmup_inputs", "lm_options", "cache", "capture")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    DEMOS_FIELD_NUMBER: _ClassVar[int]
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    MODULE_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    WARMUP_INPUTS_FIELD_NUMBER: _ClassVar[int]
    LM_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    name: str
    signature: str
    input_fields: _containers.RepeatedCompositeFieldContainer[FieldSpec]
    output_fields: _containers.RepeatedCompositeFieldContainer[FieldSpec]
    module: str
    instructions: str
    demos: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    state_json: str
    module_options: _struct_pb2.Struct
    fallback: FallbackSpec
    description: str
    warmup_inputs: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    lm_options: _struct_pb2.Struct
    cache: CachePolicy
    capture: CapturePolicy
    def __init__(self, name: _Optional[str] = ..., signature: _Optional[str] = ..., input_fields: _Optional[_Iterable[_Union[FieldSpec, _Mapping]]] = ..., output_fields: _Optional[_Iterable[_Union[FieldSpec, _Mapping]]] = ..., module: _Optional[str] = ..., instructions: _Optional[str] = ..., demos: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., state_json: _Optional[str] = ..., module_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., fallback: _Optional[_Union[FallbackSpec, _Mapping]] = ..., description: _Optional[str] = ..., warmup_inputs: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ..., lm_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., cache: _Optional[_Union[CachePolicy, _Mapping]] = ..., capture: _Optional[_Union[CapturePolicy, _Mapping]] = ...) -> None: ...

class Program(_message.Message):
    __slots__ = ("spec", "version", "content_hash", "created_at", "input_names", "output_names", "created", "meta")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    spec: ProgramSpec
    version: int
    content_hash: str
    created_at: _timestamp_pb2.Timestamp
    input_names: _containers.RepeatedScalarFieldContainer[str]
    output_names: _containers.RepeatedScalarFieldContainer[str]
    created: bool
    meta: ProgramMeta
    def __init__(self, spec: _Optional[_Union[ProgramSpec, _Mapping]] = ..., version: _Optional[int] = ..., content_hash: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., input_names: _Optional[_Iterable[str]] = ..., output_names: _Optional[_Iterable[str]] = ..., created: _Optional[bool] = ..., meta: _Optional[_Union[ProgramMeta, _Mapping]] = ...) -> None: ...

class ProgramMeta(_message.Message):
    __slots__ = ("job_id", "optimizer", "options", "dataset", "dataset_hash", "lm", "base_version", "baseline_score", "optimized_score", "dev_examples", "budget_limited", "metric")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    DATASET_HASH_FIELD_NUMBER: _ClassVar[int]
    LM_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SCORE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZED_SCORE_FIELD_NUMBER: _ClassVar[int]
    DEV_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_LIMITED_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    optimizer: str
    options: _struct_pb2.Struct
    dataset: str
    dataset_hash: str
    lm: str
    base_version: int
    baseline_score: float
    optimized_score: float
    dev_examples: int
    budget_limited: bool
    metric: MetricSpec
    def __init__(self, job_id: _Optional[str] = ..., optimizer: _Optional[str] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., dataset: _Optional[str] = ..., dataset_hash: _Optional[str] = ..., lm: _Optional[str] = ..., base_version: _Optional[int] = ..., baseline_score: _Optional[float] = ..., optimized_score: _Optional[float] = ..., dev_examples: _Optional[int] = ..., budget_limited: _Optional[bool] = ..., metric: _Optional[_Union[MetricSpec, _Mapping]] = ...) -> None: ...

class RegisterProgramRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: ProgramSpec
    def __init__(self, spec: _Optional[_Union[ProgramSpec, _Mapping]] = ...) -> None: ...

class GetProgramRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ListProgramsRequest(_message.Message):
    __slots__ = ("all_versions", "page_size", "page_token")
    ALL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    all_versions: bool
    page_size: int
    page_token: str
    def __init__(self, all_versions: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProgramsResponse(_message.Message):
    __slots__ = ("programs", "next_page_token")
    PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    programs: _containers.RepeatedCompositeFieldContainer[Program]
    next_page_token: str
    def __init__(self, programs: _Optional[_Iterable[_Union[Program, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteProgramRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteProgramResponse(_message.Message):
    __slots__ = ("deleted_versions",)
    DELETED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    deleted_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, deleted_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("program", "version", "inputs", "session_id", "request_id", "mode", "max_optimization_wait_ms")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_OPTIMIZATION_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    program: str
    version: int
    inputs: _struct_pb2.Struct
    session_id: str
    request_id: str
    mode: str
    max_optimization_wait_ms: int
    def __init__(self, program: _Optional[str] = ..., version: _Optional[int] = ..., inputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., session_id: _Optional[str] = ..., request_id: _Optional[str] = ..., mode: _Optional[str] = ..., max_optimization_wait_ms: _Optional[int] = ...) -> None: ...

class WorkerRef(_message.Message):
    __slots__ = ("id", "pid")
    ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    id: int
    pid: int
    def __init__(self, id: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_wait_ms", "execution_ms", "total_ms")
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_wait_ms: float
    execution_ms: float
    total_ms: float
    def __init__(self, queue_wait_ms: _Optional[float] = ..., execution_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("outputs", "program", "program_version", "request_id", "worker", "timings", "usage", "served_by", "fallback_reason", "session_id", "session_started", "session_lost", "cache_level", "execution_mode", "evaluation")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_STARTED_FIELD_NUMBER: _ClassVar[int]
    SESSION_LOST_FIELD_NUMBER: _ClassVar[int]
    CACHE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_MODE_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    outputs: _struct_pb2.Struct
    program: str
    program_version: int
    request_id: str
    worker: WorkerRef
    timings: Timings
    usage: Usage
    served_by: str
    fallback_reason: str
    session_id: str
    session_started: bool
    session_lost: str
    cache_level: str
    execution_mode: str
    evaluation: EvaluationArm
    def __init__(self, outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., program: _Optional[str] = ..., program_version: _Optional[int] = ..., request_id: _Optional[str] = ..., worker: _Optional[_Union[WorkerRef, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., served_by: _Optional[str] = ..., fallback_reason: _Optional[str] = ..., session_id: _Optional[str] = ..., session_started: _Optional[bool] = ..., session_lost: _Optional[str] = ..., cache_level: _Optional[str] = ..., execution_mode: _Optional[str] = ..., evaluation: _Optional[_Union[EvaluationArm, _Mapping]] = ...) -> None: ...

class EvaluationArm(_message.Message):
    __slots__ = ("outputs", "version", "latency_ms", "score", "error")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    outputs: _struct_pb2.Struct
    version: int
    latency_ms: float
    score: float
    error: str
    def __init__(self, outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., version: _Optional[int] = ..., latency_ms: _Optional[float] = ..., score: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class Example(_message.Message):
    __slots__ = ("inputs", "outputs")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _struct_pb2.Struct
    outputs: _struct_pb2.Struct
    def __init__(self, inputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class AddExamplesRequest(_message.Message):
    __slots__ = ("dataset", "split", "examples")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    split: str
    examples: _containers.RepeatedCompositeFieldContainer[Example]
    def __init__(self, dataset: _Optional[str] = ..., split: _Optional[str] = ..., examples: _Optional[_Iterable[_Union[Example, _Mapping]]] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "counts", "content_hash", "updated_at")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    counts: _containers.ScalarMap[str, int]
    content_hash: str
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., counts: _Optional[_Mapping[str, int]] = ..., content_hash: _Optional[str] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class MetricSpec(_message.Message):
    __slots__ = ("kind", "fields", "options")
    KIND_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    fields: _containers.RepeatedScalarFieldContainer[str]
    options: _struct_pb2.Struct
    def __init__(self, kind: _Optional[str] = ..., fields: _Optional[_Iterable[str]] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class OptimizationBudget(_message.Message):
    __slots__ = ("max_lm_calls", "max_seconds")
    MAX_LM_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    max_lm_calls: int
    max_seconds: float
    def __init__(self, max_lm_calls: _Optional[int] = ..., max_seconds: _Optional[float] = ...) -> None: ...

class StartOptimizationRequest(_message.Message):
    __slots__ = ("program", "base_version", "dataset", "optimizer", "options", "metric", "budget", "priority", "seed")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    program: str
    base_version: int
    dataset: str
    optimizer: str
    options: _struct_pb2.Struct
    metric: MetricSpec
    budget: OptimizationBudget
    priority: int
    seed: int
    def __init__(self, program: _Optional[str] = ..., base_version: _Optional[int] = ..., dataset: _Optional[str] = ..., optimizer: _Optional[str] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., metric: _Optional[_Union[MetricSpec, _Mapping]] = ..., budget: _Optional[_Union[OptimizationBudget, _Mapping]] = ..., priority: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class OptimizationProgress(_message.Message):
    __slots__ = ("phase", "trials_done", "trials_planned", "best_score", "has_best_score", "lm_calls", "elapsed_s")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    TRIALS_DONE_FIELD_NUMBER: _ClassVar[int]
    TRIALS_PLANNED_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    LM_CALLS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    phase: str
    trials_done: int
    trials_planned: int
    best_score: float
    has_best_score: bool
    lm_calls: int
    elapsed_s: float
    def __init__(self, phase: _Optional[str] = ..., trials_done: _Optional[int] = ..., trials_planned: _Optional[int] = ..., best_score: _Optional[float] = ..., has_best_score: _Optional[bool] = ..., lm_calls: _Optional[int] = ..., elapsed_s: _Optional[float] = ...) -> None: ...

class OptimizationResult(_message.Message):
    __slots__ = ("version", "baseline_score", "optimized_score", "dev_examples", "lm_calls", "budget_limited", "elapsed_s", "promoted")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SCORE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZED_SCORE_FIELD_NUMBER: _ClassVar[int]
    DEV_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LM_CALLS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_LIMITED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    PROMOTED_FIELD_NUMBER: _ClassVar[int]
    version: int
    baseline_score: float
    optimized_score: float
    dev_examples: int
    lm_calls: int
    budget_limited: bool
    elapsed_s: float
    promoted: bool
    def __init__(self, version: _Optional[int] = ..., baseline_score: _Optional[float] = ..., optimized_score: _Optional[float] = ..., dev_examples: _Optional[int] = ..., lm_calls: _Optional[int] = ..., budget_limited: _Optional[bool] = ..., elapsed_s: _Optional[float] = ..., promoted: _Optional[bool] = ...) -> None: ...

class OptimizationJob(_message.Message):
    __slots__ = ("job_id", "state", "request", "progress", "result", "error", "created_at", "updated_at", "reused", "dataset_hash", "base_version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REUSED_FIELD_NUMBER: _ClassVar[int]
    DATASET_HASH_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    request: StartOptimizationRequest
    progress: OptimizationProgress
    result: OptimizationResult
    error: str
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    reused: bool
    dataset_hash: str
    base_version: int
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., request: _Optional[_Union[StartOptimizationRequest, _Mapping]] = ..., progress: _Optional[_Union[OptimizationProgress, _Mapping]] = ..., result: _Optional[_Union[OptimizationResult, _Mapping]] = ..., error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reused: _Optional[bool] = ..., dataset_hash: _Optional[str] = ..., base_version: _Optional[int] = ...) -> None: ...

class GetOptimizationRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListOptimizationsRequest(_message.Message):
    __slots__ = ("program", "page_size", "page_token")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    program: str
    page_size: int
    page_token: str
    def __init__(self, program: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOptimizationsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[OptimizationJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[OptimizationJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelOptimizationRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ExecutionPolicy(_message.Message):
    __slots__ = ("program", "mode", "base_version", "optimized_version", "hybrid_percent", "sticky_sessions", "promotion", "min_improvement", "min_dev_examples", "auto_optimize")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZED_VERSION_FIELD_NUMBER: _ClassVar[int]
    HYBRID_PERCENT_FIELD_NUMBER: _ClassVar[int]
    STICKY_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    PROMOTION_FIELD_NUMBER: _ClassVar[int]
    MIN_IMPROVEMENT_FIELD_NUMBER: _ClassVar[int]
    MIN_DEV_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    AUTO_OPTIMIZE_FIELD_NUMBER: _ClassVar[int]
    program: str
    mode: str
    base_version: int
    optimized_version: int
    hybrid_percent: float
    sticky_sessions: bool
    promotion: str
    min_improvement: float
    min_dev_examples: int
    auto_optimize: AutoOptimize
    def __init__(self, program: _Optional[str] = ..., mode: _Optional[str] = ..., base_version: _Optional[int] = ..., optimized_version: _Optional[int] = ..., hybrid_percent: _Optional[float] = ..., sticky_sessions: _Optional[bool] = ..., promotion: _Optional[str] = ..., min_improvement: _Optional[float] = ..., min_dev_examples: _Optional[int] = ..., auto_optimize: _Optional[_Union[AutoOptimize, _Mapping]] = ...) -> None: ...

class AutoOptimize(_message.Message):
    __slots__ = ("job", "after_feedback_examples", "on_score_drop", "on_error_rate", "min_interval_s")
    JOB_FIELD_NUMBER: _ClassVar[int]
    AFTER_FEEDBACK_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ON_SCORE_DROP_FIELD_NUMBER: _ClassVar[int]
    ON_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    MIN_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    job: StartOptimizationRequest
    after_feedback_examples: int
    on_score_drop: float
    on_error_rate: float
    min_interval_s: float
    def __init__(self, job: _Optional[_Union[StartOptimizationRequest, _Mapping]] = ..., after_feedback_examples: _Optional[int] = ..., on_score_drop: _Optional[float] = ..., on_error_rate: _Optional[float] = ..., min_interval_s: _Optional[float] = ...) -> None: ...

class RecordFeedbackRequest(_message.Message):
    __slots__ = ("request_id", "score", "has_score", "expected_outputs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    HAS_SCORE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    score: float
    has_score: bool
    expected_outputs: _struct_pb2.Struct
    def __init__(self, request_id: _Optional[str] = ..., score: _Optional[float] = ..., has_score: _Optional[bool] = ..., expected_outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class RecordFeedbackResponse(_message.Message):
    __slots__ = ("example_added", "dataset", "program", "version")
    EXAMPLE_ADDED_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    example_added: bool
    dataset: str
    program: str
    version: int
    def __init__(self, example_added: _Optional[bool] = ..., dataset: _Optional[str] = ..., program: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class SetExecutionPolicyRequest(_message.Message):
    __slots__ = ("policy",)
    POLICY_FIELD_NUMBER: _ClassVar[int]
    policy: ExecutionPolicy
    def __init__(self, policy: _Optional[_Union[ExecutionPolicy, _Mapping]] = ...) -> None: ...

class GetExecutionPolicyRequest(_message.Message):
    __slots__ = ("program",)
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    program: str
    def __init__(self, program: _Optional[str] = ...) -> None: ...

class GetProgramStatsRequest(_message.Message):
    __slots__ = ("program",)
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    program: str
    def __init__(self, program: _Optional[str] = ...) -> None: ...

class ArmStats(_message.Message):
    __slots__ = ("version", "arm", "calls", "errors", "latency_p50_ms", "latency_p95_ms", "error_rate", "feedback_count", "feedback_score_mean")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_MS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_COUNT_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_SCORE_MEAN_FIELD_NUMBER: _ClassVar[int]
    version: int
    arm: str
    calls: int
    errors: int
    latency_p50_ms: float
    latency_p95_ms: float
    error_rate: float
    feedback_count: int
    feedback_score_mean: float
    def __init__(self, version: _Optional[int] = ..., arm: _Optional[str] = ..., calls: _Optional[int] = ..., errors: _Optional[int] = ..., latency_p50_ms: _Optional[float] = ..., latency_p95_ms: _Optional[float] = ..., error_rate: _Optional[float] = ..., feedback_count: _Optional[int] = ..., feedback_score_mean: _Optional[float] = ...) -> None: ...

class ProgramStats(_message.Message):
    __slots__ = ("program", "arms", "policy")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    program: str
    arms: _containers.RepeatedCompositeFieldContainer[ArmStats]
    policy: ExecutionPolicy
    def __init__(self, program: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[ArmStats, _Mapping]]] = ..., policy: _Optional[_Union[ExecutionPolicy, _Mapping]] = ...) -> None: ...

class Turn(_message.Message):
    __slots__ = ("inputs", "outputs", "program")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    inputs: _struct_pb2.Struct
    outputs: _struct_pb2.Struct
    program: str
    def __init__(self, inputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., program: _Optional[str] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "turns", "created_at", "last_used_at", "preferred_worker", "turns_left_out")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_WORKER_FIELD_NUMBER: _ClassVar[int]
    TURNS_LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    turns: _containers.RepeatedCompositeFieldContainer[Turn]
    created_at: _timestamp_pb2.Timestamp
    last_used_at: _timestamp_pb2.Timestamp
    preferred_worker: int
    turns_left_out: int
    def __init__(self, session_id: _Optional[str] = ..., turns: _Optional[_Iterable[_Union[Turn, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., preferred_worker: _Optional[int] = ..., turns_left_out: _Optional[int] = ...) -> None: ...

class GetSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("turns",)
    TURNS_FIELD_NUMBER: _ClassVar[int]
    turns: int
    def __init__(self, turns: _Optional[int] = ...) -> None: ...

class GetPoolStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchPoolStatusRequest(_message.Message):
    __slots__ = ("interval_s",)
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    interval_s: float
    def __init__(self, interval_s: _Optional[float] = ...) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("id", "pid", "state", "in_flight", "served", "failed", "rss_bytes", "uptime_s", "front")
    ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    FRONT_FIELD_NUMBER: _ClassVar[int]
    id: int
    pid: int
    state: str
    in_flight: int
    served: int
    failed: int
    rss_bytes: int
    uptime_s: float
    front: int
    def __init__(self, id: _Optional[int] = ..., pid: _Optional[int] = ..., state: _Optional[str] = ..., in_flight: _Optional[int] = ..., served: _Optional[int] = ..., failed: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., uptime_s: _Optional[float] = ..., front: _Optional[int] = ...) -> None: ...

class PoolConfig(_message.Message):
    __slots__ = ("workers", "min_workers", "max_workers", "worker_concurrency", "max_queue", "default_deadline_s", "lm", "module_kinds")
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    MIN_WORKERS_FIELD_NUMBER: _ClassVar[int]
    MAX_WORKERS_FIELD_NUMBER: _ClassVar[int]
    WORKER_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    LM_FIELD_NUMBER: _ClassVar[int]
    MODULE_KINDS_FIELD_NUMBER: _ClassVar[int]
    workers: int
    min_workers: int
    max_workers: int
    worker_concurrency: int
    max_queue: int
    default_deadline_s: float
    lm: str
    module_kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, workers: _Optional[int] = ..., min_workers: _Optional[int] = ..., max_workers: _Optional[int] = ..., worker_concurrency: _Optional[int] = ..., max_queue: _Optional[int] = ..., default_deadline_s: _Optional[float] = ..., lm: _Optional[str] = ..., module_kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class BreakerStatus(_message.Message):
    __slots__ = ("program", "lm_endpoint", "state", "failure_rate", "calls_in_window", "opened_total", "half_opened_total", "closed_total")
    PROGRAM_FIELD_NUMBER: _ClassVar[int]
    LM_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_RATE_FIELD_NUMBER: _ClassVar[int]
    CALLS_IN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    OPENED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    HALF_OPENED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CLOSED_TOTAL_FIELD_NUMBER: _ClassVar[int]
    program: str
    lm_endpoint: str
    state: str
    failure_rate: float
    calls_in_window: int
    opened_total: int
    half_opened_total: int
    closed_total: int
    def __init__(self, program: _Optional[str] = ..., lm_endpoint: _Optional[str] = ..., state: _Optional[str] = ..., failure_rate: _Optional[float] = ..., calls_in_window: _Optional[int] = ..., opened_total: _Optional[int] = ..., half_opened_total: _Optional[int] = ..., closed_total: _Optional[int] = ...) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("serving", "workers", "queue_depth", "in_flight", "completed", "failed", "rejected", "worker_restarts", "sessions", "programs", "config", "uptime_s", "breakers", "retries", "fallbacks_served", "recycled_workers", "scale_events", "queue_wait_p95_ms", "health_score", "calls_per_s", "workers_warming", "warmup_calls", "warmup_failures", "worker_cpu_percent", "quarantined_programs", "sessions_evicted", "sessions_refused", "cache_levels", "fronts", "state_store_problem")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    WORKER_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    BREAKERS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_SERVED_FIELD_NUMBER: _ClassVar[int]
    RECYCLED_WORKERS_FIELD_NUMBER: _ClassVar[int]
    SCALE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_P95_MS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_SCORE_FIELD_NUMBER: _ClassVar[int]
    CALLS_PER_S_FIELD_NUMBER: _ClassVar[int]
    WORKERS_WARMING_FIELD_NUMBER: _ClassVar[int]
    WARMUP_CALLS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FAILURES_FIELD_NUMBER: _ClassVar[int]
    WORKER_CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_PROGRAMS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_EVICTED_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_REFUSED_FIELD_NUMBER: _ClassVar[int]
    CACHE_LEVELS_FIELD_NUMBER: _ClassVar[int]
    FRONTS_FIELD_NUMBER: _ClassVar[int]
    STATE_STORE_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    queue_depth: int
    in_flight: int
    completed: int
    failed: int
    rejected: int
    worker_restarts: int
    sessions: int
    programs: int
    config: PoolConfig
    uptime_s: float
    breakers: _containers.RepeatedCompositeFieldContainer[BreakerStatus]
    retries: int
    fallbacks_served: int
    recycled_workers: int
    scale_events: int
    queue_wait_p95_ms: float
    health_score: float
    calls_per_s: float
    workers_warming: int
    warmup_calls: int
    warmup_failures: int
    worker_cpu_percent: float
    quarantined_programs: _containers.RepeatedScalarFieldContainer[str]
    sessions_evicted: int
    sessions_refused: int
    cache_levels: _containers.RepeatedCompositeFieldContainer[CacheLevelStatus]
    fronts: _containers.RepeatedCompositeFieldContainer[FrontStatus]
    state_store_problem: str
    def __init__(self, serving: _Optional[bool] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., queue_depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., completed: _Optional[int] = ..., failed: _Optional[int] = ..., rejected: _Optional[int] = ..., worker_restarts: _Optional[int] = ..., sessions: _Optional[int] = ..., programs: _Optional[int] = ..., config: _Optional[_Union[PoolConfig, _Mapping]] = ..., uptime_s: _Optional[float] = ..., breakers: _Optional[_Iterable[_Union[BreakerStatus, _Mapping]]] = ..., retries: _Optional[int] = ..., fallbacks_served: _Optional[int] = ..., recycled_workers: _Optional[int] = ..., scale_events: _Optional[int] = ..., queue_wait_p95_ms: _Optional[float] = ..., health_score: _Optional[float] = ..., calls_per_s: _Optional[float] = ..., workers_warming: _Optional[int] = ..., warmup_calls: _Optional[int] = ..., warmup_failures: _Optional[int] = ..., worker_cpu_percent: _Optional[float] = ..., quarantined_programs: _Optional[_Iterable[str]] = ..., sessions_evicted: _Optional[int] = ..., sessions_refused: _Optional[int] = ..., cache_levels: _Optional[_Iterable[_Union[CacheLevelStatus, _Mapping]]] = ..., fronts: _Optional[_Iterable[_Union[FrontStatus, _Mapping]]] = ..., state_store_problem: _Optional[str] = ...) -> None: ...

class FrontStatus(_message.Message):
    __slots__ = ("index", "pid", "serving", "workers", "in_flight", "completed", "answered")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    index: int
    pid: int
    serving: bool
    workers: int
    in_flight: int
    completed: int
    answered: bool
    def __init__(self, index: _Optional[int] = ..., pid: _Optional[int] = ..., serving: _Optional[bool] = ..., workers: _Optional[int] = ..., in_flight: _Optional[int] = ..., completed: _Optional[int] = ..., answered: _Optional[bool] = ...) -> None: ...

class CacheLevelStatus(_message.Message):
    __slots__ = ("level", "hits", "misses", "entries", "bytes", "evictions")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    level: str
    hits: int
    misses: int
    entries: int
    bytes: int
    evictions: int
    def __init__(self, level: _Optional[str] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ..., evictions: _Optional[int] = ...) -> None: ...
