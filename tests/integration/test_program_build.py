"""Programs are built in the worker off its event loop, bounded in width, with declared options and typed inputs (issue 9).

One server for the module: two workers, a short hang timeout (a worker whose
loop stops answering pings for 3 s is killed as hung), the chaos kinds and the
operator kinds of tests/fixtures/operator_kinds.py.
"""

import asyncio
import json

import grpc
import pytest
import pytest_asyncio

from dspy_pool.fields import MAX_FIELDS
from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import CHAOS, execute_request, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

UNRELATED_CALLS = 20


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with running_app(workers=2, worker_concurrency=32, hang_timeout_s=3.0,
                           programs=(CHAOS, "tests.fixtures.operator_kinds")) as (app, stub, _):
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        await asyncio.gather(*(stub.Execute(execute_request("sleepy", seconds=0.05), timeout=20) for _ in range(8)))
        yield app, stub


async def _code(call) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


async def _while_unrelated_calls_run(stub, work):
    """Run `work` while UNRELATED_CALLS calls of another program, spread over a few seconds, run on the same workers."""
    async def call(number):
        await asyncio.sleep(number * 0.3)
        return await _code(stub.Execute(execute_request("sleepy", seconds=0.2), timeout=30))

    outcome, *calls = await asyncio.gather(_code(work), *(call(n) for n in range(UNRELATED_CALLS)))
    return outcome, calls


def _register(stub, spec: pb.ProgramSpec):
    return stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)


async def test_a_wide_program_builds_while_unrelated_calls_succeed(server):
    """255 described inputs build (minutes, then a hung worker, before) while 20 calls on the same workers all succeed."""
    _, stub = server
    before = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    inputs = [pb.FieldSpec(name=f"f{i}", type="int" if i % 2 else "", description=f"input {i}") for i in range(MAX_FIELDS - 1)]
    wide = pb.ProgramSpec(name="wide", input_fields=inputs, output_fields=[pb.FieldSpec(name="answer")])
    outcome, calls = await _while_unrelated_calls_run(stub, _register(stub, wide))
    assert outcome == (grpc.StatusCode.OK, "")
    assert calls == [(grpc.StatusCode.OK, "")] * UNRELATED_CALLS
    after = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    assert after.worker_restarts == before.worker_restarts  # no worker was killed as hung


async def test_a_slow_operator_build_runs_off_the_workers_loop(server):
    """A factory that blocks for 6 s does not stall its worker: pings are answered and every unrelated call succeeds."""
    _, stub = server
    slow = pb.ProgramSpec(name="slow", signature="question -> k", module="slow_build")
    slow.module_options.update({"seconds": 6})
    before = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    outcome, calls = await _while_unrelated_calls_run(stub, _register(stub, slow))
    assert outcome == (grpc.StatusCode.OK, "")
    assert calls == [(grpc.StatusCode.OK, "")] * UNRELATED_CALLS
    after = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    assert after.worker_restarts == before.worker_restarts


async def test_a_too_wide_program_is_invalid(server):
    """More than 256 fields, in field lists or in the signature string, is INVALID_ARGUMENT."""
    _, stub = server
    inputs = [pb.FieldSpec(name=f"f{i}") for i in range(10_000)]
    listed = pb.ProgramSpec(name="too-wide", input_fields=inputs, output_fields=[pb.FieldSpec(name="answer")])
    assert (await _code(_register(stub, listed)))[0] == grpc.StatusCode.INVALID_ARGUMENT
    written = pb.ProgramSpec(name="too-wide", signature=", ".join(f"f{i}" for i in range(300)) + " -> answer")
    code, details = await _code(_register(stub, written))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and f"at most {MAX_FIELDS}" in details


@pytest.mark.parametrize("signature", ["-> answer", "question ->", "a, a -> b", "a -> b, b", "x: os.environ -> y"])
async def test_a_malformed_signature_is_invalid(server, signature):
    """No inputs, no outputs, duplicate names or a type outside the vocabulary: INVALID_ARGUMENT."""
    _, stub = server
    code, details = await _code(register(stub, "malformed", signature))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "PATH" not in details  # DSPy once answered `os.environ` with the worker's environment


async def test_typed_inputs_are_checked_and_converted(server):
    """An int field gets 3 for 3.0 and a str field JSON text for an object; "abc", 1.5 and null are refused naming the field."""
    _, stub = server
    await register(stub, "typed", "n: int, flags: list[bool], text -> received", "echo_types")
    response = await stub.Execute(execute_request("typed", n=3, flags=[True], text={"a": 1}), timeout=20)
    assert json.loads(response.outputs["received"]) == {"n": ["int", 3], "flags": ["list", [True]], "text": ["str", '{"a": 1}']}
    for bad in ("abc", 1.5, None):
        code, details = await _code(stub.Execute(execute_request("typed", n=bad, flags=[], text="t"), timeout=20))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "'n'" in details


async def test_history_is_refused_for_a_program_without_a_history_input(server):
    """history sent to a program that does not declare it is INVALID_ARGUMENT; one that declares it takes it."""
    _, stub = server
    await register(stub, "no-history", "question -> answer")
    code, details = await _code(stub.Execute(execute_request("no-history", question="q", history=[]), timeout=20))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "history" in details
    await register(stub, "with-history", "question, history: dspy.History -> answer, turns", "counts_history")
    await stub.Execute(execute_request("with-history", question="q", history=[]), timeout=20)


async def test_declared_module_options_are_typed_and_bounded(server):
    """An operator kind's declared option reaches its factory in bounds; out of bounds or undeclared is refused by name."""
    _, stub = server
    sized = pb.ProgramSpec(name="sized", signature="question -> k", module="sized")
    sized.module_options.update({"k": 5})
    await _register(stub, sized)
    assert (await stub.Execute(execute_request("sized", question="k?"), timeout=20)).outputs["k"] == 5
    for options, named in (({"k": 11}, "'k'"), ({"k": 2, "foo": 1}, "'foo'")):
        spec = pb.ProgramSpec(name="sized-bad", signature="question -> k", module="sized")
        spec.module_options.update(options)
        code, details = await _code(_register(stub, spec))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and named in details


async def test_demos_are_data_for_the_signatures_fields(server):
    """A demo with a key that is not a field of the signature is INVALID_ARGUMENT."""
    _, stub = server
    spec = pb.ProgramSpec(name="demo-extra", signature="question -> answer")
    spec.demos.add().update({"question": "q", "answer": "a", "lm": {"model": "openai/evil"}})
    code, details = await _code(_register(stub, spec))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'lm'" in details
