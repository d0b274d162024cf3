"""The Python client package (clients/python) against a real server: sync, async, sessions, errors, retries.

The client is imported from the source tree (no install step): clients/python is
put on sys.path here. One server per module, with one worker, one slot and a
queue of one, so that filling the queue (for the retry test) takes two calls.
The server runs on this test's event loop, so the blocking Client runs in a thread.
"""

import asyncio
import pathlib
import sys

import grpc
import pytest
import pytest_asyncio

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "clients" / "python"))

try:
    from dspy_pool_client import (AsyncClient, Client, InvalidArgument, NotFound, ResourceExhausted,
                                  RetryPolicy, Unavailable)
    from dspy_pool_client._gen import dspy_pool_pb2 as pb
    from dspy_pool_client.retry import NO_RETRIES
except TypeError as error:  # the same proto file registered twice with different content
    raise ImportError("clients/python/dspy_pool_client/_gen is stale against proto/: run python clients/python/generate.py") from error

from .harness import eventually, running_app  # noqa: E402

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    async with running_app(workers=1, worker_concurrency=1, max_queue=1) as (app, _stub, _channel):
        target = f"127.0.0.1:{app.port}"
        async with AsyncClient(target, default_timeout=20) as client:
            await client.register_program("qa", "question -> answer")
            await client.register_program("sleepy", "seconds -> slept", module="sleepy")
            await client.register_program("chat", "question, history: dspy.History -> answer")
            await client.register_program("exits", "code -> never", module="exits")
        yield app, target


async def test_sync_execute_returns_typed_result(server):
    """Client.execute returns the outputs as a dict, with version, worker pid, timings and usage."""
    _, target = server
    with Client(target, default_timeout=20) as client:
        result = await asyncio.to_thread(client.execute, "qa", {"question": "What is DSPy?"})
    assert result.outputs["answer"].startswith("sim answer")
    assert result.version == 1 and result.served_by == "primary" and result.worker_pid > 0
    assert result.timings.total_ms > 0 and result.usage.total_tokens > 0


async def test_async_execute_and_register_are_idempotent(server):
    """AsyncClient executes, and registering the same content again returns the existing version."""
    _, target = server
    async with AsyncClient(target, default_timeout=20) as client:
        again = await client.register_program("qa", "question -> answer")
        result = await client.execute("qa", {"question": "async?"}, timeout=10)
        status = await client.pool_status()
        assert await client.health() == "SERVING"
    assert again.version == 1 and again.created is False and again.input_names == ["question"]
    assert result.outputs["answer"] and status.serving and len(status.workers) == 1


async def test_register_with_warmup_inputs_and_bad_ones_rejected(server):
    """Warm-up inputs travel in the spec; ones that do not fit the program are INVALID_ARGUMENT."""
    _, target = server
    async with AsyncClient(target, default_timeout=20) as client:
        program = await client.register_program("warm", "question -> answer", warmup_inputs=[{"question": "warm-up"}])
        with pytest.raises(InvalidArgument) as raised:
            await client.register_program("warm-bad", "question -> answer", warmup_inputs=[{"query": "x"}])
    assert [dict(inputs) for inputs in program.raw.spec.warmup_inputs] == [{"question": "warm-up"}]
    assert "warmup_inputs[0]: inputs missing" in str(raised.value)


async def test_integral_numbers_come_back_as_int(server):
    """Struct numbers are doubles; the client turns integral ones back into int."""
    _, target = server
    async with AsyncClient(target, default_timeout=20) as client:
        result = await client.execute("sleepy", {"seconds": 0}, timeout=10)
    assert result.outputs["slept"] == 0 and isinstance(result.outputs["slept"], int)


async def test_session_context_manager_closes_the_session(server):
    """Turns made in `with client.session()` share history, and the session is gone after the block."""
    _, target = server

    def converse():
        with Client(target, default_timeout=20) as client:
            with client.session() as session:
                first = session.execute("chat", {"question": "first"})
                second = session.execute("chat", {"question": "second"})
                turns = len(session.history().turns)
            with pytest.raises(NotFound):
                client.get_session(session.session_id)
            return turns, first, second

    turns, first, second = await asyncio.to_thread(converse)
    assert turns == 2
    # What the server says of the session reaches the caller (the Result had neither field: an evicted history was silent).
    assert (first.session_started, second.session_started, first.session_lost) == (True, False, "")


async def test_async_session_closes_on_exit(server):
    """`async with client.session()` closes the session on exit, even when the block raises."""
    _, target = server
    async with AsyncClient(target, default_timeout=20) as client:
        with pytest.raises(RuntimeError):
            async with client.session() as session:
                await session.execute("chat", {"question": "hi"})
                raise RuntimeError("caller's own error")
        with pytest.raises(NotFound):
            await client.get_session(session.session_id)


async def test_unknown_program_raises_not_found_with_reason(server):
    """An unknown program raises NotFound with the status code and the ErrorInfo reason."""
    _, target = server
    async with AsyncClient(target, default_timeout=20) as client:
        with pytest.raises(NotFound) as caught:
            await client.execute("no-such-program", {"question": "?"})
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "NOT_FOUND" and "no-such-program" in caught.value.message


async def test_missing_input_raises_invalid_argument(server):
    """A missing input raises InvalidArgument (sync client) with code, reason and details."""
    _, target = server
    with Client(target, default_timeout=20) as client:
        with pytest.raises(InvalidArgument) as caught:
            await asyncio.to_thread(client.execute, "qa", {"wrong": "field"})
    error = caught.value
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.reason == "INVALID_ARGUMENT"
    assert "question" in error.message and error.details


async def _fill_queue(app, client: AsyncClient) -> list[asyncio.Task]:
    """One sleepy call running on the only slot and one waiting in the queue of one."""
    running = asyncio.create_task(client.execute("sleepy", {"seconds": 0.6}, timeout=20))
    await eventually(lambda: app.pool.worker_pool.dispatcher.in_flight == 1, timeout_s=10)
    queued = asyncio.create_task(client.execute("sleepy", {"seconds": 0.6}, timeout=20))
    await eventually(lambda: app.pool.worker_pool.dispatcher.queue_depth == 1, timeout_s=10)
    return [running, queued]


async def test_queue_full_without_retries_raises_resource_exhausted_with_hint(server):
    """With retries off, a full queue raises ResourceExhausted carrying the server's RetryInfo."""
    app, target = server
    async with AsyncClient(target, default_timeout=20) as client:
        busy = await _fill_queue(app, client)
        async with AsyncClient(target, retries=NO_RETRIES) as no_retries:
            with pytest.raises(ResourceExhausted) as caught:
                await no_retries.execute("qa", {"question": "no room"})
        await asyncio.gather(*busy)
    assert caught.value.reason == "QUEUE_FULL" and caught.value.retry_after_s and caught.value.retry_after_s > 0


async def test_queue_full_is_retried_until_it_succeeds(server):
    """RESOURCE_EXHAUSTED with RetryInfo is retried with backoff and the call eventually succeeds."""
    app, target = server
    policy = RetryPolicy(max_attempts=60, initial_backoff_s=0.05, max_backoff_s=0.2)
    async with AsyncClient(target, default_timeout=20) as client:
        rejected_before = app.pool.worker_pool.dispatcher.rejected
        busy = await _fill_queue(app, client)
        sync_client = Client(target, default_timeout=15, retries=policy)
        try:
            result = await asyncio.to_thread(sync_client.execute, "qa", {"question": "eventually"})
        finally:
            sync_client.close()
        await asyncio.gather(*busy)
    assert result.outputs["answer"]
    assert app.pool.worker_pool.dispatcher.rejected > rejected_before


async def test_call_that_kills_its_worker_is_attempted_once(server):
    """UNAVAILABLE is retryable, but not with may_have_run=true: a poison call kills one worker, not max_attempts of them."""
    app, target = server
    policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.05)
    async with AsyncClient(target, default_timeout=20, retries=policy) as client:
        before = (await client.pool_status()).worker_restarts
        with pytest.raises(Unavailable) as caught:
            await client.execute("exits", {"code": 3})

        async def replaced():
            status = await client.pool_status()
            return status if any(worker.state == "ready" for worker in status.workers) else None

        after = await eventually(replaced, timeout_s=20)
    assert caught.value.reason == "WORKER_CRASHED" and caught.value.kind == "worker_crashed"
    assert caught.value.may_have_run and not caught.value.transient
    assert after.worker_restarts == before + 1


async def test_list_programs_follows_every_page(server):
    """Three programs of ~0.9 MB each fill more than one 2 MiB page: both clients follow next_page_token to list them all."""
    _, target = server
    big = {"question": "q" * 900_000, "answer": "a"}
    async with AsyncClient(target, default_timeout=20) as client:
        for number in range(3):
            await client.register_program(f"big{number}", "question -> answer", demos=[big])
        listed = [program.name for program in await client.list_programs()]
        with Client(target, default_timeout=20) as blocking:
            listed_blocking = [program.name for program in await asyncio.to_thread(blocking.list_programs)]
        raw = await client.stub.ListPrograms(pb.ListProgramsRequest(), timeout=10)
        for number in range(3):
            await client.delete_program(f"big{number}")
    assert raw.next_page_token and len(raw.programs) < len(listed)  # more than one page
    assert listed == listed_blocking == sorted(listed) and {"big0", "big1", "big2", "qa", "chat"} <= set(listed)


async def test_closing_a_client_fails_its_calls_with_a_typed_error(server):
    """AsyncClient.close() with a call in flight: the call raises DSPyPoolError(CANCELLED), as the sync client's does
    (it raised a bare CancelledError, which a gather or TaskGroup takes for its own cancellation); a call after
    close() raises it too (grpc's UsageError or ValueError)."""
    from dspy_pool_client import DSPyPoolError

    _, target = server
    client = AsyncClient(target, default_timeout=20)
    call = asyncio.ensure_future(client.execute("sleepy", {"seconds": 2.0}))
    await asyncio.sleep(0.3)  # the call is on its way (the server holds it 2 s)
    await client.close()
    with pytest.raises(DSPyPoolError) as caught:
        await call
    assert caught.value.code == grpc.StatusCode.CANCELLED and not call.cancelled()
    with pytest.raises(DSPyPoolError, match="closed"):
        await client.execute("qa", {"question": "after close"})

    def sync_after_close():
        closed = Client(target)
        closed.close()
        closed.execute("qa", {"question": "after close"})

    with pytest.raises(DSPyPoolError, match="closed"):
        await asyncio.to_thread(sync_after_close)
