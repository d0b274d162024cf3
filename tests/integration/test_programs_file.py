"""--programs-file: specs registered before SERVING, idempotent across restarts; bad files stop start-up naming what is wrong."""

from __future__ import annotations

import textwrap

import grpc
import pytest

from dspy_pool import cli
from dspy_pool.server.app import App
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .harness import execute_request, make_config

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(90)]

PROGRAMS = textwrap.dedent("""
    programs:
      - name: qa
        signature: "question -> answer"
        module: chain_of_thought
        warmup_inputs:
          - {question: "warm?"}
        fallback:
          chain: [static]
          static_outputs: {answer: "later"}
      - name: sleepy
        signature: "seconds -> slept"
        module: sleepy
""")


async def _programs(app: App) -> list[tuple[str, int, bool]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        listed = await pb_grpc.DSPyPoolStub(channel).ListPrograms(pb.ListProgramsRequest(all_versions=True), timeout=10)
        reply = await pb_grpc.DSPyPoolStub(channel).Execute(execute_request("qa", question="hi"), timeout=20)
        assert reply.outputs["answer"]
    return [(p.spec.name, p.version, bool(p.spec.warmup_inputs)) for p in listed.programs]


async def test_programs_from_a_file_are_registered_before_serving_and_again_keep_their_versions(tmp_path):
    """A YAML file's specs (warm-up inputs and fallback included) are there when start() returns; a restart keeps versions."""
    path = tmp_path / "programs.yaml"
    path.write_text(PROGRAMS)
    config = make_config(state=f"sqlite:///{tmp_path}/state.db", programs_file=str(path), workers=1)
    for _ in range(2):
        app = App(config)
        try:
            await app.start()
            assert await _programs(app) == [("qa", 1, True), ("sleepy", 1, False)]
        finally:
            await app.stop()


async def test_a_spec_the_worker_refuses_stops_start_up_naming_the_file_and_program(tmp_path):
    """An entry that fails to build (unknown module kind) stops start-up with the file and the program named."""
    path = tmp_path / "programs.yaml"
    path.write_text("- {name: broken, signature: 'a -> b', module: no_such_kind}\n")
    app = App(make_config(programs_file=str(path), workers=1))
    with pytest.raises(ValueError) as caught:
        await app.start()
    assert str(path) in str(caught.value) and "broken" in str(caught.value) and "no_such_kind" in str(caught.value)


async def test_a_malformed_file_stops_serve_before_anything_starts(tmp_path, capsys):
    """`dspy-pool serve --programs-file` with an unknown field exits 2 naming the file, the entry and the field."""
    path = tmp_path / "programs.yaml"
    path.write_text("- {name: ok, signature: 'a -> b'}\n- {name: typo, signatur: 'a -> b'}\n")
    assert cli.main(["serve", "--state", "memory", "--programs-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "typo" in err and "signatur" in err
