"""Status codes at the edge: unset Values, bursts past the queue, sessions at their cap, draining (one server per module)."""

import asyncio

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from structlog.testing import capture_logs

from dspy_pool.server.app import App
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import eventually, execute_request, make_config, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

MAX_QUEUE = 50
MAX_SESSIONS = 3


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with running_app(max_queue=MAX_QUEUE, worker_concurrency=8, max_sessions=MAX_SESSIONS) as (app, stub, channel):
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        await register(stub, "qa", "question -> answer")
        await register(stub, "chat", "question, history -> answer, turns", "counts_history")
        yield app, stub, channel


async def _error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def _unset_value_struct(struct, key: str) -> None:
    """Add `key` whose Value has no kind set (what a buggy client library can send)."""
    struct.fields[key].Clear()
    struct.fields[key].list_value.values.add()  # a list holding one unset Value
    struct.fields[key].list_value.values[0].Clear()


async def test_unset_value_in_execute_inputs_is_invalid_argument(server):
    """A Value with no kind in Execute inputs is INVALID_ARGUMENT naming where, never UNKNOWN."""
    _, stub, _ = server
    request = execute_request("qa")
    _unset_value_struct(request.inputs, "question")
    error = await _error(stub.Execute(request, timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs.question[0]" in error.details() and "no kind" in error.details()


@pytest.mark.parametrize("where", ["warmup_inputs", "demos", "module_options", "static_outputs"])
async def test_unset_value_in_a_spec_is_invalid_argument(server, where):
    """Unset Values in warm-up inputs, demos, module options and static fallback outputs are INVALID_ARGUMENT."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name=f"unset_{where}", signature="question -> answer")
    if where == "warmup_inputs":
        _unset_value_struct(spec.warmup_inputs.add(), "question")
    elif where == "demos":
        _unset_value_struct(spec.demos.add(), "question")
    elif where == "module_options":
        _unset_value_struct(spec.module_options, "k")
    else:
        spec.fallback.chain.append("static")
        _unset_value_struct(spec.fallback.static_outputs, "answer")
    error = await _error(stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "no kind" in error.details()


async def test_fallback_program_must_exist(server):
    """A fallback naming a program that is not registered is INVALID_ARGUMENT at registration."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name="with_missing_fallback", signature="question -> answer")
    spec.fallback.chain.append("program")
    spec.fallback.program = "no_such_program"
    error = await _error(stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "no_such_program" in error.details()


@pytest.mark.parametrize("static, says", [({"zzz": 1}, "zzz not among answer"), ({}, "needs outputs"),
                                            ({"other": 1, "answer": "x"}, "other not among")],
                         ids=["unknown-output", "none", "one-unknown"])
async def test_static_fallback_outputs_must_be_the_programs_outputs(server, static, says):
    """Static outputs that are not the program's outputs would be served as its answer: INVALID_ARGUMENT at registration."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name="static_checked", signature="question -> answer")
    spec.fallback.chain.append("static")
    spec.fallback.static_outputs.update(static)
    error = await _error(stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and says in error.details(), error.details()


async def test_a_static_fallback_may_leave_out_the_outputs_a_module_adds(server):
    """chain_of_thought's `reasoning` is the module's, not the signature's: a static answer need not invent one."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name="static_cot", signature="question -> answer", module="chain_of_thought")
    spec.fallback.chain.append("static")
    spec.fallback.static_outputs.update({"answer": "later"})
    assert (await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)).version >= 1


async def test_a_fallback_program_must_be_able_to_answer_the_calls(server):
    """A fallback program needing inputs the calls lack, or not giving the declared outputs, would fail every call it
    should rescue: INVALID_ARGUMENT at registration; one taking fewer inputs is fine."""
    _, stub, _ = server
    await register(stub, "needs_context", "context, question -> answer")
    await register(stub, "gives_other", "question -> summary")
    for fallback, says in (("needs_context", "needs inputs context"), ("gives_other", "does not give answer")):
        spec = pb.ProgramSpec(name="rescued", signature="question -> answer", fallback=pb.FallbackSpec(chain=["program"], program=fallback))
        error = await _error(stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and says in error.details(), error.details()
    spec = pb.ProgramSpec(name="rescued", signature="context, question -> answer", fallback=pb.FallbackSpec(chain=["program"], program="qa"))
    assert (await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)).version >= 1


async def test_a_program_named_as_a_fallback_cannot_be_deleted_until_its_dependents_are(server):
    """Deleting a fallback program would leave its dependents' fallback failing: FAILED_PRECONDITION naming them,
    until the versions naming it are deleted."""
    _, stub, _ = server
    await register(stub, "plan_b", "question -> answer")
    await register(stub, "plan_a", "question -> answer", fallback=pb.FallbackSpec(chain=["program"], program="plan_b"))
    for version in (0, 1):
        error = await _error(stub.DeleteProgram(pb.DeleteProgramRequest(name="plan_b", version=version), timeout=10))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "plan_a (version 1)" in error.details(), error.details()
    await stub.DeleteProgram(pb.DeleteProgramRequest(name="plan_a"), timeout=10)
    assert list((await stub.DeleteProgram(pb.DeleteProgramRequest(name="plan_b"), timeout=10)).deleted_versions) == [1]


async def test_fallback_programs_that_would_form_a_cycle_are_refused(server):
    """A v2 naming B while B names A: neither could be deleted after (each the other's fallback): INVALID_ARGUMENT."""
    _, stub, _ = server
    await register(stub, "cycle_a", "question -> answer")
    await register(stub, "cycle_b", "question -> answer", fallback=pb.FallbackSpec(chain=["program"], program="cycle_a"))
    spec = pb.ProgramSpec(name="cycle_a", signature="question -> answer", fallback=pb.FallbackSpec(chain=["program"], program="cycle_b"))
    error = await _error(stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "cycle_a -> cycle_b -> cycle_a" in error.details(), error.details()


async def test_a_new_version_of_a_fallback_program_must_still_answer_its_dependents_calls(server):
    """A program named as another's fallback may change only so that it still takes those calls' inputs and gives their
    outputs (a v2 needing an input they lack made every rescue fail while the registration said OK)."""
    _, stub, _ = server
    await register(stub, "rescuer", "question -> answer")
    await register(stub, "rescued_by", "question -> answer", fallback=pb.FallbackSpec(chain=["program"], program="rescuer"))
    for signature, says in (("question, extra -> answer", "needs inputs extra"), ("question -> other", "does not give answer")):
        spec = pb.ProgramSpec(name="rescuer", signature=signature)
        error = await _error(stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=10))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'rescued_by' (version 1)" in error.details(), error.details()
        assert says in error.details()
    fits = pb.ProgramSpec(name="rescuer", signature="question -> answer, notes")  # more outputs: still fits
    assert (await stub.RegisterProgram(pb.RegisterProgramRequest(spec=fits), timeout=30)).version == 2


@pytest.mark.parametrize("capture, says", [
    (pb.CapturePolicy(sample_rate=2), "sample_rate"), (pb.CapturePolicy(sample_rate=float("nan")), "sample_rate"),
    (pb.CapturePolicy(sample_rate=1, split="test"), "split"), (pb.CapturePolicy(sample_rate=1, dataset="../../etc/passwd"), "capture.dataset"),
    (pb.CapturePolicy(sample_rate=1, max_examples=-5), "max_examples"), (pb.CapturePolicy(sample_rate=1, good_score=float("inf")), "good_score"),
], ids=["rate-over-1", "rate-nan", "split", "dataset-name", "max-examples", "good-score"])
async def test_a_capture_policy_is_checked_at_registration(server, capture, says):
    """A capture policy that would fail every RecordFeedback later is INVALID_ARGUMENT when the program is registered."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name="captures_badly", signature="question -> answer", capture=capture)
    error = await _error(stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and says in error.details(), error.details()


async def test_a_long_program_name_needs_a_named_feedback_dataset(server):
    """The default feedback dataset is the name + '-feedback': past the name limit it must be named in the policy."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name="p" * 128, signature="question -> answer", capture=pb.CapturePolicy(sample_rate=1))
    error = await _error(stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "capture.dataset" in error.details(), error.details()
    spec.capture.dataset = "long-feedback"
    assert (await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)).version >= 1


@pytest.mark.parametrize("score", [float("nan"), float("inf"), -float("inf"), 1e300], ids=["nan", "inf", "-inf", "huge"])
async def test_a_feedback_score_that_is_not_a_finite_number_in_range_is_invalid_and_the_call_stays_open(server, score):
    """NaN or infinite scores (or ones whose sums would overflow) are INVALID_ARGUMENT; the call can still be scored."""
    _, stub, _ = server
    await register(stub, "scored", "question -> answer", capture=pb.CapturePolicy(sample_rate=1))
    reply = await stub.Execute(execute_request("scored", question=f"q{score}"), timeout=30)
    error = await _error(stub.RecordFeedback(pb.RecordFeedbackRequest(request_id=reply.request_id, score=score, has_score=True), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "score" in error.details(), error.details()
    scored = await stub.RecordFeedback(pb.RecordFeedbackRequest(request_id=reply.request_id, score=0.5, has_score=True), timeout=10)
    assert scored.program == "scored"


async def test_a_program_spec_past_max_program_bytes_is_invalid_argument(server):
    """A spec within the message limit but past --max-program-bytes (1 MiB) is refused before any worker builds it."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name="huge_instructions", signature="question -> answer", instructions="x" * (1 << 20))
    error = await _error(stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "--max-program-bytes" in error.details(), error.details()


async def test_history_input_refused_for_a_program_without_one(server):
    """`history` sent to a program with no history input is INVALID_ARGUMENT; a history program takes it from its session."""
    _, stub, _ = server
    error = await _error(stub.Execute(execute_request("qa", question="hi", history=[]), timeout=10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "history" in error.details()


async def test_burst_past_the_queue_is_resource_exhausted_with_retry_info_never_cancelled(server):
    """3,000 concurrent calls: each is OK or RESOURCE_EXHAUSTED with RetryInfo; grpc core cancels none."""
    app, stub, _ = server
    calls = [stub.Execute(execute_request("sleepy", seconds=0.3), timeout=60) for _ in range(3000)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    codes = {}
    for result in results:
        code = grpc.StatusCode.OK if isinstance(result, pb.ExecuteResponse) else result.code()
        codes[code] = codes.get(code, 0) + 1
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert codes.get(grpc.StatusCode.RESOURCE_EXHAUSTED, 0) > 0 and codes.get(grpc.StatusCode.OK, 0) > 0
    rejected = next(r for r in results if isinstance(r, grpc.aio.AioRpcError))
    status = rpc_status.from_call(rejected)
    retry_infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry_infos, "RESOURCE_EXHAUSTED must carry RetryInfo"


async def test_session_started_and_cap_protects_active_sessions(server):
    """The first call of a session says so; at the cap a new session is refused, live ones keep their history."""
    _, stub, _ = server
    first = await stub.Execute(pb.ExecuteRequest(program="chat", session_id="cap-0", inputs=execute_request("chat", question="q").inputs), timeout=10)
    second = await stub.Execute(pb.ExecuteRequest(program="chat", session_id="cap-0", inputs=execute_request("chat", question="q").inputs), timeout=10)
    assert (first.session_started, second.session_started) == (True, False)
    assert second.outputs["turns"] == 1
    for number in range(1, MAX_SESSIONS):
        await stub.Execute(pb.ExecuteRequest(program="chat", session_id=f"cap-{number}", inputs=execute_request("chat", question="q").inputs), timeout=10)
    error = await _error(stub.Execute(pb.ExecuteRequest(program="chat", session_id="flood", inputs=execute_request("chat", question="q").inputs), timeout=10))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "active use" in error.details()
    third = await stub.Execute(pb.ExecuteRequest(program="chat", session_id="cap-0", inputs=execute_request("chat", question="q").inputs), timeout=10)
    assert third.outputs["turns"] == 2  # nobody's history was pushed out
    status = await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=5)
    assert status.sessions_refused >= 1 and status.sessions_evicted == 0
    for number in range(MAX_SESSIONS):
        await stub.CloseSession(pb.CloseSessionRequest(session_id=f"cap-{number}"), timeout=5)


async def test_calls_still_running_when_the_drain_grace_ends_get_unavailable():
    """Stopping with a short grace: calls still running and calls arriving during the drain end UNAVAILABLE, never CANCELLED."""
    app = App(make_config(workers=1))
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = pb_grpc.DSPyPoolStub(channel)
    try:
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        running = [asyncio.ensure_future(stub.Execute(execute_request("sleepy", seconds=30), timeout=60)) for _ in range(3)]
        await eventually(lambda: app.pool.view().in_flight == 3)
        stopping = asyncio.ensure_future(app.stop(grace_s=1.0))
        await eventually(lambda: app.pool.worker_pool.dispatcher.closed)
        late = await _error(stub.Execute(execute_request("sleepy", seconds=0.1), timeout=10))
        assert late.code() == grpc.StatusCode.UNAVAILABLE
        results = await asyncio.gather(*running, return_exceptions=True)
        assert [r.code() for r in results] == [grpc.StatusCode.UNAVAILABLE] * 3, [getattr(r, "details", lambda: r)() for r in results]
        assert "drain grace" in results[0].details()
        await stopping
    finally:
        await channel.close()
        await app.stop()


async def test_validation_builds_only_keys_that_will_run(server):
    """Registering (validating) programs leaves no throwaway keys on workers: every loaded key is a registered program's."""
    app, stub, _ = server
    for number in range(3):
        await register(stub, f"validated_{number}", f"question -> answer_{number}")
    registered = {entry.key for entry in app.service.registry.list(all_versions=True)}
    loaded = set().union(*(handle.loaded_programs for handle in app.pool.worker_pool.handles()))
    assert loaded and loaded <= registered, loaded - registered


async def test_worker_output_of_a_call_names_the_call_and_the_worker(server):
    """Lines a program prints reach the front's log with its request_id, program and worker."""
    app, stub, _ = server
    program = await register(stub, "chatty", "lines -> printed", "prints")
    key = app.service.registry.get("chatty").key
    with capture_logs() as logs:
        request = execute_request("chatty", lines=2)
        request.request_id = "trace-me-1"
        response = await stub.Execute(request, timeout=10)
        await eventually(lambda: len([e for e in logs if e["event"] == "worker_output" and "chatty line" in e["line"]]) == 2)
    lines = [e for e in logs if e["event"] == "worker_output" and "chatty line" in e["line"]]
    assert {(e["request_id"], e["program"], e["worker_id"]) for e in lines} == {("trace-me-1", key, response.worker.id)}
    assert lines[0]["line"] == "chatty line 0" and program.version == 1


async def test_a_deadline_the_server_capped_says_so():
    """A client deadline past --max-deadline-s is cut to it; the DEADLINE_EXCEEDED then names the cap, so a client that
    asked for a day is not left wondering why it got half a second."""
    async with running_app(workers=1, max_deadline_s=0.5) as (_, stub, _channel):
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Execute(execute_request("sleepy", seconds=3.0), timeout=60)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "caps a call's deadline at --max-deadline-s 0.5 s" in caught.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as within:  # a deadline under the cap: no such words
            await stub.Execute(execute_request("sleepy", seconds=3.0), timeout=0.3)
        assert "--max-deadline-s" not in (within.value.details() or "")


async def test_one_client_at_its_limit_does_not_hold_back_another():
    """--client-max-in-flight 2: a third concurrent call of client a is RESOURCE_EXHAUSTED with a retry hint, while
    client b's call runs (a flooding client took every slot and starved the others)."""
    async with running_app(workers=1, worker_concurrency=8, client_max_in_flight=2) as (_, stub, _channel):
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        as_a = (("x-dspy-pool-client", "a"),)
        held = [asyncio.ensure_future(stub.Execute(execute_request("sleepy", seconds=1.0), metadata=as_a, timeout=30))
                for _ in range(2)]
        async def both_running() -> bool:
            return (await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=5)).in_flight == 2

        await eventually(both_running, timeout_s=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Execute(execute_request("sleepy", seconds=0.01), metadata=as_a, timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--client-max-in-flight" in refused.value.details()
        other = await stub.Execute(execute_request("sleepy", seconds=0.01), metadata=(("x-dspy-pool-client", "b"),), timeout=30)
        assert other.outputs["slept"] == 0.01
        assert [reply.outputs["slept"] for reply in await asyncio.gather(*held)] == [1.0, 1.0]
        again = await stub.Execute(execute_request("sleepy", seconds=0.01), metadata=as_a, timeout=30)
        assert again.outputs["slept"] == 0.01


async def test_an_auto_optimize_trigger_on_a_server_that_cannot_optimize_is_failed_precondition(server):
    """--optimizer-workers 0 on a store no replica shares: a trigger would never start a job (it was accepted and
    silently did nothing)."""
    _, stub, _ = server
    job = pb.StartOptimizationRequest(dataset="d", optimizer="labeled_few_shot", metric=pb.MetricSpec(kind="exact_match"))
    policy = pb.ExecutionPolicy(program="qa", auto_optimize=pb.AutoOptimize(job=job, after_feedback_examples=3))
    error = await _error(stub.SetExecutionPolicy(pb.SetExecutionPolicyRequest(policy=policy), timeout=10))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "--optimizer-workers 0" in error.details(), error.details()
