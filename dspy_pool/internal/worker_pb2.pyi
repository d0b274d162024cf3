from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ZygoteConfig(_message.Message):
    __slots__ = ("lm", "lm_api_base", "lm_api_key", "lm_num_retries", "lm_cache_entries", "lm_timeout_s", "worker_concurrency", "program_modules", "max_frame_bytes", "program_cache_entries", "lm_max_tokens", "lm_temperature", "lm_call_options", "lm_engine")
    LM_FIELD_NUMBER: _ClassVar[int]
    LM_API_BASE_FIELD_NUMBER: _ClassVar[int]
    LM_API_KEY_FIELD_NUMBER: _ClassVar[int]
    LM_NUM_RETRIES_FIELD_NUMBER: _ClassVar[int]
    LM_CACHE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LM_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    WORKER_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_MODULES_FIELD_NUMBER: _ClassVar[int]
    MAX_FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROGRAM_CACHE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    LM_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LM_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    LM_CALL_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    LM_ENGINE_FIELD_NUMBER: _ClassVar[int]
    lm: str
    lm_api_base: str
    lm_api_key: str
    lm_num_retries: int
    lm_cache_entries: int
    lm_timeout_s: float
    worker_concurrency: int
    program_modules: _containers.RepeatedScalarFieldContainer[str]
    max_frame_bytes: int
    program_cache_entries: int
    lm_max_tokens: int
    lm_temperature: float
    lm_call_options: _containers.RepeatedScalarFieldContainer[str]
    lm_engine: str
    def __init__(self, lm: _Optional[str] = ..., lm_api_base: _Optional[str] = ..., lm_api_key: _Optional[str] = ..., lm_num_retries: _Optional[int] = ..., lm_cache_entries: _Optional[int] = ..., lm_timeout_s: _Optional[float] = ..., worker_concurrency: _Optional[int] = ..., program_modules: _Optional[_Iterable[str]] = ..., max_frame_bytes: _Optional[int] = ..., program_cache_entries: _Optional[int] = ..., lm_max_tokens: _Optional[int] = ..., lm_temperature: _Optional[float] = ..., lm_call_options: _Optional[_Iterable[str]] = ..., lm_engine: _Optional[str] = ...) -> None: ...

class ZygoteReady(_message.Message):
    __slots__ = ("pid", "import_s", "module_kinds", "metric_kinds")
    PID_FIELD_NUMBER: _ClassVar[int]
    IMPORT_S_FIELD_NUMBER: _ClassVar[int]
    MODULE_KINDS_FIELD_NUMBER: _ClassVar[int]
    METRIC_KINDS_FIELD_NUMBER: _ClassVar[int]
    pid: int
    import_s: float
    module_kinds: _containers.RepeatedScalarFieldContainer[str]
    metric_kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, pid: _Optional[int] = ..., import_s: _Optional[float] = ..., module_kinds: _Optional[_Iterable[str]] = ..., metric_kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class SpawnWorker(_message.Message):
    __slots__ = ("worker_id", "role")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    role: str
    def __init__(self, worker_id: _Optional[int] = ..., role: _Optional[str] = ...) -> None: ...

class WorkerSpawned(_message.Message):
    __slots__ = ("worker_id", "pid")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    pid: int
    def __init__(self, worker_id: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class WorkerExited(_message.Message):
    __slots__ = ("worker_id", "pid", "exit_code")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    pid: int
    exit_code: int
    def __init__(self, worker_id: _Optional[int] = ..., pid: _Optional[int] = ..., exit_code: _Optional[int] = ...) -> None: ...

class ZygoteError(_message.Message):
    __slots__ = ("message",)
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    message: str
    def __init__(self, message: _Optional[str] = ...) -> None: ...

class WorkerHello(_message.Message):
    __slots__ = ("worker_id", "pid", "boot_ms")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    BOOT_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: int
    pid: int
    boot_ms: float
    def __init__(self, worker_id: _Optional[int] = ..., pid: _Optional[int] = ..., boot_ms: _Optional[float] = ...) -> None: ...

class WorkRequest(_message.Message):
    __slots__ = ("program_key", "spec", "inputs", "history", "has_history", "timeout_s", "request_id", "validate_only", "lm_model", "lm_api_base")
    PROGRAM_KEY_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    HAS_HISTORY_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALIDATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    LM_MODEL_FIELD_NUMBER: _ClassVar[int]
    LM_API_BASE_FIELD_NUMBER: _ClassVar[int]
    program_key: str
    spec: bytes
    inputs: _struct_pb2.Struct
    history: _struct_pb2.ListValue
    has_history: bool
    timeout_s: float
    request_id: str
    validate_only: bool
    lm_model: str
    lm_api_base: str
    def __init__(self, program_key: _Optional[str] = ..., spec: _Optional[bytes] = ..., inputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., history: _Optional[_Union[_struct_pb2.ListValue, _Mapping]] = ..., has_history: _Optional[bool] = ..., timeout_s: _Optional[float] = ..., request_id: _Optional[str] = ..., validate_only: _Optional[bool] = ..., lm_model: _Optional[str] = ..., lm_api_base: _Optional[str] = ...) -> None: ...

class WorkReply(_message.Message):
    __slots__ = ("outputs", "execution_ms", "prompt_tokens", "completion_tokens", "total_tokens", "input_names", "output_names", "takes_history")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    TAKES_HISTORY_FIELD_NUMBER: _ClassVar[int]
    outputs: _struct_pb2.Struct
    execution_ms: float
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    input_names: _containers.RepeatedScalarFieldContainer[str]
    output_names: _containers.RepeatedScalarFieldContainer[str]
    takes_history: bool
    def __init__(self, outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., execution_ms: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., input_names: _Optional[_Iterable[str]] = ..., output_names: _Optional[_Iterable[str]] = ..., takes_history: _Optional[bool] = ...) -> None: ...

class WorkError(_message.Message):
    __slots__ = ("kind", "type", "message", "traceback")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    kind: str
    type: str
    message: str
    traceback: str
    def __init__(self, kind: _Optional[str] = ..., type: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ...) -> None: ...

class WorkerStats(_message.Message):
    __slots__ = ("rss_bytes", "in_flight", "served", "programs_loaded")
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    PROGRAMS_LOADED_FIELD_NUMBER: _ClassVar[int]
    rss_bytes: int
    in_flight: int
    served: int
    programs_loaded: int
    def __init__(self, rss_bytes: _Optional[int] = ..., in_flight: _Optional[int] = ..., served: _Optional[int] = ..., programs_loaded: _Optional[int] = ...) -> None: ...

class OptimizeExample(_message.Message):
    __slots__ = ("inputs", "outputs")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _struct_pb2.Struct
    outputs: _struct_pb2.Struct
    def __init__(self, inputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., outputs: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class OptimizeWork(_message.Message):
    __slots__ = ("spec", "train", "dev", "optimizer", "options", "metric_kind", "metric_fields", "metric_options", "max_lm_calls", "max_seconds", "seed", "num_threads", "allowed_lms")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    DEV_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    METRIC_KIND_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELDS_FIELD_NUMBER: _ClassVar[int]
    METRIC_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_LM_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_THREADS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_LMS_FIELD_NUMBER: _ClassVar[int]
    spec: bytes
    train: _containers.RepeatedCompositeFieldContainer[OptimizeExample]
    dev: _containers.RepeatedCompositeFieldContainer[OptimizeExample]
    optimizer: str
    options: _struct_pb2.Struct
    metric_kind: str
    metric_fields: _containers.RepeatedScalarFieldContainer[str]
    metric_options: _struct_pb2.Struct
    max_lm_calls: int
    max_seconds: float
    seed: int
    num_threads: int
    allowed_lms: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, spec: _Optional[bytes] = ..., train: _Optional[_Iterable[_Union[OptimizeExample, _Mapping]]] = ..., dev: _Optional[_Iterable[_Union[OptimizeExample, _Mapping]]] = ..., optimizer: _Optional[str] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., metric_kind: _Optional[str] = ..., metric_fields: _Optional[_Iterable[str]] = ..., metric_options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., max_lm_calls: _Optional[int] = ..., max_seconds: _Optional[float] = ..., seed: _Optional[int] = ..., num_threads: _Optional[int] = ..., allowed_lms: _Optional[_Iterable[str]] = ...) -> None: ...

class OptimizeProgress(_message.Message):
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

class OptimizeReply(_message.Message):
    __slots__ = ("state_json", "baseline_score", "optimized_score", "dev_examples", "lm_calls", "budget_limited", "elapsed_s")
    STATE_JSON_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SCORE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZED_SCORE_FIELD_NUMBER: _ClassVar[int]
    DEV_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LM_CALLS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_LIMITED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_S_FIELD_NUMBER: _ClassVar[int]
    state_json: str
    baseline_score: float
    optimized_score: float
    dev_examples: int
    lm_calls: int
    budget_limited: bool
    elapsed_s: float
    def __init__(self, state_json: _Optional[str] = ..., baseline_score: _Optional[float] = ..., optimized_score: _Optional[float] = ..., dev_examples: _Optional[int] = ..., lm_calls: _Optional[int] = ..., budget_limited: _Optional[bool] = ..., elapsed_s: _Optional[float] = ...) -> None: ...
