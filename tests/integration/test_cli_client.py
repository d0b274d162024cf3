"""`dspy-pool call|register|programs|status|top|session` against one real server per module.

The CLI runs in-process through `dspy_pool.cli.main` on a thread (its gRPC channel is
synchronous; the server shares this test loop), with stdout and stderr captured; two
tests run it as a subprocess, as a user's shell would (`top` in a pseudo-terminal).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pty
import select
import signal
import socket
import sys
import time

import grpc
import pytest
import pytest_asyncio
import structlog
from google.protobuf import struct_pb2

from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

from .cli_runner import Ran, cli_runner, write_file
from .harness import running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server():
    # The server logs in this process, to the stdout the tests capture: keep its lines out.
    with structlog.testing.capture_logs():
        async with running_app(workers=2) as (app, stub, channel):
            yield app


@pytest.fixture
def target(server) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
def cli(capsys, monkeypatch, target):
    """Run `dspy-pool ARGS --target <the server>` in-process; stdin text optional."""
    return cli_runner(capsys, monkeypatch, target)



QA_YAML = """\
    name: {name}
    signature: question -> answer
    module: chain_of_thought
    """


async def _register_qa(cli, tmp_path, name: str) -> Ran:
    ran = await cli("register", write_file(tmp_path, f"{name}.yaml", QA_YAML.format(name=name)))
    assert ran.code == 0, ran.err
    return ran


async def test_register_from_yaml_then_call_prints_json(cli, tmp_path):
    """A YAML spec registers; `call --json` prints one ExecuteResponse object and nothing else."""
    registered = await _register_qa(cli, tmp_path, "cli_qa")
    assert "registered cli_qa version 1 (new version)" in registered.out
    ran = await cli("call", "cli_qa", '{"question": "What is DSPy?"}', "--json")
    assert ran.code == 0, ran.err
    reply = ran.json()
    assert reply["outputs"]["answer"].startswith("sim answer")
    assert reply["program"] == "cli_qa" and reply["program_version"] == 1 and reply["served_by"] == "primary"
    assert ran.err == ""


async def test_call_prints_outputs_then_a_summary_line(cli, tmp_path):
    """Without --json: the outputs as pretty JSON on stdout, who served it and how fast on stderr."""
    await _register_qa(cli, tmp_path, "cli_plain")
    ran = await cli("call", "cli_plain", '{"question": "hi"}')
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["answer"].startswith("sim answer")
    assert ran.out.startswith("{\n  ")
    summary = ran.err.strip()
    assert summary.startswith("cli_plain version 1, worker ") and "served_by primary" in summary and " ms (queue " in summary


async def test_inputs_from_stdin_and_from_files(cli, tmp_path):
    """`-` reads a JSON object from stdin; --inputs-file reads JSON or YAML."""
    await _register_qa(cli, tmp_path, "cli_inputs")
    from_stdin = await cli("call", "cli_inputs", "-", "--json", stdin='{"question": "from stdin"}')
    yaml_file = write_file(tmp_path, "inputs.yaml", "question: from a YAML file\n")
    from_yaml = await cli("call", "cli_inputs", "--inputs-file", yaml_file, "--json")
    json_file = write_file(tmp_path, "inputs.json", '{"question": "from a JSON file"}')
    from_json = await cli("call", "cli_inputs", "--inputs-file", json_file, "--json")
    for ran in (from_stdin, from_yaml, from_json):
        assert ran.code == 0, ran.err
        assert ran.json()["outputs"]["answer"].startswith("sim answer")


async def test_register_reads_every_spec_field_from_toml(cli, tmp_path):
    """A TOML list with typed fields, demos, warm-up inputs, lm_options and a fallback registers as written."""
    path = write_file(tmp_path, "specs.toml", """\
        [[programs]]
        name = "cli_typed"
        signature = "question -> answer"
        instructions = "Answer briefly."
        warmup_inputs = [{question = "warm up"}]
        lm_options = {temperature = 0.2, max_tokens = 64}
        [[programs.input_fields]]
        name = "question"
        description = "what the user asked"
        [[programs.demos]]
        question = "2+2?"
        answer = "4"
        [programs.fallback]
        chain = ["cache", "static"]
        static_outputs = {answer = "sorry"}

        [[programs]]
        name = "cli_second"
        signature = "text -> summary"
        """)
    ran = await cli("register", path, "--json")
    assert ran.code == 0, ran.err
    assert [p["spec"]["name"] for p in ran.json()["programs"]] == ["cli_typed", "cli_second"]
    got = (await cli("programs", "get", "cli_typed", "--json")).json()["spec"]
    assert got["warmup_inputs"] == [{"question": "warm up"}]
    assert got["lm_options"] == {"temperature": 0.2, "max_tokens": 64}
    assert got["fallback"]["chain"] == ["cache", "static"] and got["fallback"]["static_outputs"] == {"answer": "sorry"}
    assert got["input_fields"][0]["description"] == "what the user asked" and got["demos"] == [{"question": "2+2?", "answer": "4"}]


async def test_programs_list_get_delete(cli, tmp_path):
    """list shows the latest versions (--all-versions every one), get prints a re-registrable spec, delete removes."""
    await _register_qa(cli, tmp_path, "cli_crud")
    changed = write_file(tmp_path, "v2.yaml", QA_YAML.format(name="cli_crud") + "instructions: be brief\n")
    assert "version 2 (new version)" in (await cli("register", changed)).out
    listing = await cli("programs", "list")
    assert listing.code == 0 and "cli_crud" in listing.out
    every = (await cli("programs", "list", "--all-versions", "--json")).json()["programs"]
    assert sorted(p["version"] for p in every if p["spec"]["name"] == "cli_crud") == [1, 2]

    assert (await cli("programs", "get", "cli_crud", "--version", "1")).out.startswith("# cli_crud version 1")
    shown = await cli("programs", "get", "cli_crud")
    assert shown.out.startswith("# cli_crud version 2") and "instructions: be brief" in shown.out
    again = await cli("register", write_file(tmp_path, "shown.yaml", shown.out))
    assert "registered cli_crud version 2 (unchanged: same content)" in again.out

    deleted = await cli("programs", "delete", "cli_crud", "--version", "2")
    assert deleted.code == 0 and deleted.out.strip() == "deleted cli_crud version 2"
    assert (await cli("programs", "delete", "cli_crud", "--json")).json() == {"deleted_versions": [1]}
    gone = await cli("programs", "get", "cli_crud")
    assert gone.code == 1 and gone.err.startswith("dspy-pool: NOT_FOUND: ")


async def test_status_table_lists_every_worker(cli):
    """`status` prints serving, queue and a row per worker with its pid and state."""
    pids = [w["pid"] for w in (await cli("status", "--json")).json()["workers"]]
    ran = await cli("status")
    assert ran.code == 0, ran.err
    assert "SERVING" in ran.out and "queue" in ran.out and "workers" in ran.out
    rows = [line for line in ran.out.splitlines() if any(f" {pid} " in f" {line} " for pid in pids)]
    assert len(rows) == len(pids) == 2 and all("ready" in row for row in rows)


async def test_top_once_prints_one_frame(cli):
    """`top --once` prints one snapshot from WatchPoolStatus and exits; with --json, one object on one line (the README's
    "a line per frame", which a script following `top --json` reads; it was pretty-printed over ~90 lines)."""
    once = await cli("top", "--once", "--json")
    assert len(once.out.strip().splitlines()) == 1, once.out[:300]
    snapshot = once.json()
    assert len(snapshot["workers"]) == 2 and snapshot["serving"] is True
    ran = await cli("top", "--once")
    assert ran.code == 0, ran.err
    assert "SERVING" in ran.out and "workers" in ran.out
    assert all(str(worker["pid"]) in ran.out for worker in snapshot["workers"])


async def test_session_get_and_close_after_a_session_call(cli, tmp_path):
    """A call with --session records a turn; session get shows it; session close ends it."""
    await _register_qa(cli, tmp_path, "cli_chat")
    first = await cli("call", "cli_chat", '{"question": "hello"}', "--session", "cli-s1", "--json")
    assert first.json()["session_started"] is True
    second = await cli("call", "cli_chat", '{"question": "again"}', "--session", "cli-s1")
    assert "session cli-s1" in second.err
    shown = await cli("session", "get", "cli-s1")
    assert shown.code == 0 and shown.out.startswith("session cli-s1: 2 turns") and '"question": "hello"' in shown.out
    assert len((await cli("session", "get", "cli-s1", "--json")).json()["turns"]) == 2
    closed = await cli("session", "close", "cli-s1")
    assert closed.code == 0 and closed.out.strip() == "closed session cli-s1 (2 turns)"
    assert (await cli("session", "get", "cli-s1")).err.startswith("dspy-pool: NOT_FOUND: ")


async def test_unknown_program_is_not_found_with_its_reason(cli):
    """A server error is one stderr line, CODE: message (reason: ...), exit 1, no traceback."""
    ran = await cli("call", "cli_nope", '{"question": "hi"}')
    assert ran.code == 1 and ran.out == ""
    assert ran.err.startswith("dspy-pool: NOT_FOUND: ") and "(reason: NOT_FOUND)" in ran.err
    assert len(ran.err.splitlines()) == 1 and "Traceback" not in ran.err


@pytest.mark.parametrize("inputs", ["{question: hi}", '["a list"]'])
async def test_bad_inputs_are_a_usage_error(cli, inputs):
    """Inputs that are not a JSON object are refused before any call, exit 2."""
    ran = await cli("call", "cli_qa", inputs)
    assert ran.code == 2 and ran.out == "" and ran.err.startswith("dspy-pool: inputs")


async def test_no_server_says_so(cli):
    """Nothing listening at --target: 'no server at TARGET', exit 1."""
    with socket.socket() as held:  # bound, never listening: refused, and no other test can take the port meanwhile
        held.bind(("127.0.0.1", 0))
        free = f"127.0.0.1:{held.getsockname()[1]}"
        ran = await cli("status", at=free)
    assert ran.code == 1 and ran.err.startswith(f"dspy-pool: UNAVAILABLE: no server at {free} ")


async def test_bad_spec_file_names_the_entry_and_field(cli, tmp_path):
    """A spec file with a bad field registers nothing and names the file, entry and field, exit 2."""
    path = write_file(tmp_path, "bad.yaml", """\
        programs:
          - name: cli_fine
            signature: question -> answer
          - name: cli_broken
            signature: question -> answer
            fallback: {chain: cache}
        """)
    ran = await cli("register", path)
    assert ran.code == 2 and ran.out == ""
    assert ran.err.strip() == f'dspy-pool: {path}: programs[1] ("cli_broken"): field "fallback.chain": expected a list, got a string'
    assert "cli_fine" not in (await cli("programs", "list")).out


async def test_refused_spec_names_its_entry_and_what_was_registered(cli, tmp_path):
    """When the server refuses one spec of several, the error names it and the ones registered before it; a spec
    the server refuses (INVALID_ARGUMENT) exits 2, like one the client refuses."""
    path = write_file(tmp_path, "mixed.yaml", """\
        - {name: cli_first, signature: question -> answer}
        - {name: cli_refused, signature: question -> answer, module: no_such_kind}
        """)
    ran = await cli("register", path)
    assert ran.code == 2
    assert ran.err.startswith(f'dspy-pool: INVALID_ARGUMENT: registering "cli_refused" ({path}, entry 2 of 2): ')
    assert ran.err.rstrip().endswith("registered before it: cli_first v1")


async def test_call_as_a_subprocess(target, tmp_path):
    """`python -m dspy_pool.cli call` end to end: exit 0, the outputs as JSON on stdout."""
    spec = write_file(tmp_path, "sub.yaml", QA_YAML.format(name="cli_sub"))
    for argv in (["register", spec], ["call", "cli_sub", '{"question": "from a shell"}']):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dspy_pool.cli", *argv, "--target", target,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
    assert json.loads(out)["answer"].startswith("sim answer")
    assert b"served_by primary" in err


async def test_top_redraws_in_a_terminal_and_exits_cleanly_on_ctrl_c(target):
    """Live `top` in a terminal (rich.live) redraws until SIGINT, then exits 0 without a traceback."""
    leader, follower = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dspy_pool.cli", "top", "--interval", "0.2", "--target", target,
        stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    try:
        drawn = await asyncio.to_thread(_read_terminal, leader, until=lambda seen: seen.count(b"uptime") >= 3)
        assert drawn.count(b"uptime") >= 3  # the header of the workers table, once per frame
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 10)
        rest = await asyncio.to_thread(_read_terminal, leader, until=lambda seen: False, timeout_s=1.0)
    finally:
        os.close(leader)
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0 and b"Traceback" not in drawn + rest, (drawn + rest)[-2000:].decode(errors="replace")


def _read_terminal(fd: int, until, timeout_s: float = 20.0) -> bytes:
    """What the program wrote to its terminal, until `until(seen)`, EOF, or timeout_s."""
    seen = b""
    deadline = time.monotonic() + timeout_s
    while not until(seen) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the program exited and closed its end
            break
        if not chunk:
            break
        seen += chunk
    return seen


async def test_programs_export_writes_a_file_that_registers_the_same_versions(cli, tmp_path):
    """`programs export --all-versions` writes every version oldest first, in a file load_specs (and register) reads back."""
    from dspy_pool import spec_files

    await _register_qa(cli, tmp_path, "exported")
    changed = write_file(tmp_path, "exported2.yaml", "name: exported\nsignature: question -> answer, confidence\n")
    assert (await cli("register", changed)).code == 0
    output = tmp_path / "registry.yaml"
    ran = await cli("programs", "export", "--all-versions", "--output", str(output))
    assert ran.code == 0, ran.err
    specs = [spec for spec in spec_files.load_specs(output) if spec.name == "exported"]
    assert [spec.signature for spec in specs] == ["question -> answer", "question -> answer, confidence"]
    latest_only = await cli("programs", "export", "--format", "json")
    latest = [spec for spec in spec_files.parse_specs(latest_only.out, "json") if spec.name == "exported"]
    assert [spec.signature for spec in latest] == ["question -> answer, confidence"]


async def test_programs_list_and_export_follow_every_page(server, cli, tmp_path):
    """Three programs of ~0.9 MB each fill more than one 2 MiB ListPrograms page: `programs list` and `programs export`
    follow next_page_token and show them all."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.DSPyPoolStub(channel)
    demo = struct_pb2.Struct()
    demo.update({"question": "q" * 900_000, "answer": "a"})
    names = [f"paged{number}" for number in range(3)]
    try:
        for name in names:
            await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name=name, signature="question -> answer",
                                                                                     demos=[demo])), timeout=20)
        assert (await stub.ListPrograms(pb.ListProgramsRequest(), timeout=10)).next_page_token  # more than one page
        listed = await cli("programs", "list", "--json")
        assert listed.code == 0, listed.err
        assert set(names) <= {program["spec"]["name"] for program in json.loads(listed.out)["programs"]}
        output = tmp_path / "all.json"
        assert (await cli("programs", "export", "--format", "json", "--output", str(output))).code == 0
        from dspy_pool import spec_files
        assert set(names) <= {spec.name for spec in spec_files.load_specs(output)}
    finally:
        for name in names:
            await stub.DeleteProgram(pb.DeleteProgramRequest(name=name), timeout=10)
        await channel.close()


async def test_serve_demo_prints_proto_field_names(target, capsys):
    """`serve --demo`'s call prints the reply with proto field names (program_version), as --json does."""
    from dspy_pool import cli as cli_module

    capsys.readouterr()
    await cli_module._demo_call(target)
    printed = capsys.readouterr().out
    assert printed.startswith("demo call: ")
    reply = json.loads(printed.removeprefix("demo call: "))
    assert reply["program_version"] >= 1 and "served_by" in reply and "programVersion" not in reply


async def test_a_target_without_a_port_and_from_dspy_pool_target(server, capsys, monkeypatch, tmp_path):
    """$DSPY_POOL_TARGET is used when --target is not given; a target without a port means port 50051."""
    monkeypatch.setenv("DSPY_POOL_TARGET", f"127.0.0.1:{server.port}")
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    capsys.readouterr()
    code = await asyncio.to_thread(cli_main, ["status", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["serving"] is True
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 50051)) == 0:
            return  # a server of this machine's own listens on 50051: the rest would reach it
    monkeypatch.setenv("DSPY_POOL_TARGET", "127.0.0.1")
    code = await asyncio.to_thread(cli_main, ["status", "--timeout", "2"])
    assert code == 1 and capsys.readouterr().err.startswith("dspy-pool: UNAVAILABLE: no server at 127.0.0.1:50051 ")


def cli_main(argv: list[str]) -> int:
    from dspy_pool.cli import main

    return main(argv)


async def test_programs_list_piped_keeps_module_and_signature_whole(cli, tmp_path):
    """`programs list | grep chain_of_thought` finds the program: piped, no cell is cut and a row stays on one line."""
    signature = "question, context, a_rather_long_input_name -> answer, reasoning_notes, confidence"
    spec = write_file(tmp_path, "wide.yaml", f"name: cli_wide\nsignature: {signature}\nmodule: chain_of_thought\n")
    assert (await cli("register", spec)).code == 0
    rows = [line for line in (await cli("programs", "list")).out.splitlines() if "cli_wide" in line]
    assert len(rows) == 1 and "chain_of_thought" in rows[0] and signature in rows[0]
