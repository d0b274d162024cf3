"""client_cli's pure parts: reading inputs, describing gRPC errors, the serve hint, the status view."""

from __future__ import annotations

import io

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from rich.console import Console

from dspy_pool import client_cli, status_view, structs
from dspy_pool.client_cli import UsageError
from dspy_pool.v1 import dspy_pool_pb2 as pb


class FakeRpcError(grpc.RpcError):
    """What a sync stub raises: code, details, and the trailers a rich status travels in."""

    def __init__(self, code: grpc.StatusCode, details: str, info: error_details_pb2.ErrorInfo | None = None):
        self._code, self._details, self._trailers = code, details, ()
        if info is not None:
            packed = any_pb2.Any()
            packed.Pack(info)
            status = status_pb2.Status(code=code.value[0], message=details, details=[packed])
            self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


# -- inputs -------------------------------------------------------------------------------


def test_inputs_come_from_the_argument_stdin_or_a_file(tmp_path):
    """A JSON argument, `-` for JSON on stdin, or a YAML/JSON file; none at all is {}."""
    (tmp_path / "in.yaml").write_text("question: from yaml\n")
    assert client_cli.read_inputs('{"question": "hi"}', None, io.StringIO()) == {"question": "hi"}
    assert client_cli.read_inputs("-", None, io.StringIO('{"question": "piped"}')) == {"question": "piped"}
    assert client_cli.read_inputs(None, str(tmp_path / "in.yaml"), io.StringIO()) == {"question": "from yaml"}
    assert client_cli.read_inputs(None, None, io.StringIO()) == {}


@pytest.mark.parametrize("inline, path, match", [
    ("{question: hi}", None, "inputs: invalid JSON"),
    ("[1, 2]", None, "must be a JSON object"),
    ('{"a": 1}', "in.yaml", "give the inputs once"),
    (None, "missing.json", "missing.json: cannot read"),
])
def test_bad_inputs_are_usage_errors(inline, path, match):
    """Inputs that are not one JSON object, or given twice, are a UsageError saying which."""
    with pytest.raises(UsageError, match=match):
        client_cli.read_inputs(inline, path, io.StringIO())


# -- errors -------------------------------------------------------------------------------


def test_a_refused_connection_says_no_server_at_the_target():
    """The transport's UNAVAILABLE (no ErrorInfo, a connect failure) names the target."""
    error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; Connection refused")
    assert str(client_cli.describe(error, "127.0.0.1:50051")).startswith("UNAVAILABLE: no server at 127.0.0.1:50051 (")


def test_a_server_error_shows_its_reason_and_may_have_run():
    """ErrorInfo's reason is shown, and a call that may have run says so."""
    info = error_details_pb2.ErrorInfo(reason="WORKER_CRASHED", domain="dspy-pool", metadata={"may_have_run": "true"})
    failure = client_cli.describe(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "worker 2 died", info), "t")
    assert failure == client_cli.Failure("UNAVAILABLE", "worker 2 died", "WORKER_CRASHED", may_have_run=True)
    assert str(failure) == "UNAVAILABLE: worker 2 died (reason: WORKER_CRASHED; it may have run: check before sending it again)"


@pytest.mark.parametrize("grpc_text", ["Cancelling all calls", "Socket closed", "recvmsg:Connection reset by peer",
                                       "GOAWAY received"])
def test_a_connection_the_server_closed_says_it_stopped_or_restarted(grpc_text):
    """The transport's UNAVAILABLE on a call the server ended (no ErrorInfo) names the target, not grpc's words."""
    failure = client_cli.describe(FakeRpcError(grpc.StatusCode.UNAVAILABLE, grpc_text), "127.0.0.1:4000")
    assert str(failure) == "UNAVAILABLE: the server at 127.0.0.1:4000 closed the connection (it stopped or restarted)"


def test_a_call_the_server_cancelled_says_it_stopped_or_restarted():
    """CANCELLED without an ErrorInfo, on a call the command did not cancel, is the server ending it (gRPC cancels the
    streams still open when a stop's grace runs out): named so, and an optimize watch reads it as the server stopping."""
    error = FakeRpcError(grpc.StatusCode.CANCELLED, "CANCELLED")
    assert str(client_cli.describe(error, "127.0.0.1:4000")) == (
        "CANCELLED: the server at 127.0.0.1:4000 cancelled the call (it stopped or restarted)")
    assert client_cli.ended_by_server(error)
    assert client_cli.ended_by_server(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "Socket closed"))
    caller = error_details_pb2.ErrorInfo(reason="CANCELLED", domain="dspy-pool")
    assert not client_cli.ended_by_server(FakeRpcError(grpc.StatusCode.CANCELLED, "the caller cancelled", caller))
    assert not client_cli.ended_by_server(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "no healthy worker"))


def test_the_clients_own_deadline_names_the_timeout():
    """DEADLINE_EXCEEDED without an ErrorInfo is the client's --timeout running out."""
    failure = client_cli.describe(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), "t", 2.5)
    assert str(failure) == "DEADLINE_EXCEEDED: no reply within 2.5 s (--timeout)"


# -- output -------------------------------------------------------------------------------


def test_call_summary_names_version_worker_served_by_and_latency():
    """One line: program and version, worker and pid, who served it and why, time, session."""
    response = pb.ExecuteResponse(program="qa", program_version=2, request_id="r1", served_by="static",
                                  fallback_reason="breaker_open", session_id="s1", session_started=True,
                                  worker=pb.WorkerRef(id=3, pid=42), timings=pb.Timings(total_ms=12.34, queue_wait_ms=0.5))
    assert client_cli.call_summary(response) == ("qa version 2, worker 3 (pid 42), served_by static (breaker_open), "
                                                 "12.3 ms (queue 0.5 ms), session s1 (new), request r1")


@pytest.mark.parametrize("listen, port, target", [
    ("127.0.0.1:0", 40123, "127.0.0.1:40123"),
    ("0.0.0.0:50051", 50051, "127.0.0.1:50051"),
    ("[::]:50051", 50051, "[::1]:50051"),
    ("unix:///run/dspy.sock", 0, "unix:///run/dspy.sock"),
])
def test_client_target_is_where_a_local_client_connects(listen, port, target):
    """Port 0 becomes the bound port; a wildcard address becomes loopback; unix sockets stay."""
    assert client_cli.client_target(listen, port) == target


def test_serving_hint_names_the_target_only_when_not_the_default():
    """The serve hint is a command to paste: --target only when the client needs it."""
    assert client_cli.serving_hint("127.0.0.1:50051", 50051, demo=True) == \
        """try: dspy-pool call demo_qa '{"question": "What is DSPy?"}'"""
    assert client_cli.serving_hint("127.0.0.1:0", 4000, demo=False).endswith("dspy-pool status --target 127.0.0.1:4000")


def test_status_view_shows_workers_breakers_and_quarantine():
    """The status view has a row per worker, the breakers, and the quarantined programs."""
    status = pb.PoolStatus(serving=False, queue_depth=3, config=pb.PoolConfig(max_queue=100, lm="sim"),
                           workers=[pb.WorkerStatus(id=1, pid=111, state="ready", served=7, rss_bytes=50 * 2**20),
                                    pb.WorkerStatus(id=2, pid=222, state="warming")],
                           breakers=[pb.BreakerStatus(program="qa", state="open", failure_rate=0.75, calls_in_window=8)],
                           quarantined_programs=["bad#abc"])
    console = Console(file=io.StringIO(), width=120)
    console.print(status_view.render(status, "127.0.0.1:1"))
    text = console.file.getvalue()
    assert "NOT SERVING" in text and "3 of 100" in text
    assert any("111" in line and "ready" in line and "50.0" in line for line in text.splitlines())
    assert any("222" in line and "warming" in line for line in text.splitlines())
    assert any("qa" in line and "open" in line and "75%" in line for line in text.splitlines())
    assert "quarantined: bad#abc" in text


@pytest.mark.parametrize("seconds, shown", [(0, "0s"), (59.9, "59s"), (65, "1m05s"), (3 * 3600 + 7 * 60, "3h07m"), (2 * 86400 + 4 * 3600, "2d04h")])
def test_durations_are_short(seconds, shown):
    """Uptimes fit a table column."""
    assert status_view.duration(seconds) == shown


def test_status_view_of_a_front_group_shows_each_front_and_which_runs_each_worker():
    status = pb.PoolStatus(serving=True, config=pb.PoolConfig(max_queue=100),
                           workers=[pb.WorkerStatus(id=1, pid=111, state="ready", front=1), pb.WorkerStatus(id=1, pid=222, state="ready")],
                           fronts=[pb.FrontStatus(index=0, pid=10, serving=True, answered=True), pb.FrontStatus(index=1, pid=11, in_flight=3)])
    console = Console(file=io.StringIO(), width=160)
    console.print(status_view.render(status, "127.0.0.1:1"))
    text = console.file.getvalue()
    assert "0* pid 10 serving, 0 in flight" in text and "1 pid 11 NOT serving, 3 in flight" in text
    rows = [line.split() for line in text.splitlines()]
    assert ["0", "1", "222", "ready"] in [row[:4] for row in rows] and ["1", "1", "111", "ready"] in [row[:4] for row in rows]


# -- the target ---------------------------------------------------------------------------


@pytest.mark.parametrize("given, target", [
    ("localhost", "localhost:50051"),
    ("10.0.0.5", "10.0.0.5:50051"),
    ("localhost:7000", "localhost:7000"),
    ("[::1]", "[::1]:50051"),
    ("[::1]:7000", "[::1]:7000"),
    ("::1", "[::1]:50051"),
    ("unix:///run/dspy.sock", "unix:///run/dspy.sock"),
    ("unix:relative.sock", "unix:relative.sock"),
    ("dns:///pool.internal", "dns:///pool.internal"),
])
def test_a_target_without_a_port_gets_50051(given, target):
    """HOST means HOST:50051 (grpc alone would try 443); unix: and other grpc schemes are left as given."""
    assert client_cli.target_address(given) == target


def test_dspy_pool_target_sets_the_default_target():
    """$DSPY_POOL_TARGET is the target when --target is not given (a missing port added); unset or empty, 127.0.0.1:50051."""
    assert client_cli.default_target({"DSPY_POOL_TARGET": "pool.internal"}) == "pool.internal:50051"
    assert client_cli.default_target({"DSPY_POOL_TARGET": "unix:/run/d.sock"}) == "unix:/run/d.sock"
    assert client_cli.default_target({"DSPY_POOL_TARGET": " "}) == client_cli.default_target({}) == "127.0.0.1:50051"


def test_a_target_given_before_the_subcommand_is_kept():
    """With --target on the top-level parser (add_target_option), a subcommand without --target does not reset it."""
    import argparse

    parser = argparse.ArgumentParser(prog="dspy-pool")
    client_cli.add_target_option(parser)
    client_cli.add_commands(parser.add_subparsers(dest="command", required=True))
    assert parser.parse_args(["--target", "pool.internal", "status"]).target == "pool.internal:50051"
    assert parser.parse_args(["--target", "a:1", "status", "--target", "b:2"]).target == "b:2"  # the nearer one wins
    assert not hasattr(parser.parse_args(["status"]), "target")  # left to $DSPY_POOL_TARGET, when the command runs


# -- tables -------------------------------------------------------------------------------


def test_piped_tables_keep_every_cell_whole(monkeypatch):
    """Printed to a pipe, a table is not fitted into 80 columns: the module and a long signature stay whole, a row per line."""
    signature = "question, context, a_rather_long_input_name, another_long_one -> answer, reasoning_notes, confidence"
    program = pb.Program(spec=pb.ProgramSpec(name="wide", module="chain_of_thought", signature=signature), version=1)
    piped = io.StringIO()
    monkeypatch.setattr("sys.stdout", piped)
    client_cli._console().print(client_cli.programs_table([program]))
    rows = [line for line in piped.getvalue().splitlines() if line.strip()]
    assert len(rows) == 2 and "chain_of_thought" in rows[1] and signature in rows[1]


@pytest.mark.parametrize("inline, match", [
    ('{"question": NaN}', "NaN is not a JSON number"),
    ('{"question": [Infinity]}', "Infinity is not a JSON number"),
    ('{"n": 9007199254740993}', r"inputs\.n: 9007199254740993 cannot travel exactly"),
])
def test_inputs_a_struct_would_change_are_usage_errors(inline, match):
    """NaN was sent as is and 2^53+1 as 2^53, both with exit 0 (the Python client refuses both): now refused, naming where."""
    from dspy_pool.v1 import dspy_pool_pb2 as pb

    with pytest.raises(UsageError, match=match):
        client_cli._fill_struct(pb.ExecuteRequest().inputs, client_cli.read_inputs(inline, None, io.StringIO()), "inputs")


def test_whole_numbers_in_outputs_print_as_ints():
    """A Struct number is a double: `call` printed "pid": 12676.0; whole numbers within 2^53 print as ints again."""
    from google.protobuf import struct_pb2

    struct = struct_pb2.Struct()
    struct.update({"pid": 12676, "ratio": 0.5, "nested": [{"n": 3}], "big": 2.0**60})
    assert structs.struct_to_dict(struct) == {"pid": 12676, "ratio": 0.5, "nested": [{"n": 3}], "big": 2.0**60}
