"""End to end through real gRPC, a real zygote, real workers and the simulated LM (one server per module)."""

import asyncio

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import eventually, execute_request, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with running_app(max_queue=200) as (app, stub, channel):
        await register(stub, "qa", "question -> answer", "chain_of_thought")
        await register(stub, "sleepy", "seconds -> slept", "sleepy")
        yield app, stub, channel


async def _status_code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_health_is_serving(server):
    """Health reports SERVING for the server and for the DSPyPool service once workers are ready."""
    _, _, channel = server
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "dspy_pool.v1.DSPyPool"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_service(server):
    """Server reflection exposes DSPyPool so grpcurl and ghz work without the .proto."""
    _, _, channel = server
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    async for response in responses:
        names = [s.name for s in response.list_services_response.service]
        assert "dspy_pool.v1.DSPyPool" in names
        break


async def test_execute_returns_outputs_worker_and_usage(server):
    """A call runs on a pool worker against the LM and reports outputs, worker, timings and tokens."""
    app, stub, _ = server
    response = await stub.Execute(execute_request("qa", question="What is DSPy?"), timeout=20)
    assert response.outputs["answer"].startswith("sim answer")
    assert "reasoning" in response.outputs
    assert response.program_version == 1 and response.served_by == "primary"
    assert response.worker.pid in {h.pid for h in app.pool.worker_pool.handles()}
    assert response.usage.total_tokens > 0
    assert response.timings.total_ms >= response.timings.execution_ms > 0


async def test_same_inputs_give_the_same_answer(server):
    """The simulated LM is deterministic, so a repeated call answers the same."""
    _, stub, _ = server
    first = await stub.Execute(execute_request("qa", question="same?"), timeout=20)
    second = await stub.Execute(execute_request("qa", question="same?"), timeout=20)
    assert first.outputs == second.outputs


async def test_reregistering_creates_versions(server):
    """Identical content keeps its version; new content adds one and the old stays runnable."""
    _, stub, _ = server
    first = await register(stub, "versioned", "question -> answer")
    again = await register(stub, "versioned", "question -> answer")
    changed = await register(stub, "versioned", "question -> answer", instructions="Answer tersely.")
    assert (first.version, again.version, changed.version) == (1, 1, 2)
    assert first.created and not again.created
    old = await stub.Execute(pb.ExecuteRequest(program="versioned", version=1, inputs=execute_request("x", question="q").inputs), timeout=20)
    assert old.program_version == 1
    listing = await stub.ListPrograms(pb.ListProgramsRequest(all_versions=True))
    assert [p.version for p in listing.programs if p.spec.name == "versioned"] == [1, 2]


async def test_delete_program_then_not_found(server):
    """A deleted program answers NOT_FOUND."""
    _, stub, _ = server
    await register(stub, "doomed", "a -> b")
    deleted = await stub.DeleteProgram(pb.DeleteProgramRequest(name="doomed"))
    assert list(deleted.deleted_versions) == [1]
    error = await _status_code(stub.GetProgram(pb.GetProgramRequest(name="doomed")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_unknown_program_and_version_are_not_found(server):
    """Unknown programs and versions answer NOT_FOUND with the name in the message."""
    _, stub, _ = server
    error = await _status_code(stub.Execute(execute_request("nope", question="q")))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "nope" in error.details()
    error = await _status_code(stub.Execute(pb.ExecuteRequest(program="qa", version=99)))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_missing_and_unknown_inputs_are_invalid(server):
    """Inputs are checked against the signature before anything is queued."""
    _, stub, _ = server
    error = await _status_code(stub.Execute(execute_request("qa")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "question" in error.details()
    error = await _status_code(stub.Execute(execute_request("qa", question="q", bogus=1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "bogus" in error.details()


async def test_bad_signature_is_invalid_and_server_survives(server):
    """DSPy's own parser rejects a malformed signature in a worker; the error is INVALID_ARGUMENT."""
    _, stub, _ = server
    error = await _status_code(register(stub, "broken", "question -> answer: list[", "predict"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "signature" in error.details()
    error = await _status_code(register(stub, "evil", "a: __import__('os').system('true') -> b"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    ok = await stub.Execute(execute_request("qa", question="still up?"), timeout=20)
    assert ok.outputs["answer"]


async def test_unknown_module_kind_is_invalid(server):
    """Clients can only name module kinds the operator loaded."""
    _, stub, _ = server
    error = await _status_code(register(stub, "x", "a -> b", "exec_python"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "chain_of_thought" in error.details()


async def test_error_details_carry_error_info(server):
    """Errors carry a google.rpc.Status with an ErrorInfo naming the reason."""
    _, stub, _ = server
    error = await _status_code(stub.Execute(execute_request("qa")))
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "INVALID_ARGUMENT" and info.domain == "dspy-pool"


async def test_session_history_reaches_the_program(server):
    """Calls in a session see the earlier turns as dspy.History; GetSession lists them."""
    _, stub, _ = server
    await register(stub, "chat", "question, history: dspy.History -> answer", "counts_history")
    for expected_turns in (0, 1, 2):
        request = execute_request("chat", question="hi")
        request.session_id = "session-1"
        response = await stub.Execute(request, timeout=20)
        assert response.outputs["turns"] == expected_turns
    session = await stub.GetSession(pb.GetSessionRequest(session_id="session-1"))
    assert len(session.turns) == 3 and session.turns[0].inputs["question"] == "hi"
    closed = await stub.CloseSession(pb.CloseSessionRequest(session_id="session-1"))
    assert closed.turns == 3
    error = await _status_code(stub.GetSession(pb.GetSessionRequest(session_id="session-1")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_a_session_closed_while_a_call_runs_stays_closed(server):
    """CloseSession while a call on the session runs: the call's turn is dropped (it says session_lost "closed")
    instead of making the session again; the next call starts a new one."""
    _, stub, _ = server
    first = execute_request("sleepy", seconds=0)
    first.session_id = "closed-mid-call"
    await stub.Execute(first, timeout=20)
    running = execute_request("sleepy", seconds=1.0)
    running.session_id = "closed-mid-call"
    call = asyncio.ensure_future(stub.Execute(running, timeout=20))
    await eventually(lambda: getattr(server[0].service.executor.sessions._local.get("closed-mid-call"), "in_flight", 0) == 1)
    assert (await stub.CloseSession(pb.CloseSessionRequest(session_id="closed-mid-call"), timeout=10)).turns == 1
    reply = await call
    assert reply.session_lost == "closed" and not reply.session_started
    error = await _status_code(stub.GetSession(pb.GetSessionRequest(session_id="closed-mid-call")))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    again = await stub.Execute(first, timeout=20)
    assert again.session_started and again.session_lost == ""


async def test_bad_session_id_is_invalid(server):
    """A session id that is too long or has odd characters is refused."""
    _, stub, _ = server
    request = execute_request("qa", question="q")
    request.session_id = "x" * 500
    error = await _status_code(stub.Execute(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_pool_status_lists_workers(server):
    """GetPoolStatus shows every worker with its pid and state, and the configuration."""
    _, stub, _ = server
    status = await stub.GetPoolStatus(pb.GetPoolStatusRequest())
    assert status.serving
    assert len(status.workers) == 2 and all(w.state == "ready" and w.pid > 0 for w in status.workers)
    assert status.config.worker_concurrency == 16 and "sleepy" in status.config.module_kinds


async def test_many_concurrent_calls_all_succeed(server):
    """200 concurrent calls on 2 workers all succeed and both workers serve some."""
    _, stub, _ = server
    responses = await asyncio.gather(*(stub.Execute(execute_request("qa", question=f"q{i}"), timeout=30) for i in range(200)))
    assert all(r.outputs["answer"] for r in responses)
    assert len({r.worker.pid for r in responses}) == 2


async def test_deadline_in_worker_is_deadline_exceeded_and_cancels(server):
    """A call past its deadline ends with DEADLINE_EXCEEDED and the worker frees its slot."""
    app, stub, _ = server
    error = await _status_code(stub.Execute(execute_request("sleepy", seconds=10), timeout=0.5))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: app.pool.worker_pool.dispatcher.in_flight == 0, timeout_s=5)


async def test_client_cancel_reaches_the_worker(server):
    """Cancelling the RPC cancels the running program; the worker stays alive."""
    app, stub, _ = server
    pids = {h.pid for h in app.pool.worker_pool.handles()}
    call = stub.Execute(execute_request("sleepy", seconds=10), timeout=30)
    await eventually(lambda: app.pool.worker_pool.dispatcher.in_flight == 1, timeout_s=5)
    call.cancel()
    await eventually(lambda: app.pool.worker_pool.dispatcher.in_flight == 0, timeout_s=5)
    assert {h.pid for h in app.pool.worker_pool.handles()} == pids


async def test_queue_full_is_resource_exhausted_with_retry_info(server):
    """Past worker slots plus the queue bound, calls are refused at once with a retry hint; the queued ones all run."""
    app, stub, _ = server
    slots, queue_bound, extra = 32, 200, 20
    # Deadlines long enough that no queued call expires while the burst still arrives on a loaded machine:
    # then exactly the calls past slots + queue are refused.
    calls = [stub.Execute(execute_request("sleepy", seconds=0.5), timeout=20) for _ in range(slots + queue_bound + extra)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    codes = [r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK for r in results]
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= extra - 2
    assert codes.count(grpc.StatusCode.OK) >= slots - 2
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    refused = next(r for r in results if isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rpc_status.from_call(refused).details)
    await eventually(lambda: app.pool.worker_pool.dispatcher.in_flight == 0 and app.pool.worker_pool.dispatcher.queue_depth == 0, timeout_s=5)


async def test_synchronous_program_runs_in_a_thread(server):
    """A module with only forward() runs in a thread, so concurrent calls overlap instead of queueing."""
    _, stub, _ = server
    await register(stub, "blocking", "seconds -> slept", "blocking_sync")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(stub.Execute(execute_request("blocking", seconds=0.5), timeout=20) for _ in range(6)))
    assert loop.time() - started < 2.5  # six 0.5 s sleeps in sequence would take 3 s


async def test_deeply_nested_and_huge_inputs_are_invalid(server):
    """Nesting past the limit and payloads over the size limit get INVALID_ARGUMENT or RESOURCE_EXHAUSTED."""
    _, stub, _ = server
    nested: dict = {"leaf": 1}
    for _ in range(40):
        nested = {"n": nested}
    error = await _status_code(stub.Execute(execute_request("qa", question=nested)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and ("nested" in error.details() or "decoded" in error.details())
    error = await _status_code(stub.Execute(execute_request("qa", question="x" * (5 * 1024 * 1024))))
    assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_worker_output_is_logged_not_mixed_with_protocol(server):
    """A program that prints does not disturb the protocol; the call still succeeds."""
    _, stub, _ = server
    await register(stub, "chatty", "lines -> printed", "prints")
    response = await stub.Execute(execute_request("chatty", lines=500), timeout=20)
    assert response.outputs["printed"] == 500


async def test_typed_fields_demos_and_saved_state(server):
    """Typed field lists with descriptions, demos and saved state JSON all build and run."""
    import json

    import dspy

    _, stub, _ = server
    typed = await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(
        name="typed",
        input_fields=[pb.FieldSpec(name="text", description="a sentence")],
        output_fields=[pb.FieldSpec(name="words", type="int", description="how many words")],
    )))
    assert list(typed.input_names) == ["text"] and list(typed.output_names) == ["words"]
    response = await stub.Execute(execute_request("typed", text="one two three"), timeout=20)
    assert isinstance(response.outputs["words"], float)  # Struct numbers are doubles

    predict = dspy.Predict("question -> answer")
    predict.demos = [dspy.Example(question="2+2?", answer="4")]
    state = json.dumps(predict.dump_state())
    demo = pb.ProgramSpec(name="stateful", signature="question -> answer", state_json=state)
    demo.demos.add().update({"question": "capital of France?", "answer": "Paris"})
    await stub.RegisterProgram(pb.RegisterProgramRequest(spec=demo))
    response = await stub.Execute(execute_request("stateful", question="3+3?"), timeout=20)
    assert response.outputs["answer"]


async def test_state_json_that_does_not_fit_is_invalid(server):
    """Saved state that is not JSON is refused with INVALID_ARGUMENT."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name="badstate", signature="question -> answer", state_json="{not json")
    error = await _status_code(stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "state" in error.details()


async def test_watch_pool_status_streams_snapshots(server):
    """WatchPoolStatus sends a snapshot at once and then one per interval until cancelled."""
    _, stub, _ = server
    stream = stub.WatchPoolStatus(pb.WatchPoolStatusRequest(interval_s=0.1), timeout=10)
    snapshots = []
    async for snapshot in stream:
        snapshots.append(snapshot)
        if len(snapshots) == 3:
            break
    stream.cancel()
    assert all(len(s.workers) == 2 for s in snapshots)
    assert snapshots[2].uptime_s > snapshots[0].uptime_s


async def test_registering_a_program_is_not_counted_as_a_call(server):
    """RegisterProgram builds the spec on a worker to validate it; that build is not a served call: completed, failed and
    each worker's served and failed stay as they were (a fresh server showed 'calls 1 completed' after one register)."""
    stub = server[1]

    def counts(status: pb.PoolStatus) -> tuple:
        return status.completed, status.failed, sum(w.served for w in status.workers), sum(w.failed for w in status.workers)

    before = counts(await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10))
    await register(stub, "not_a_call", "question -> answer, confidence")
    with pytest.raises(grpc.aio.AioRpcError):  # refused by the build on the worker
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(
            name="not_a_call_either", signature="question -> answer", module="chain_of_thought",
            module_options={"rationale_field": 5})), timeout=30)
    assert counts(await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)) == before
    await stub.Execute(execute_request("not_a_call", question="counted?"), timeout=30)
    completed, failed, served, worker_failed = counts(await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10))
    assert (completed, served) == (before[0] + 1, before[2] + 1) and (failed, worker_failed) == before[1::2]


async def test_deleted_programs_leave_nothing_behind_in_status_or_statistics(server):
    """Register, call, delete, many times over: GetPoolStatus's breakers and the statistics behind /metrics stay the size
    they were (3,000 such cycles grew GetPoolStatus to 432 KB and /metrics to 23,000 series); deleting one version
    drops only its figures."""
    app, stub, _ = server

    async def sizes() -> tuple[int, int]:
        status = await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)
        return len(status.breakers), len(app.service.stats.all())

    await stub.Execute(execute_request("qa", question="before"), timeout=30)
    before = await sizes()
    for n in range(5):
        await register(stub, f"churn{n}", "question -> answer")
        await stub.Execute(execute_request(f"churn{n}", question="once"), timeout=30)
        await stub.DeleteProgram(pb.DeleteProgramRequest(name=f"churn{n}"), timeout=10)
    assert await sizes() == before
    await register(stub, "two", "question -> answer")
    await register(stub, "two", "question -> answer, why")
    for version in (1, 2):
        await stub.Execute(pb.ExecuteRequest(program="two", version=version, inputs=execute_request("two", question="q").inputs), timeout=30)
    await stub.DeleteProgram(pb.DeleteProgramRequest(name="two", version=1), timeout=10)
    assert sorted(version for program, version, _ in app.service.stats.all() if program == "two") == [2]
    await stub.DeleteProgram(pb.DeleteProgramRequest(name="two"), timeout=10)
    assert await sizes() == before


async def test_watchers_share_one_status_per_tick(server, monkeypatch):
    """50 WatchPoolStatus streams at 0.1 s: the status is built about once per tick for all of them, not once per
    stream per tick (2,000 watchers each building their own took most of a core), and every stream still gets it."""
    app, stub, _ = server
    built = 0
    group_status = app.service.group_status

    async def counted():
        nonlocal built
        built += 1
        return await group_status()

    monkeypatch.setattr(app.service, "group_status", counted)
    streams = [stub.WatchPoolStatus(pb.WatchPoolStatusRequest(interval_s=0.1)) for _ in range(50)]

    async def three(stream) -> int:
        seen = 0
        async for status in stream:
            assert status.config.workers > 0
            seen += 1
            if seen == 3:
                stream.cancel()
                return seen
        return seen

    assert await asyncio.gather(*(three(stream) for stream in streams)) == [3] * 50
    assert built < 50  # 150 statuses sent; built per tick (a handful), not 150 times


async def test_a_session_that_expired_or_was_evicted_says_so_when_its_id_comes_back():
    """session_lost "expired" for a session past --session-ttl-s even before the 30 s sweep removed it (it said
    nothing), and "evicted" for one pushed out at --max-sessions 1 even when making room for it pushed another out
    (that eviction's note had displaced its own)."""
    async with running_app(workers=1, session_ttl_s=1, max_sessions=1, session_protect_s=0) as (_, stub, _):
        await register(stub, "qa", "question -> answer")

        async def turn(session_id: str) -> pb.ExecuteResponse:
            request = execute_request("qa", question="q")
            request.session_id = session_id
            return await stub.Execute(request, timeout=20)

        await turn("fading")
        await asyncio.sleep(1.2)  # past the 1 s TTL: what this test is about
        assert (await turn("fading")).session_lost == "expired"
        await turn("pushed")  # evicts "fading" (the cap is 1)
        back = await turn("fading")  # evicts "pushed" to make room
        assert back.session_started and back.session_lost == "evicted"
