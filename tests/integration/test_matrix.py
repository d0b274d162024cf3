"""The crash-and-bad-input matrix: every case ends with a clear status, the server stays up.

One server per module (hang_timeout_s=1.5 so a worker with a blocked loop is
found in seconds). Each LM fault case uses its own program, so that breakers,
which are per program, never carry one case's failures into another.

Observed status per LM fault (sim LM, no fallback chain, retries on):
    HTTP 500          -> INTERNAL            LMServerError (retried, then given up)
    HTTP 429          -> UNAVAILABLE         LMRateLimitError (retried, then given up)
    hang              -> DEADLINE_EXCEEDED   the client's deadline; the worker cancels
    unparseable text  -> INTERNAL            AdapterParseError (ChatAdapter, then JSONAdapter)
    connection closed -> UNAVAILABLE         LMTransportError (lm_connection, retried)
"""

import asyncio
import time

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import CHAOS, eventually, execute_request, register, running_app

MORE = "tests.fixtures.more_chaos_kinds"
EXECUTE = "/dspy_pool.v1.DSPyPool/Execute"
FAULTS_OFF = dict(error_rate=0.0, rate_limit_rate=0.0, hang_rate=0.0, malformed_rate=0.0, disconnect_rate=0.0)
DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
}

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with running_app(hang_timeout_s=1.5, programs=(CHAOS, MORE)) as (app, stub, channel):
        await register(stub, "qa", "question -> answer")
        await register(stub, "typed", "n: int, items: list[str] -> answer")
        for fault in ("lm500", "lm429", "lmhang", "lmmalformed", "lmdisconnect"):
            await register(stub, fault, "question -> answer")
        await register(stub, "blocker", "seconds -> slept", "blocks_loop")
        yield app, stub, channel


async def _code(call) -> grpc.aio.AioRpcError | None:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    return None


def _reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason from the rich status details ('' when there is none)."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    if raw is None:
        return ""
    for detail in status_pb2.Status.FromString(raw).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


async def _still_up(stub) -> None:
    response = await stub.Execute(execute_request("qa", question="still up?"), timeout=20)
    assert response.served_by == "primary" and response.outputs["answer"]


# -- the LM misbehaves ------------------------------------------------------------

@pytest.mark.parametrize("program, faults, code, error_type", [
    ("lm500", dict(error_rate=1.0), grpc.StatusCode.INTERNAL, "LMServerError"),
    ("lm429", dict(rate_limit_rate=1.0), grpc.StatusCode.UNAVAILABLE, "LMRateLimitError"),
    ("lmmalformed", dict(malformed_rate=1.0), grpc.StatusCode.INTERNAL, "AdapterParseError"),
    ("lmdisconnect", dict(disconnect_rate=1.0), grpc.StatusCode.UNAVAILABLE, "LMTransportError"),
], ids=["http500", "http429", "unparseable", "disconnect"])
async def test_lm_fault_ends_with_its_status(server, program, faults, code, error_type):
    """Each LM fault ends with its documented code and the original error type in the message."""
    app, stub, _ = server
    await app.sim.set_faults(**faults)
    try:
        error = await _code(stub.Execute(execute_request(program, question="q"), timeout=20))
    finally:
        await app.sim.set_faults(**FAULTS_OFF)
    assert error is not None and error.code() == code, error
    assert error_type in error.details()
    await _still_up(stub)


async def test_lm_hang_is_deadline_exceeded_and_frees_the_slot(server):
    """An LM that never answers ends at the client's deadline and the worker slot is freed."""
    app, stub, _ = server
    await app.sim.set_faults(hang_rate=1.0)
    try:
        error = await _code(stub.Execute(execute_request("lmhang", question="q"), timeout=1.0))
        assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The same words whichever timer fires first, the front's or the worker's own (they are set to one deadline).
        # The client's own timer is set to that deadline too: on a loaded machine it can end the call before the
        # server's answer arrives ("Deadline Exceeded", the client's words); the slot must be freed all the same.
        if error.details() != "Deadline Exceeded":
            assert error.details().startswith("DeadlineExceeded: deadline exceeded while running"), error.details()
        await eventually(lambda: app.pool.worker_pool.dispatcher.in_flight == 0, timeout_s=8)
    finally:
        await app.sim.set_faults(**FAULTS_OFF)
    await _still_up(stub)


# -- the caller sends nonsense ----------------------------------------------------------

async def test_empty_request_is_invalid(server):
    """An ExecuteRequest with nothing set is INVALID_ARGUMENT (program is required)."""
    _, stub, _ = server
    error = await _code(stub.Execute(pb.ExecuteRequest(), timeout=10))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "program" in error.details()


@pytest.mark.parametrize("inputs, field", [
    (dict(n="abc", items=["a"]), "n"),   # str where int
    (dict(n=1.5, items=["a"]), "n"),     # float where int
    (dict(n=1, items="abc"), "items"),   # str where list[str]
    (dict(n=1, items={"x": 1}), "items"),  # struct where list[str]
], ids=["str-for-int", "float-for-int", "str-for-list", "struct-for-list"])
async def test_wrong_typed_inputs_are_invalid(server, inputs, field):
    """The worker checks inputs against the signature's types: a mismatch is INVALID_ARGUMENT naming the field."""
    _, stub, _ = server
    error = await _code(stub.Execute(execute_request("typed", **inputs), timeout=20))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT and f"'{field}'" in error.details()


@pytest.mark.parametrize("value", [{"a": {"b": None}}, 3.5, None, ["a", "b"]], ids=["struct", "number", "null", "list-of-str"])
async def test_non_string_for_a_str_field_is_coerced(server, value):
    """A struct, number, null or list of strings where a str is expected is formatted and answered."""
    _, stub, _ = server
    response = await stub.Execute(execute_request("qa", question=value), timeout=20)
    assert response.outputs["answer"]



@pytest.mark.parametrize("value", [[1, 2, "a"], [None]], ids=["numbers", "null"])
async def test_list_with_non_strings_for_a_str_field(server, value):
    """A list of numbers or nulls for a str field is answered, or refused as INVALID_ARGUMENT, never INTERNAL."""
    _, stub, _ = server
    error = await _code(stub.Execute(execute_request("qa", question=value), timeout=20))
    assert error is None or error.code() == grpc.StatusCode.INVALID_ARGUMENT, error


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (payloads here stay under 128 bytes)."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


@pytest.mark.parametrize("raw", [
    _field(1, b"qa\xff"),
    _field(1, b"qa") + _field(3, _field(1, _field(1, b"question") + _field(2, _field(3, b"bad \xff byte")))),
    _field(1, b"qa") + _field(3, _field(1, _field(1, b"quest\xffion") + _field(2, _field(3, b"fine")))),
], ids=["program", "struct-string-value", "struct-key"])
async def test_invalid_utf8_is_invalid_argument(server, raw):
    """A request whose strings are not UTF-8 cannot be decoded: INVALID_ARGUMENT, never UNKNOWN."""
    _, stub, channel = server
    execute = channel.unary_unary(EXECUTE, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    error = await _code(execute(raw, timeout=10))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "UTF-8" in error.details()
    await _still_up(stub)


async def test_a_valid_hand_built_request_passes_the_raw_path(server):
    """Control for the raw-bytes cases: the same encoding with valid UTF-8 is answered."""
    _, stub, channel = server
    execute = channel.unary_unary(EXECUTE, request_serializer=lambda b: b, response_deserializer=pb.ExecuteResponse.FromString)
    raw = _field(1, b"qa") + _field(3, _field(1, _field(1, b"question") + _field(2, _field(3, b"caf\xc3\xa9"))))
    response = await execute(raw, timeout=20)
    assert response.outputs["answer"]


async def test_long_program_name_is_a_clear_status(server):
    """A 300-character program name is NOT_FOUND on Execute and INVALID_ARGUMENT on RegisterProgram."""
    _, stub, _ = server
    name = "p" * 300
    error = await _code(stub.Execute(execute_request(name, question="q"), timeout=10))
    assert error is not None and error.code() == grpc.StatusCode.NOT_FOUND
    error = await _code(register(stub, name, "question -> answer"))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT



@pytest.mark.parametrize("rpc", ["execute", "register", "get"])
async def test_10kb_program_name_is_a_clear_status(server, rpc):
    """A 10 KB program name ends NOT_FOUND or INVALID_ARGUMENT as the server decided, on every RPC."""
    _, stub, _ = server
    name = "p" * 10240
    calls = {
        "execute": lambda: stub.Execute(execute_request(name, question="q"), timeout=10),
        "register": lambda: register(stub, name, "question -> answer"),
        "get": lambda: stub.GetProgram(pb.GetProgramRequest(name=name), timeout=10),
    }
    for _ in range(3):  # the client's soft limit rejects at random between 8 and 16 KB: three tries make it certain
        error = await _code(calls[rpc]())
        assert error is not None and error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), error
    await _still_up(stub)


# -- a worker's event loop blocks ---------------------------------------------------------

def _ready_pids(app) -> set[int]:
    return {h.pid for h in app.pool.worker_pool.handles() if h.state.value == "ready"}


async def test_blocked_worker_loop_is_detected_as_hung(server):
    """A worker whose loop blocks misses its pings: killed, the call ends UNAVAILABLE (worker_hung), pool refilled."""
    app, stub, _ = server
    before = _ready_pids(app)
    started = time.monotonic()
    error = await _code(stub.Execute(execute_request("blocker", seconds=60), timeout=30))
    elapsed = time.monotonic() - started
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE, error
    assert _reason(error) == "WORKER_HUNG"
    assert elapsed < 10.0  # ping interval 2 s + hang timeout 1.5 s, far from the 30 s deadline
    await eventually(lambda: len(_ready_pids(app)) == 2 and _ready_pids(app) != before, timeout_s=10)
    await _still_up(stub)


# -- properties: whatever arrives, the answer is OK or a documented code --------------------

_leaves = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12))
json_values = st.recursive(_leaves, lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
                           max_leaves=8)
good_signatures = st.sampled_from(["question -> answer", "a, b -> c: int", "context: list[str], question -> answer: float",
                                   "question, history -> answer"])
any_signatures = good_signatures | st.lists(
    st.sampled_from(["a", "b", "question", "answer", "history", " ", ",", ":", "->", "[", "]", "int", "str", "list",
                     "dict[str, int]", "x y", "!", "é"]), max_size=9).map("".join)
good_kinds = st.sampled_from(["predict", "chain_of_thought", ""])
any_kinds = good_kinds | st.sampled_from(["counts_history", "prints", "Predict", "no_such_kind", "../os"])
good_names = st.sampled_from(["prop", "prop-2", "p.q_r"])
any_names = good_names | st.sampled_from(["", "bad name", "x" * 200, "é"])
options = st.none() | st.dictionaries(st.text(max_size=6), json_values, max_size=2)
# Half the specs are plausible, so that enough examples get past registration to Execute.
specs = (st.tuples(good_names, good_signatures, good_kinds, st.none())
         | st.tuples(any_names, any_signatures, any_kinds, options))


def _struct(values: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


async def test_arbitrary_specs_and_inputs_get_documented_codes(server):
    """Random specs and Struct inputs: every RegisterProgram and Execute answer is OK or a documented code."""
    _, stub, _ = server
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    async def one(spec, fill, values, extra):
        name, signature, module, options = spec
        spec = pb.ProgramSpec(name=name, signature=signature, module=module)
        if options is not None:
            spec.module_options.CopyFrom(_struct(options))
        inputs = dict(extra)
        try:
            program = await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=15)
            seen.append("register OK")
            if fill:
                inputs.update({field: values for field in program.input_names})
        except grpc.aio.AioRpcError as error:
            seen.append(f"register {error.code().name}")
            assert error.code() in DOCUMENTED, (error.code(), error.details())
        request = pb.ExecuteRequest(program=name, inputs=_struct(inputs))
        try:
            await stub.Execute(request, timeout=15)
            seen.append("execute OK")
        except grpc.aio.AioRpcError as error:
            seen.append(f"execute {error.code().name}")
            assert error.code() in DOCUMENTED, (error.code(), error.details())

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(spec=specs, fill=st.booleans(), values=json_values,
           extra=st.just({}) | st.dictionaries(st.text(max_size=8), json_values, max_size=3))
    def prop(**example):
        # Hypothesis runs in a thread; the gRPC calls run on the module's loop.
        asyncio.run_coroutine_threadsafe(one(**example), loop).result(timeout=40)

    await asyncio.to_thread(prop)
    assert "execute OK" in seen and "register OK" in seen  # the strategies reach the happy path too
    await _still_up(stub)


async def test_a_request_over_the_size_limit_is_invalid_argument_naming_the_limit(server):
    """Over --max-message-bytes (4 MiB here; grpc itself takes up to twice that): refused on its raw size, unparsed."""
    _, stub, _ = server
    error = await _code(stub.Execute(execute_request("qa", question="x" * (5 * 1024 * 1024)), timeout=20))
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "the limit is 4194304" in error.details()
    await _still_up(stub)
