"""State survives the front: `kill -9` of `dspy-pool serve`, restart on the same SQLite file, everything is back."""

from __future__ import annotations

import asyncio
import sqlite3

import grpc
import pytest

from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import ServeProcess as Server
from .harness import execute_request

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


def session_call(program: str, session_id: str, **inputs) -> pb.ExecuteRequest:
    request = execute_request(program, **inputs)
    request.session_id = session_id
    return request


async def test_kill_9_then_restart_on_the_same_file_brings_back_programs_and_sessions(tmp_path):
    """Every program version and every session's history is back after kill -9 and a restart; Execute works."""
    state = f"sqlite:///{tmp_path}/state.db"
    first = await Server("--state", state).serving()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            for signature in ("question -> answer", "question -> answer, confidence"):
                await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="qa", signature=signature)), timeout=30)
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(
                name="chat", signature="question, history -> answer, turns", module="counts_history")), timeout=30)
            for number in range(2):
                await stub.Execute(session_call("chat", "conv-1", question=f"q{number}"), timeout=30)
            before = await stub.ListPrograms(pb.ListProgramsRequest(all_versions=True), timeout=10)
    finally:
        first.kill9()  # no drain, no goodbye: only what was committed survives
        first.stop()
    second = await Server("--state", state).serving()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            after = await stub.ListPrograms(pb.ListProgramsRequest(all_versions=True), timeout=10)
            assert [(p.spec.name, p.version, p.content_hash) for p in after.programs] == \
                   [(p.spec.name, p.version, p.content_hash) for p in before.programs]
            session = await stub.GetSession(pb.GetSessionRequest(session_id="conv-1"), timeout=10)
            assert [turn.inputs["question"] for turn in session.turns] == ["q0", "q1"]
            third_turn = await stub.Execute(session_call("chat", "conv-1", question="q2"), timeout=30)
            assert third_turn.outputs["turns"] == 2 and third_turn.session_started is False
            answer = await stub.Execute(execute_request("qa", question="still there?"), timeout=30)
            assert answer.program_version == 2
            again = await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="qa", signature="question -> answer, confidence")), timeout=30)
            assert (again.version, again.created) == (2, False)  # unchanged content keeps its version
    finally:
        second.stop()


async def test_an_expired_session_stays_gone_after_a_restart(tmp_path):
    """Session TTLs hold across restarts: a session idle past the TTL is gone on the restarted server too."""
    state = f"sqlite:///{tmp_path}/state.db"
    first = await Server("--state", state).serving()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name="chat", signature="question, history -> answer, turns", module="counts_history")), timeout=30)
            await stub.Execute(session_call("chat", "short-lived", question="hi"), timeout=30)
    finally:
        first.kill9()
        first.stop()
    second = await Server("--state", state, "--session-ttl-s", "1").serving()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
            stub = pb_grpc.DSPyPoolStub(channel)
            await asyncio.sleep(1.1)  # the time itself is what is tested: idle past the restarted server's TTL
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetSession(pb.GetSessionRequest(session_id="short-lived"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        second.stop()


async def test_an_unreadable_store_stops_start_up_naming_the_path(tmp_path):
    """A corrupt file or one written by a newer schema stops start-up with the path named; the file is left as it was."""
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    code, printed = await Server("--state", f"sqlite:///{corrupt}").failed()
    assert code != 0 and str(corrupt) in printed and "Traceback" not in printed
    assert corrupt.read_bytes() == b"this is not a database" * 100

    future = tmp_path / "future.db"
    first = await Server("--state", f"sqlite:///{future}").serving()
    first.kill9()
    first.stop()
    with sqlite3.connect(future) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "meta" in tables
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    db.close()  # (`with` only commits): an open connection would keep the server out of the file
    code, printed = await Server("--state", f"sqlite:///{future}").failed()
    assert code != 0 and str(future) in printed and "newer" in printed


async def test_a_wrong_redis_url_stops_start_up_with_a_clear_error():
    """--state redis:// on a closed port fails start-up quickly, saying it cannot reach Redis, with no traceback."""
    import socket

    with socket.socket() as held:  # bound, never listening: refused, and no other test can take the port meanwhile
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        code, printed = await Server("--state", f"redis://127.0.0.1:{port}/0").failed()
    assert code != 0 and f"127.0.0.1:{port}" in printed and "Traceback" not in printed
