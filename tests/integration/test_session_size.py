"""A session's history grows with every turn; what travels with a call and what GetSession returns stay bounded.

A session keeps, and a program with a history input receives, the newest turns that fit --session-history-max-bytes;
GetSession returns them (within half of --max-message-bytes, counting any it leaves out); and a call whose request
to the worker would still be too large for a frame (inputs, history and spec together) fails alone with
INVALID_ARGUMENT, instead of stopping the worker and every call on it (it used to kill a worker per call, and once
cascaded into a quarantine).

Small limits so that a few 20 KiB turns reach them: --max-message-bytes 64 KiB (a worker frame takes 192 KiB, a
GetSession reply 32 KiB of turns) or 256 KiB.
"""

import grpc
import pytest
import pytest_asyncio

from dspy_pool.v1 import dspy_pool_pb2 as pb

from .harness import execute_request, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

TURN_TEXT = "q" * 20_000  # the program echoes it in its answer: each turn holds ~40 KB of JSON


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def trimmed():
    async with running_app(workers=1, max_message_bytes=256 * 1024, session_history_max_bytes=100_000) as (app, stub, _):
        await register(stub, "chat", "question, history -> answer, turns", "counts_history")
        yield app, stub


async def _turn(stub, session_id: str, number: int) -> pb.ExecuteResponse:
    return await stub.Execute(execute_request("chat", session_id=session_id, question=f"{number} {TURN_TEXT}"), timeout=30)


async def test_a_session_keeps_and_a_program_receives_the_newest_turns_that_fit(trimmed):
    """The store keeps the newest turns within --session-history-max-bytes (older ones could never be read again), so a
    program receives them and GetSession returns them, with nothing left out."""
    _, stub = trimmed
    seen = [int((await _turn(stub, "long", number)).outputs["turns"]) for number in range(6)]
    assert seen == [0, 1, 2, 2, 2, 2]  # two ~40 KB turns fit 100,000 bytes
    session = await stub.GetSession(pb.GetSessionRequest(session_id="long"), timeout=10)
    assert len(session.turns) == 2 and session.turns_left_out == 0
    assert session.turns[-1].inputs["question"].startswith("5 ") and session.turns[0].inputs["question"].startswith("4 ")


async def test_a_request_too_large_for_a_worker_fails_alone_and_the_worker_keeps_serving():
    """History allowed past what a worker frame takes (an operator's setting): that call is INVALID_ARGUMENT naming the
    sizes, the worker is not restarted, other calls and sessions go on, and GetSession still answers."""
    async with running_app(workers=1, max_message_bytes=64 * 1024, session_history_max_bytes=10_000_000) as (app, stub, _):
        await register(stub, "chat", "question, history -> answer, turns", "counts_history")
        codes = []
        for number in range(7):  # 7 x ~40 KB of history passes 192 KiB
            try:
                await _turn(stub, "huge", number)
                codes.append("OK")
            except grpc.aio.AioRpcError as error:
                codes.append(error.code().name)
                assert "over the worker's limit" in error.details()
        assert codes[:4] == ["OK"] * 4 and codes[-1] == "INVALID_ARGUMENT"
        assert int((await _turn(stub, "other", 0)).outputs["turns"]) == 0
        status = await stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=10)
        assert status.worker_restarts == 0 and status.serving
        session = await stub.GetSession(pb.GetSessionRequest(session_id="huge"), timeout=10)  # within 32 KiB: no turn
        assert (len(session.turns), session.turns_left_out) == (0, codes.count("OK"))
