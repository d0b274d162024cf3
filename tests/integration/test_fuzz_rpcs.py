"""Hostile and malformed messages to every DSPyPool RPC: a documented status, a useful message, no key, still up.

One server per module (the sim LM, an operator API key set, one optimizer
worker so the optimization RPCs get past "optimization is off"). For every
method of `dspy_pool.v1.DSPyPool`, requests are drawn from strategies built
from the protobuf descriptors (any field, any value: huge and unicode strings,
int32/int64 extremes, NaN and infinities, deep and wide Structs, Values with no
kind) mixed with known names so that some reach past the first check, and with
hostile strings (module and import paths, URLs of a listener the test owns,
format-string probes). Raw bytes go to every method path too. Each answer must
be OK or a documented code (never UNKNOWN; INTERNAL only for an LM error kind),
carry a non-empty message, never hold the API key, come back within the call's
deadline, and the server must still answer GetPoolStatus afterwards.

Two tripwires run for the whole module: a TCP listener on 127.0.0.1 whose
address is in the hostile strings (nothing may connect: the server never goes
where a client points), and this very module as a hostile import path (if a
server process imports it, it leaves a file behind: clients never make the
server run their code).

    FUZZ_EXAMPLES=500 FUZZ_RANDOM=1 FUZZ_REPORT=1 python -m pytest -q -s -n0 tests/integration/test_fuzz_rpcs.py   # hunt
    (FUZZ_RANDOM: new draws each run instead of the same ones; FUZZ_REPORT: the codes each method answered)
"""

import os
import pathlib
import sys
import tempfile

_SENTINEL_ENV = "DSPY_POOL_FUZZ_SENTINEL_DIR"
if os.environ.get(_SENTINEL_ENV) and "pytest" not in sys.modules:
    # Imported by a server process (a worker or the zygote), never by the test run: a client's import path was followed.
    pathlib.Path(os.environ[_SENTINEL_ENV], f"imported-{os.getpid()}").touch()


def pwn(*args, **kwargs):
    """A client-named callable: if anything calls it, it says so."""
    if os.environ.get(_SENTINEL_ENV):
        pathlib.Path(os.environ[_SENTINEL_ENV], f"called-{os.getpid()}").touch()
    return lambda *a, **k: 1.0


class Pwn:  # a client-named type annotation
    def __init_subclass__(cls, **kwargs):
        pwn()


import asyncio  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import grpc  # noqa: E402
import pytest  # noqa: E402
import pytest_asyncio  # noqa: E402
from google.protobuf import descriptor as _descriptor  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from structlog.testing import capture_logs  # noqa: E402

from dspy_pool import structs as structs_module  # noqa: E402
from dspy_pool.v1 import dspy_pool_pb2 as pb  # noqa: E402

from .harness import eventually, register, running_app  # noqa: E402

SECRET = "sk-fuzz-SECRETkeyDoNotLeak-7f3a9c"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))
CALL_TIMEOUT_S = 5.0
SLACK_S = 3.0  # a call may end this long after its deadline on a loaded 2-core machine, no longer
SERVICE = pb.DESCRIPTOR.services_by_name["DSPyPool"]
METHODS = list(SERVICE.methods)
LM_KINDS = {"LM_ERROR", "LM_MALFORMED_OUTPUT"}  # the kinds whose status is INTERNAL by the error table
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.FAILED_PRECONDITION,  # errors.MEANINGS: optimization off, a quarantined program, the LM refused the key
}

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


# -- tripwires ---------------------------------------------------------------------

SENTINEL_DIR = tempfile.mkdtemp(prefix="dspy-pool-fuzz-")
os.environ[_SENTINEL_ENV] = SENTINEL_DIR  # inherited by the server's zygote and workers


class _Listener:
    """A TCP port on 127.0.0.1 that counts who connects: nobody should."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(0.5)
            try:
                self.connections.append(conn.recv(4096) or b"(connected)")
            except OSError:
                self.connections.append(b"(connected)")
            finally:
                conn.close()


LISTENER = _Listener()
TRAP = f"127.0.0.1:{LISTENER.port}"
TRAP_URL = f"http://{TRAP}/v1"
ME = __name__ if __name__.startswith("tests.") else "tests.integration.test_fuzz_rpcs"


# -- strategies ----------------------------------------------------------------------

# Names the module's server knows, filled in by the fixture: drawn by index, so they are read when drawn.
KNOWN: dict[str, list[str]] = {"program": ["qa"], "dataset": ["ds"], "session": ["s1"], "job": [], "request": []}


def _known(kind: str) -> st.SearchStrategy[str]:
    return st.integers(0, 10**6).map(lambda i: KNOWN[kind][i % len(KNOWN[kind])] if KNOWN[kind] else "")


HOSTILE = [
    # import paths and code: the server must never import or call what a client names
    ME, f"{ME}:pwn", f"{ME}.pwn", f"{ME}.Pwn", "os.system", "os:system", "builtins.eval", "subprocess.Popen",
    f"__import__('{ME}')", "dspy.ReAct", "dspy.ProgramOfThought", "dspy.PythonInterpreter", "dspy_pool.cli",
    "tests.fixtures.chaos_kinds", "../../etc/passwd", "/etc/passwd", "file:///etc/passwd",
    # addresses: the server must never reach where a client points
    TRAP_URL, TRAP, f"openai/gpt-4o-mini@{TRAP_URL}", f"openai/{TRAP_URL}", f"hosted_vllm/{TRAP_URL}",
    # probes for a message built with str.format / %-formatting over the config
    "{api_key}", "{0.__class__.__init__.__globals__}", "{config.lm.api_key}", "%(api_key)s", "${DSPY_POOL_LM_API_KEY}",
    # odd text
    "", " ", "\x00", "\x00" * 64, "\n\r\t", "é", "\u202e\u2066", "\U0001f600" * 50, "\ud7ff\ue000\uffff", "'; DROP TABLE programs; --",
    "qa\x00", "qa ", "QA", "-", ".", "..", "a" * 128, "a" * 129,
    # plausible values of enum-like strings
    "predict", "chain_of_thought", "train", "dev", "traditional", "optimized", "hybrid", "evaluation", "manual", "auto",
    "labeled_few_shot", "bootstrap_few_shot", "mipro_v2", "gepa", "copro", "simba", "exact_match", "f1", "contains",
    "numeric_close", "llm_judge", "cache", "lm", "program", "static", "fail", "serve", "fallback", "off",
    "question -> answer", "question", "answer", "history", "a: int -> b: list[str]", f"q: {ME}.Pwn -> a",
    f"q -> a: __import__('{ME}').Pwn", "q -> a: os.system", "str", "int", "list[str]", f"{ME}.Pwn", "typing.Any",
]
HUGE_LENGTHS = [1_000, 10_000, 70_000, 1_100_000]


def _huge() -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(HUGE_LENGTHS), st.sampled_from(["x", "é", "\U0001f600", "q -> a, ", "{}"])).map(
        lambda t: (t[1] * t[0])[: t[0]])


strings = st.one_of(
    st.text(max_size=24), st.sampled_from(HOSTILE), _known("program"), _known("dataset"), _known("session"), _known("job"),
    _known("request"), _huge(),
)
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e308, math.nan, math.inf, -math.inf])
int32s = st.integers(-2**31, 2**31 - 1) | st.sampled_from([0, 1, 2, -1, 2**31 - 1, -2**31, 100, 10**6])
int64s = st.integers(-2**63, 2**63 - 1) | st.sampled_from([0, -1, 2**63 - 1, -2**63])

_struct_keys = st.text(max_size=10) | st.sampled_from(HOSTILE[:40]) | st.sampled_from(
    ["question", "answer", "history", "api_base", "api_key", "model", "base_url", "headers", "callbacks", "lm", "k", "auto",
     "reflection_lm", "rubric", "temperature", "max_tokens", "tolerance", "__class__", "module", "metric"])
_leaves = (st.none() | st.booleans() | floats | st.integers(-2**60, 2**60) | strings)
json_values = st.recursive(_leaves, lambda children: st.lists(children, max_size=3) | st.dictionaries(_struct_keys, children, max_size=3),
                           max_leaves=10)


def _nested(depth: int, leaf=1):
    value = leaf
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


@st.composite
def structs(draw) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    shape = draw(st.sampled_from(["plain", "plain", "plain", "unset", "deep", "wide"]))
    if shape == "deep":
        message.update({"k": _nested(draw(st.sampled_from([10, 31, 33, 60, 95])))})
    elif shape == "wide":
        message.update({f"k{i}": i for i in range(draw(st.sampled_from([1000, 20_000])))})
    else:
        message.update(draw(st.dictionaries(_struct_keys, json_values, max_size=4)))
        if shape == "unset":  # a Value with no kind: what a client in another language can send
            message.fields[draw(_struct_keys)]  # noqa: B018 (reading a map entry creates it, unset)
    return message


_FD = _descriptor.FieldDescriptor
_SCALARS = {
    _FD.TYPE_STRING: strings, _FD.TYPE_BOOL: st.booleans(), _FD.TYPE_DOUBLE: floats, _FD.TYPE_FLOAT: floats,
    _FD.TYPE_INT32: int32s, _FD.TYPE_SINT32: int32s, _FD.TYPE_SFIXED32: int32s,
    _FD.TYPE_INT64: int64s, _FD.TYPE_SINT64: int64s, _FD.TYPE_SFIXED64: int64s,
    _FD.TYPE_UINT32: st.integers(0, 2**32 - 1), _FD.TYPE_FIXED32: st.integers(0, 2**32 - 1),
    _FD.TYPE_UINT64: st.integers(0, 2**64 - 1), _FD.TYPE_FIXED64: st.integers(0, 2**64 - 1),
    _FD.TYPE_BYTES: st.binary(max_size=64),
}


def _field_strategy(field: _descriptor.FieldDescriptor, depth: int, biased: bool = False):
    if biased:
        bias = _bias(field)
        if bias is not None:  # mostly a value that gets past the first check, sometimes anything
            return st.one_of(bias, bias, bias, _field_strategy(field, depth))
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        return st.dictionaries(_field_strategy(key, depth), _field_strategy(value, depth), max_size=3)
    if field.type == _FD.TYPE_ENUM:
        single = st.sampled_from([v.number for v in field.enum_type.values]) | int32s  # unknown numbers too (open enums)
    elif field.message_type is not None:
        name = field.message_type.full_name
        if name == "google.protobuf.Struct":
            single = structs()
        elif name == "google.protobuf.Timestamp":
            single = st.builds(lambda s, n: _timestamp(s, n), int64s, int32s)
        else:
            single = messages(field.message_type, depth + 1, biased)
    else:
        single = _SCALARS[field.type]
    if field.is_repeated:
        return st.lists(single, max_size=4) | st.just([]) if depth < 3 else st.just([])
    return single


_GOOD_SIGNATURES = st.sampled_from(["question -> answer", "question, history -> answer", "a, b -> c: int",
                                    "context: list[str], question -> answer: float", "q -> a: bool"])
_SMALL_VERSIONS = st.sampled_from([0, 0, 1, 2, 3])


def _inputs() -> st.SearchStrategy:
    return st.builds(lambda q, extra: _struct({"question": q, **extra}), json_values,
                     st.just({}) | st.dictionaries(st.sampled_from(["history", "x", "answer"]), json_values, max_size=1))


def _struct(values: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def _bias(field: _descriptor.FieldDescriptor):
    """Values of this field that the server knows or accepts, so a request gets past its first check."""
    owner, name = field.containing_type.name, field.name
    if field.type == _FD.TYPE_STRING:
        if name == "program" or (name == "name" and owner in ("GetProgramRequest", "DeleteProgramRequest")):
            return _known("program")
        if name == "name" and owner == "ProgramSpec":
            return st.sampled_from(["fz1", "fz2", "qa", "chat"])
        if name == "name" and owner == "FieldSpec":
            return st.sampled_from(["question", "answer", "context", "n"])
        if name == "dataset" or (name == "name" and owner in ("GetDatasetRequest", "DeleteDatasetRequest")):
            return _known("dataset") | st.just("fz-ds")
        if name == "job_id":
            return _known("job")
        if name == "session_id":
            return _known("session") | st.sampled_from(["s2", "s3"])
        if name == "request_id":
            return _known("request") if owner == "RecordFeedbackRequest" else st.sampled_from(["", "r1"])
        choices = {"split": ["train", "dev"], "module": ["", "predict", "chain_of_thought"],
                   "mode": ["", "traditional", "optimized", "hybrid", "evaluation", "serve", "fallback", "off"],
                   "optimizer": ["labeled_few_shot", "bootstrap_few_shot", "mipro_v2", "gepa", "copro", "simba"],
                   "kind": ["exact_match", "f1", "contains", "numeric_close", "llm_judge"], "promotion": ["manual", "auto"],
                   "chain": ["cache", "static", "fail", "lm", "program"], "type": ["str", "int", "list[str]", "bool"],
                   "fields": ["answer", "c"]}
        if name == "signature":
            return _GOOD_SIGNATURES
        if name in choices:
            single = st.sampled_from(choices[name])
            return st.lists(single, max_size=3) if field.is_repeated else single
    if field.type == _FD.TYPE_INT32 and name in ("version", "base_version", "optimized_version"):
        return _SMALL_VERSIONS
    if name == "inputs" and owner in ("ExecuteRequest", "Example"):
        return _inputs()
    if name == "outputs" and owner == "Example":
        return json_values.map(lambda v: _struct({"answer": v}))
    if name == "hybrid_percent":
        return st.sampled_from([0.0, 50.0, 100.0])
    return None


def _timestamp(seconds: int, nanos: int):
    from google.protobuf import timestamp_pb2
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


_CLASSES = {}


def _class(descriptor):
    if descriptor.full_name not in _CLASSES:
        from google.protobuf import message_factory
        _CLASSES[descriptor.full_name] = message_factory.GetMessageClass(descriptor)
    return _CLASSES[descriptor.full_name]


def _fill(message, values: dict) -> None:
    for name, value in values.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target = getattr(message, name)
            for key, item in value.items():
                if field.message_type.fields_by_name["value"].message_type is not None:
                    target[key].CopyFrom(item)
                else:
                    target[key] = item
        elif field.is_repeated:
            target = getattr(message, name)
            if field.message_type is not None:
                for item in value:
                    target.add().CopyFrom(item)
            else:
                target.extend(value)
        elif field.message_type is not None:
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)


def messages(descriptor, depth: int = 0, biased: bool = False):
    """Any message of this type: each field present or not, with any value its type allows (biased: mostly known values)."""
    if depth > 4:
        return st.just(_class(descriptor)())
    optional = {field.name: st.deferred(lambda field=field: _field_strategy(field, depth, biased)) for field in descriptor.fields}

    def build(values):
        message = _class(descriptor)()
        _fill(message, values)
        return message

    return st.fixed_dictionaries({}, optional=optional).map(build)


# Plausible requests that get past the first checks, mutated by the generic ones.
def _plausible(method) -> st.SearchStrategy:
    name = method.name
    if name == "Execute":
        return st.builds(lambda program, inputs, session, mode, version, wait: _execute(program, inputs, session, mode, version, wait),
                         _known("program"), _inputs().map(structs_module.struct_to_dict),
                         st.sampled_from(["", "", "s1", "s2"]) | strings, st.sampled_from(["", "optimized", "hybrid", "evaluation"]) | strings,
                         st.sampled_from([0, 0, 1, 2, -1]), st.sampled_from([0, 1, 100, -5, 2**31 - 1]))
    if name == "RecordFeedback":
        return st.builds(lambda rid, score, has, expected: _feedback(rid, score, has, expected),
                         _known("request"), floats, st.booleans(), st.none() | structs())
    if name == "StartOptimization":
        return st.builds(_start, _known("program"), _known("dataset"),
                         st.sampled_from(["labeled_few_shot", "gepa", "mipro_v2", "bootstrap_few_shot"]) | strings,
                         st.dictionaries(_struct_keys, json_values, max_size=3),
                         st.sampled_from(["exact_match", "llm_judge", "f1"]) | strings,
                         st.dictionaries(_struct_keys, json_values, max_size=3), int32s, floats)
    return messages(method.input_type, biased=True)


def _execute(program, inputs, session, mode, version, wait) -> pb.ExecuteRequest:
    request = pb.ExecuteRequest(program=program, session_id=session, mode=mode, version=version, max_optimization_wait_ms=wait)
    request.inputs.update(inputs)
    return request


def _feedback(request_id, score, has_score, expected) -> pb.RecordFeedbackRequest:
    request = pb.RecordFeedbackRequest(request_id=request_id, score=score, has_score=has_score)
    if expected is not None:
        request.expected_outputs.CopyFrom(expected)
    return request


def _start(program, dataset, optimizer, options, metric, metric_options, max_calls, max_seconds) -> pb.StartOptimizationRequest:
    request = pb.StartOptimizationRequest(program=program, dataset=dataset, optimizer=optimizer,
                                          budget=pb.OptimizationBudget(max_lm_calls=max_calls, max_seconds=max_seconds))
    request.options.update(options)
    request.metric.kind = metric
    request.metric.options.update(metric_options)
    return request


def requests_for(method) -> st.SearchStrategy:
    return st.one_of(_plausible(method), messages(method.input_type, biased=True), messages(method.input_type))


# -- checks ------------------------------------------------------------------------------

def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if raw is None:
        return None
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def check_error(method: str, error: grpc.aio.AioRpcError, elapsed: float, timeout: float, label: str = "") -> None:
    """A documented code with a useful message, no key, and within the deadline."""
    code, details = error.code(), error.details() or ""
    where = f"{method}{label and f'[{label}]'}: {code.name}: {details[:300]!r}"
    assert code in ALLOWED, f"undocumented status {where}"
    assert details.strip(), f"empty message {where}"
    assert "metadata size exceeds" not in details, f"the server's status was too large for the client to read {where}"
    if code == grpc.StatusCode.INTERNAL:
        info = _error_info(error)
        assert info is not None and info.reason in LM_KINDS, f"INTERNAL that is not an LM error kind ({info and info.reason}) {where}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        assert method == "Execute", f"a {method} call that should answer at once ran into its deadline {where}"
    assert SECRET not in details and SECRET not in str(error.trailing_metadata()), f"the API key in an error {where}"
    assert elapsed < timeout + SLACK_S, f"answered after {elapsed:.1f}s with a {timeout}s deadline {where}"


SEEN: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)  # method -> codes answered (FUZZ_REPORT=1 prints)
SAMPLES: dict[tuple[str, str], str] = {}  # (method, code) -> the first message seen


async def call(stub, method, request, timeout: float = CALL_TIMEOUT_S):
    """Send one request; for a stream read its first message. The error, or None when OK."""
    error = await _call(stub, method, request, timeout)
    code = error.code().name if error is not None else "OK"
    SEEN[method.name][code] += 1
    if error is not None:
        SAMPLES.setdefault((method.name, code), (error.details() or "")[:200])
    return error


async def _call(stub, method, request, timeout: float):
    started = time.monotonic()
    try:
        if method.server_streaming:
            stream = getattr(stub, method.name)(request, timeout=timeout)
            try:
                async for response in stream:
                    assert SECRET not in str(response)
                    break
            finally:
                stream.cancel()
        else:
            response = await getattr(stub, method.name)(request, timeout=timeout)
            assert SECRET not in str(response), f"{method.name}: the API key in a response"
    except grpc.aio.AioRpcError as error:
        check_error(method.name, error, time.monotonic() - started, timeout)
        return error
    elapsed = time.monotonic() - started
    assert elapsed < timeout + SLACK_S, f"{method.name}: answered OK after {elapsed:.1f}s with a {timeout}s deadline"
    return None


def assert_clean(logs: list) -> None:
    """The tripwires: no key in any log line, nobody called the listener, no client-named code ran."""
    assert not LISTENER.connections, f"the server connected to an address a client named: {LISTENER.connections[:3]}"
    assert not os.listdir(SENTINEL_DIR), f"a server process imported or called client-named code: {os.listdir(SENTINEL_DIR)}"
    leaked = [entry for entry in logs if SECRET in str(entry)]
    assert not leaked, f"the API key in a log line: {str(leaked[0])[:500]}"


async def still_up(stub) -> None:
    status = await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)
    assert status.serving and SECRET not in str(status)


# -- the server -------------------------------------------------------------------------

async def ensure_state(stub) -> None:
    """What the fuzzed requests name exists (again: DeleteProgram, DeleteDataset and CloseSession take it away)."""
    await register(stub, "qa", "question -> answer")  # identical content: the existing version
    await register(stub, "chat", "question, history -> answer")
    await register(stub, "cap", "question -> answer", capture=pb.CapturePolicy(sample_rate=1.0))
    try:
        counts = dict((await stub.GetDataset(pb.GetDatasetRequest(name="ds"), timeout=5)).counts)
    except grpc.aio.AioRpcError:
        counts = {}
    example = pb.Example()
    example.inputs.update({"question": "2+2?"})
    example.outputs.update({"answer": "4"})
    for split in ("train", "dev"):
        if not counts.get(split):
            await stub.AddExamples(pb.AddExamplesRequest(dataset="ds", split=split, examples=[example]), timeout=10)
    job = await stub.StartOptimization(pb.StartOptimizationRequest(
        program="qa", dataset="ds", optimizer="labeled_few_shot", metric=pb.MetricSpec(kind="exact_match")), timeout=10)
    if job.job_id not in KNOWN["job"]:
        KNOWN["job"].append(job.job_id)
    KNOWN["request"][:] = [await _captured_call(stub, "") for _ in range(4)]  # feedback takes them: fresh ones
    request = pb.ExecuteRequest(program="chat", session_id="s1")
    request.inputs.update({"question": "hello"})
    await stub.Execute(request, timeout=20)


async def _captured_call(stub, request_id: str) -> str:
    request = pb.ExecuteRequest(program="cap", request_id=request_id)
    request.inputs.update({"question": request_id or "q"})
    return (await stub.Execute(request, timeout=20)).request_id


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    with capture_logs() as logs:
        async with running_app(lm_api_key=SECRET, optimizer_workers=1, hang_timeout_s=3.0) as (app, stub, channel):
            KNOWN["program"][:] = ["qa", "chat", "cap"]
            await ensure_state(stub)
            yield app, stub, channel, logs
    if os.environ.get("FUZZ_REPORT"):
        for name, codes in sorted(SEEN.items()):
            print(f"{name:20} {dict(codes)}")
        for (name, code), message in sorted(SAMPLES.items()):
            print(f"  {name} {code}: {message!r}")
    assert_clean(logs)


def _run_property(loop, strategy, check, examples: int = EXAMPLES) -> None:
    @settings(max_examples=examples, deadline=None, derandomize=not os.environ.get("FUZZ_RANDOM"), database=None,
              print_blob=True, suppress_health_check=list(HealthCheck))
    @given(value=strategy)
    def prop(value):
        # Hypothesis runs in a thread; the gRPC calls run on the module's loop.
        asyncio.run_coroutine_threadsafe(check(value), loop).result(timeout=CALL_TIMEOUT_S + 30)

    prop()


# -- every method, generic and targeted ------------------------------------------------

@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
async def test_any_request_gets_a_documented_answer(server, method):
    """Requests drawn from the method's descriptor (and plausible ones) end OK or with a documented, useful, keyless status."""
    _, stub, _, logs = server
    await ensure_state(stub)
    loop = asyncio.get_running_loop()

    async def check(request):
        await call(stub, method, request)

    await asyncio.to_thread(_run_property, loop, requests_for(method), check)
    await still_up(stub)
    assert_clean(logs)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_struct(depth: int) -> bytes:
    """A Struct nested `depth` levels, hand-encoded (protobuf itself refuses to build one past its limit)."""
    inner = b""
    for _ in range(depth):
        value = _field(5, inner)  # Value.struct_value
        inner = _field(1, _field(1, b"k") + _field(2, value))  # Struct.fields entry
    return inner


RAW_CASES = {
    "empty": b"",
    "garbage": b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    "truncated-length": b"\x0a\x7f" + b"x" * 10,
    "bad-utf8-field-1": _field(1, b"\xc3\x28"),
    "bad-wire-type": bytes([1 << 3 | 7]),
    "group-start": bytes([1 << 3 | 3]),
    "field-zero": b"\x02\x00",
    "huge-varint-length": b"\x0a" + b"\xff" * 9 + b"\x7f",
    "deep-struct-every-field": b"".join(_field(n, _deep_struct(120)) for n in range(1, 16)),
    "unknown-fields": _field(999, b"x" * 100) + _varint(200 << 3 | 0) + _varint(2**63),
    "over-the-limit": _field(1, b"x" * (5 * 1024 * 1024)),
}
MUST_FAIL = {"garbage", "truncated-length", "bad-wire-type", "huge-varint-length", "over-the-limit"}  # field 0 passes upb on a message with no fields


@pytest.mark.parametrize("method", METHODS, ids=[m.name for m in METHODS])
async def test_raw_bytes_get_a_documented_answer(server, method):
    """Undecodable or odd bytes to each method path: INVALID_ARGUMENT (or, when they decode, a documented answer)."""
    _, stub, channel, logs = server
    path = f"/{SERVICE.full_name}/{method.name}"
    make = channel.unary_stream if method.server_streaming else channel.unary_unary
    raw = make(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    await ensure_state(stub)
    loop = asyncio.get_running_loop()

    async def one(data: bytes, label: str):
        started = time.monotonic()
        try:
            if method.server_streaming:
                stream = raw(data, timeout=CALL_TIMEOUT_S)
                try:
                    async for _ in stream:
                        break
                finally:
                    stream.cancel()
            else:
                await raw(data, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as error:
            check_error(method.name, error, time.monotonic() - started, CALL_TIMEOUT_S, label)
            return error
        return None

    for label, data in RAW_CASES.items():
        error = await one(data, label)
        if label in MUST_FAIL:  # undecodable whatever the type
            assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, error)
    valid = messages(method.input_type).map(lambda m: m.SerializeToString())

    async def fuzz(data):
        await one(data, "hypothesis")

    mutated = st.one_of(st.binary(max_size=300), st.tuples(valid, st.integers(0, 10**6), st.integers(0, 255)).map(_flip))
    await asyncio.to_thread(_run_property, loop, mutated, fuzz)
    await still_up(stub)
    assert_clean(logs)


def _flip(args) -> bytes:
    data, at, byte = args
    if not data:
        return bytes([byte])
    data = bytearray(data)
    data[at % len(data)] = byte
    return bytes(data)


# -- targeted: the server never goes where a client points, never runs what a client names ----------

def _spec(**fields) -> pb.ProgramSpec:
    structs_ = {k: fields.pop(k) for k in ("module_options", "lm_options") if k in fields}
    spec = pb.ProgramSpec(**fields)
    for name, values in structs_.items():
        getattr(spec, name).update(values)
    return spec


HOSTILE_SPECS = {
    "module-import-path": _spec(name="h1", signature="q -> a", module=ME),
    "module-callable": _spec(name="h2", signature="q -> a", module=f"{ME}:pwn"),
    "module-dotted-callable": _spec(name="h3", signature="q -> a", module=f"{ME}.pwn"),
    "signature-type-import": _spec(name="h4", signature=f"q: {ME}.Pwn -> a"),
    "signature-type-call": _spec(name="h5", signature=f"q -> a: __import__('{ME}').Pwn"),
    "field-type-import": pb.ProgramSpec(name="h6", input_fields=[pb.FieldSpec(name="q", type=f"{ME}.Pwn")],
                                        output_fields=[pb.FieldSpec(name="a")]),
    "field-type-call": pb.ProgramSpec(name="h7", input_fields=[pb.FieldSpec(name="q", type=f"__import__('{ME}')")],
                                      output_fields=[pb.FieldSpec(name="a", type="os.system")]),
    "lm-options-api-base": _spec(name="h8", signature="q -> a", lm_options={"api_base": TRAP_URL}),
    "lm-options-base-url": _spec(name="h9", signature="q -> a", lm_options={"base_url": TRAP_URL, "model": f"openai/{TRAP_URL}"}),
    "lm-options-headers": _spec(name="h10", signature="q -> a", lm_options={"extra_headers": {"Host": TRAP}, "api_key": "x"}),
    "module-options-lm": _spec(name="h11", signature="q -> a", module_options={"lm": TRAP_URL, "api_base": TRAP_URL}),
    "module-options-callbacks": _spec(name="h12", signature="q -> a", module="chain_of_thought",
                                      module_options={"callbacks": [f"{ME}:pwn"], "rationale_field": f"{ME}.Pwn"}),
    "fallback-lm-trap": pb.ProgramSpec(name="h13", signature="q -> a",
                                       fallback=pb.FallbackSpec(chain=["lm"], lm="openai/gpt-4o-mini", lm_api_base=TRAP_URL)),
    "fallback-lm-at-trap": pb.ProgramSpec(name="h14", signature="q -> a", fallback=pb.FallbackSpec(chain=["lm"], lm=f"openai/x@{TRAP_URL}")),
    "fallback-program-import": pb.ProgramSpec(name="h15", signature="q -> a", fallback=pb.FallbackSpec(chain=["program"], program=ME)),
    "fallback-chain-unknown": pb.ProgramSpec(name="h16", signature="q -> a", fallback=pb.FallbackSpec(chain=[f"{ME}:pwn", "exec"])),
    "state-json-lm": pb.ProgramSpec(name="h17", signature="q -> a", state_json=(
        '{"self": {"lm": {"model": "openai/x", "api_base": "' + TRAP_URL + '"}, "traces": [], "train": [], "demos": [], '
        '"signature": {"instructions": "x", "fields": []}}}')),
    "state-json-config": pb.ProgramSpec(name="h18", signature="q -> a", state_json=(
        '{"predict": {"lm": null, "config": {"api_base": "' + TRAP_URL + '", "base_url": "' + TRAP_URL + '"}, "traces": [], '
        '"train": [], "demos": [], "signature": {"instructions": "x", "fields": []}}}')),
    "state-json-metadata": pb.ProgramSpec(name="h19", signature="q -> a", state_json=(
        '{"metadata": {"dependency_versions": {"python": "3"}, "module": "' + ME + '"}, "predict": {"lm": null}}')),
    "state-json-pickle": pb.ProgramSpec(name="h20", signature="q -> a", state_json='{"__class__": "' + ME + '.Pwn", "py/object": "' + ME + '.Pwn"}'),
    "state-json-not-json": pb.ProgramSpec(name="h21", signature="q -> a", state_json="{" * 100_000),
    "state-json-deep": pb.ProgramSpec(name="h22", signature="q -> a", state_json="[" * 50_000 + "]" * 50_000),
    "state-json-nan": pb.ProgramSpec(name="h23", signature="q -> a", state_json='{"predict": {"lm": null, "config": {"temperature": NaN}}}'),
    "cache-nan-ttl": pb.ProgramSpec(name="h24", signature="q -> a", cache=pb.CachePolicy(mode="serve", ttl_s=math.nan)),
    "cache-inf-ttl": pb.ProgramSpec(name="h25", signature="q -> a", cache=pb.CachePolicy(mode="serve", ttl_s=-math.inf)),
    "capture-nan": pb.ProgramSpec(name="h26", signature="q -> a", capture=pb.CapturePolicy(sample_rate=math.nan, max_examples=-5,
                                                                                          dataset="../x", split="test")),
    "capture-huge": pb.ProgramSpec(name="h27", signature="q -> a", capture=pb.CapturePolicy(sample_rate=math.inf, max_examples=2**31 - 1,
                                                                                           good_score=math.nan)),
    "lm-options-nan": _spec(name="h28", signature="q -> a", lm_options={"temperature": math.nan, "max_tokens": math.inf}),
    "demos-unset-value": pb.ProgramSpec(name="h29", signature="q -> a", demos=[struct_pb2.Struct()]),
    "many-fields": _spec(name="h30", signature=", ".join(f"f{i}" for i in range(300)) + " -> a"),
}
HOSTILE_SPECS["demos-unset-value"].demos[0].fields["q"]  # noqa: B018 (a Value with no kind)


@pytest.mark.parametrize("case", list(HOSTILE_SPECS), ids=list(HOSTILE_SPECS))
async def test_hostile_spec_is_refused_or_harmless(server, case):
    """Specs that name code, an LM endpoint or odd numbers: refused INVALID_ARGUMENT, or run only on the operator's LM."""
    _, stub, _, logs = server
    await ensure_state(stub)
    method = SERVICE.methods_by_name["RegisterProgram"]
    spec = HOSTILE_SPECS[case]
    error = await call(stub, method, pb.RegisterProgramRequest(spec=spec), timeout=15)
    if error is None:  # accepted: a call must still go to the operator's LM only
        inputs = {name: "hi" for name in (await stub.GetProgram(pb.GetProgramRequest(name=spec.name), timeout=5)).input_names}
        request = pb.ExecuteRequest(program=spec.name)
        request.inputs.update(inputs)
        await call(stub, SERVICE.methods_by_name["Execute"], request, timeout=15)
    await still_up(stub)
    assert_clean(logs)


def _opt(optimizer="labeled_few_shot", options=None, metric="exact_match", metric_options=None, **fields):
    request = pb.StartOptimizationRequest(program=fields.pop("program", "qa"), dataset=fields.pop("dataset", "ds"), optimizer=optimizer, **fields)
    request.options.update(options or {})
    request.metric.kind = metric
    request.metric.options.update(metric_options or {})
    return request


HOSTILE_JOBS = {
    "optimizer-import-path": _opt(optimizer=ME),
    "optimizer-dspy-class": _opt(optimizer="dspy.teleprompt.BootstrapFewShot"),
    "metric-import-path": _opt(metric=f"{ME}:pwn"),
    "metric-dotted": _opt(metric=f"{ME}.pwn"),
    "judge-trap-model": _opt(metric="llm_judge", metric_options={"rubric": "r", "model": f"openai/x@{TRAP_URL}"}),
    "judge-api-base": _opt(metric="llm_judge", metric_options={"rubric": "r", "model": "openai/x", "api_base": TRAP_URL}),
    "gepa-reflection-trap": _opt(optimizer="gepa", options={"reflection_lm": TRAP_URL, "auto": "light"}),
    "gepa-reflection-api-base": _opt(optimizer="gepa", options={"reflection_lm": "openai/x", "api_base": TRAP_URL}),
    "options-callbacks": _opt(options={"k": 1, "callbacks": [f"{ME}:pwn"], "metric": f"{ME}:pwn", "teacher": ME}),
    "options-nan": _opt(options={"k": math.nan}),
    "options-inf": _opt(options={"k": math.inf}),
    "options-huge-int": _opt(options={"k": 1e300}),
    "options-bool-for-int": _opt(options={"k": True}),
    "metric-fields-hostile": _opt(metric_options={}, metric="exact_match") ,
    "budget-nan": _opt(budget=pb.OptimizationBudget(max_lm_calls=-1, max_seconds=math.nan)),
    "budget-negative": _opt(budget=pb.OptimizationBudget(max_lm_calls=-2**31, max_seconds=-math.inf)),
    "base-version-negative": _opt(base_version=-1),
    "dataset-url": _opt(dataset=TRAP_URL),
    "dataset-path": _opt(dataset="../../../../etc/passwd"),
    "program-unknown": _opt(program="nope"),
    "options-unset-value": _opt(),
    "metric-options-unset-value": _opt(),
}
HOSTILE_JOBS["metric-fields-hostile"].metric.fields.extend([f"{ME}.pwn", "__class__", "a" * 10_000])
HOSTILE_JOBS["options-unset-value"].options.fields["k"]  # noqa: B018
HOSTILE_JOBS["metric-options-unset-value"].metric.options.fields["ignore_case"]  # noqa: B018


@pytest.mark.parametrize("case", list(HOSTILE_JOBS), ids=list(HOSTILE_JOBS))
async def test_hostile_optimization_is_refused_or_harmless(server, case):
    """Optimizer and metric names, LM options and budgets a client should not control: refused or bounded."""
    _, stub, _, logs = server
    await ensure_state(stub)
    error = await call(stub, SERVICE.methods_by_name["StartOptimization"], HOSTILE_JOBS[case], timeout=10)
    if error is None:
        job = await stub.GetOptimization(pb.GetOptimizationRequest(job_id=(await stub.ListOptimizations(
            pb.ListOptimizationsRequest(program="qa"), timeout=5)).jobs[-1].job_id), timeout=5)
        assert SECRET not in str(job)
    await still_up(stub)
    assert_clean(logs)


HOSTILE_POLICIES = {
    "nan-everything": pb.ExecutionPolicy(program="qa", mode="hybrid", hybrid_percent=math.nan, min_improvement=math.nan),
    "inf-min-improvement": pb.ExecutionPolicy(program="qa", min_improvement=math.inf, min_dev_examples=-2**31),
    "negative-versions": pb.ExecutionPolicy(program="qa", base_version=-1, optimized_version=-2**31),
    "auto-optimize-import": pb.ExecutionPolicy(program="qa", auto_optimize=pb.AutoOptimize(
        job=_opt(optimizer=ME, program="qa"), after_feedback_examples=1)),
    "auto-optimize-metric-import": pb.ExecutionPolicy(program="qa", auto_optimize=pb.AutoOptimize(
        job=_opt(metric=f"{ME}:pwn"), after_feedback_examples=-1, on_score_drop=math.nan, on_error_rate=math.inf,
        min_interval_s=-math.inf)),
    "auto-optimize-judge-trap": pb.ExecutionPolicy(program="qa", auto_optimize=pb.AutoOptimize(
        job=_opt(metric="llm_judge", metric_options={"rubric": "r", "model": TRAP_URL}), after_feedback_examples=1)),
    "auto-optimize-other-program": pb.ExecutionPolicy(program="qa", auto_optimize=pb.AutoOptimize(
        job=_opt(program="nope", dataset=TRAP_URL), min_interval_s=math.nan)),
    "auto-optimize-unset-value": pb.ExecutionPolicy(program="qa", auto_optimize=pb.AutoOptimize(job=_opt())),
    "mode-import": pb.ExecutionPolicy(program="qa", mode=ME, promotion=f"{ME}:pwn"),
}
HOSTILE_POLICIES["auto-optimize-unset-value"].auto_optimize.job.options.fields["k"]  # noqa: B018


@pytest.mark.parametrize("case", list(HOSTILE_POLICIES), ids=list(HOSTILE_POLICIES))
async def test_hostile_policy_is_refused_or_harmless(server, case):
    """Execution policies with NaN, negative versions and hostile auto-optimize jobs: refused, or Execute still answers."""
    _, stub, _, logs = server
    await ensure_state(stub)
    error = await call(stub, SERVICE.methods_by_name["SetExecutionPolicy"], pb.SetExecutionPolicyRequest(policy=HOSTILE_POLICIES[case]))
    if error is None:
        request = pb.ExecuteRequest(program="qa")
        request.inputs.update({"question": "after a policy"})
        await call(stub, SERVICE.methods_by_name["Execute"], request, timeout=15)
        await call(stub, SERVICE.methods_by_name["GetProgramStats"], pb.GetProgramStatsRequest(program="qa"))
        # Put the plain policy back, so later cases start from it.
        await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(program="qa")), timeout=5)
    await still_up(stub)
    assert_clean(logs)


async def test_feedback_with_hostile_expected_outputs(server):
    """RecordFeedback on a captured call with expected outputs holding an unset Value, NaN, deep nesting: a documented answer."""
    _, stub, _, logs = server
    method = SERVICE.methods_by_name["RecordFeedback"]
    cases = []
    unset = pb.RecordFeedbackRequest(has_score=True, score=math.nan)
    unset.expected_outputs.fields["answer"]  # noqa: B018
    cases.append(unset)
    deep = pb.RecordFeedbackRequest()
    deep.expected_outputs.update({"answer": _nested(90)})
    cases.append(deep)
    nan = pb.RecordFeedbackRequest(has_score=True, score=math.inf)
    nan.expected_outputs.update({"answer": math.nan})
    cases.append(nan)
    for number, request in enumerate(cases):
        request.request_id = await _captured_call(stub, f"fb-{number}")
        await call(stub, method, request)
    await still_up(stub)
    assert_clean(logs)


async def test_watch_streams_answer_at_once_and_end_cleanly(server):
    """WatchPoolStatus with odd intervals and WatchOptimization on known and unknown ids: a first message or a status, fast."""
    _, stub, _, logs = server
    for interval in (math.nan, math.inf, -math.inf, -1.0, 0.0, 1e-300, 1e300):
        assert await call(stub, SERVICE.methods_by_name["WatchPoolStatus"], pb.WatchPoolStatusRequest(interval_s=interval)) is None
    for job_id in (KNOWN["job"][0], "", "nope", "x" * 100_000, "\x00"):
        await call(stub, SERVICE.methods_by_name["WatchOptimization"], pb.GetOptimizationRequest(job_id=job_id))
    await still_up(stub)
    assert_clean(logs)


# -- faults this sweep found, one test each ---------------------------------------------------------

@pytest.mark.parametrize("rpc, message", [
    ("GetProgram", pb.GetProgramRequest(name="\U0001f600" * 1000)),
    ("GetSession", pb.GetSessionRequest(session_id="\U0001f600" * 1000)),
    ("RegisterProgram", pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="\U0001f600" * 1000, signature="q -> a"))),
], ids=["GetProgram", "GetSession", "RegisterProgram"])
async def test_an_error_echoing_a_long_unicode_string_still_reaches_the_client(server, rpc, message):
    """A status echoing 1,000 emoji fits the client's 8 KiB metadata limit: NOT_FOUND/INVALID_ARGUMENT arrives as such
    (was RESOURCE_EXHAUSTED 'Stream removed': the message was cut by characters, 4 bytes each, percent-encoded)."""
    _, stub, _, _ = server
    error = await call(stub, SERVICE.methods_by_name[rpc], message)
    assert error is not None and error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
    assert _error_info(error) is not None


async def test_feedback_with_an_unset_value_is_invalid_argument_and_can_be_sent_again(server):
    """expected_outputs holding a Value with no kind: INVALID_ARGUMENT naming the field (was UNKNOWN 'Value not set'),
    and the captured call is not used up: the corrected feedback is then accepted."""
    _, stub, _, _ = server
    request = pb.RecordFeedbackRequest(request_id=await _captured_call(stub, "bad-feedback"))
    request.expected_outputs.fields["answer"]  # noqa: B018 (an unset Value)
    error = await call(stub, SERVICE.methods_by_name["RecordFeedback"], request)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT and "expected_outputs" in error.details()
    fixed = pb.RecordFeedbackRequest(request_id=request.request_id)
    fixed.expected_outputs.update({"answer": "4"})
    answer = await stub.RecordFeedback(fixed, timeout=10)
    assert answer.example_added and answer.program == "cap"


async def test_deeply_nested_state_json_is_invalid_argument(server):
    """A state_json nested 50,000 levels (under the 1 MiB cap) is INVALID_ARGUMENT, not INTERNAL PROGRAM_ERROR."""
    _, stub, _, _ = server
    for state in ("[" * 50_000 + "]" * 50_000, json.dumps({"predict": _nested(150)})):
        spec = pb.ProgramSpec(name="deep-state", signature="q -> a", state_json=state)
        error = await call(stub, SERVICE.methods_by_name["RegisterProgram"], pb.RegisterProgramRequest(spec=spec), timeout=15)
        assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT and "nested deeper" in error.details()


async def test_waiting_for_an_optimization_is_bounded_by_the_deadline(server):
    """mode optimized, a job still running, max_optimization_wait_ms past the deadline: the base version answers within
    the deadline, saying optimization_pending (the wait took the whole max_optimization_wait_ms, past any deadline)."""
    app, stub, _, _ = server
    await register(stub, "waits", "question -> answer")
    await app.sim.set_faults(hang_rate=1.0)  # the job's LM calls hang: it stays running
    try:
        job = await stub.StartOptimization(pb.StartOptimizationRequest(
            program="waits", dataset="ds", optimizer="bootstrap_few_shot", metric=pb.MetricSpec(kind="exact_match")), timeout=10)
        await stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=pb.ExecutionPolicy(program="waits", mode="optimized")),
                                      timeout=5)
        await eventually(lambda: _running(stub, job.job_id))
        await asyncio.sleep(1.0)  # its first LM calls in flight: they stay hung once the fault is off
    finally:
        await app.sim.set_faults(hang_rate=0.0)
    try:
        request = pb.ExecuteRequest(program="waits", max_optimization_wait_ms=60_000)
        request.inputs.update({"question": "waits?"})
        response = await stub.Execute(request, timeout=4.0)
        assert response.fallback_reason == "optimization_pending" and response.program_version == 1
    finally:
        await stub.CancelOptimization(pb.CancelOptimizationRequest(job_id=job.job_id), timeout=5)


async def _running(stub, job_id: str) -> bool:
    return (await stub.GetOptimization(pb.GetOptimizationRequest(job_id=job_id), timeout=5)).state == "running"


async def test_list_programs_pages_stay_readable_with_large_specs(server):
    """Five accepted programs with 0.9 MB demos each (under --max-program-bytes): each ListPrograms page stays within
    its 2 MiB (a client's default limit is 4 MiB; one 4.5 MB response no client could read), and following
    next_page_token lists every program once."""
    _, stub, _, _ = server
    names = [f"large-{letter}" for letter in "abcde"]
    try:
        for name in names:
            demo = struct_pb2.Struct()
            demo.update({"question": "q" * (900 * 1024), "answer": "a"})
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name=name, signature="question -> answer", demos=[demo])),
                                       timeout=30)
        listed, token, pages = [], "", 0
        while True:
            page = await stub.ListPrograms(pb.ListProgramsRequest(page_token=token), timeout=10)
            listed += [program.spec.name for program in page.programs]
            token, pages = page.next_page_token, pages + 1
            if not token:
                break
        assert pages >= 3 and sorted(listed) == listed and len(set(listed)) == len(listed) and set(names) <= set(listed)
    finally:
        for name in names:
            try:
                await stub.DeleteProgram(pb.DeleteProgramRequest(name=name), timeout=10)
            except grpc.aio.AioRpcError:
                pass


@pytest.mark.parametrize("budget", [pb.OptimizationBudget(max_seconds=math.nan), pb.OptimizationBudget(max_seconds=math.inf),
                                    pb.OptimizationBudget(max_seconds=-1.0), pb.OptimizationBudget(max_lm_calls=-1)],
                         ids=["nan-seconds", "inf-seconds", "negative-seconds", "negative-calls"])
async def test_a_budget_out_of_range_is_invalid_argument(server, budget):
    """A budget of NaN, infinite or negative seconds or calls is refused naming the field (NaN and inf jobs used to run)."""
    _, stub, _, _ = server
    error = await call(stub, SERVICE.methods_by_name["StartOptimization"], _opt(budget=budget), timeout=10)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT and "budget.max_" in error.details()


@pytest.mark.parametrize("policy, field", [
    (pb.ExecutionPolicy(program="qa", min_improvement=math.nan), "min_improvement"),
    (pb.ExecutionPolicy(program="qa", min_dev_examples=-1), "min_dev_examples"),
    (pb.ExecutionPolicy(program="qa", auto_optimize=pb.AutoOptimize(on_score_drop=math.inf)), "on_score_drop"),
    (pb.ExecutionPolicy(program="qa", auto_optimize=pb.AutoOptimize(on_error_rate=1.5)), "on_error_rate"),
    (pb.ExecutionPolicy(program="qa", auto_optimize=pb.AutoOptimize(min_interval_s=-math.inf)), "min_interval_s"),
    (pb.ExecutionPolicy(program="qa", auto_optimize=pb.AutoOptimize(
        job=_opt(budget=pb.OptimizationBudget(max_seconds=math.nan)), after_feedback_examples=1)), "budget.max_seconds"),
], ids=["min-improvement-nan", "min-dev-negative", "score-drop-inf", "error-rate-over-1", "interval-negative", "job-budget-nan"])
async def test_a_policy_number_out_of_range_is_invalid_argument(server, policy, field):
    _, stub, _, _ = server
    error = await call(stub, SERVICE.methods_by_name["SetExecutionPolicy"], pb.SetExecutionPolicyRequest(policy=policy))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.details()
