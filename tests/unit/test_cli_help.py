"""What `dspy-pool sim-lm --help` and `dspy-pool probe --help` tell a user, and the proto script without its tools."""

from __future__ import annotations

import dataclasses
import pathlib
import socket
import subprocess
import sys

import pytest

from dspy_pool import cli
from dspy_pool.simlm import server as simlm_server
from dspy_pool.simlm.faults import FaultConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_sim_lm_help_names_the_command_and_hides_the_internal_flag(capsys):
    """`dspy-pool sim-lm --help` says `dspy-pool sim-lm`, not the module, and does not show --parent-pid."""
    text = " ".join(_help(capsys, "sim-lm").split())
    assert text.startswith("usage: dspy-pool sim-lm ") and "dspy_pool.simlm" not in text and "parent-pid" not in text
    assert "--seed SEED" in text and "the same seed, the same sequence" in text


def test_every_fault_the_sim_has_is_a_flag_that_sets_it():
    """Each *_rate of FaultConfig (the 401 and 400 ones included) has a --X-rate flag, and the flag sets that rate."""
    rates = [field.name for field in dataclasses.fields(FaultConfig) if field.name.endswith("_rate")]
    assert {"auth_error_rate", "bad_request_rate"} <= set(rates)
    parser = simlm_server.build_parser()
    for number, rate in enumerate(rates):
        args = parser.parse_args([f"--{rate.replace('_', '-')}", "0.1", "--latency", "fixed:5"])
        faults = simlm_server.fault_config(args)
        assert getattr(faults, rate) == 0.1 and faults.latency == "fixed:5", rate
        assert sum(getattr(faults, other) for other in rates) == pytest.approx(0.1)


def test_probe_help_explains_each_option_and_its_default(capsys):
    """`dspy-pool probe --help`: help text and the default for --target, --service and --timeout."""
    text = " ".join(_help(capsys, "probe").split())
    assert "server address: HOST[:PORT] (port 50051 if left out) or unix:PATH (default: $DSPY_POOL_TARGET, else 127.0.0.1:50051)" in text
    assert 'the health service name to ask: "" (default) for the whole server' in text
    assert "seconds to wait for the answer (default 3.0)" in text


def test_gen_proto_without_grpc_tools_says_what_to_install():
    """scripts/gen_proto.py without grpcio-tools: one line naming pip install -e '.[dev]', exit 1, no traceback."""
    hide = ("import runpy, sys; sys.modules['grpc_tools'] = None; sys.argv = ['gen_proto.py', '--check']; "
            "runpy.run_path('scripts/gen_proto.py', run_name='__main__')")
    ran = subprocess.run([sys.executable, "-c", hide], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1 and "Traceback" not in ran.stderr
    assert "pip install -e '.[dev]'" in ran.stderr and len(ran.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["status"], ["probe", "--timeout", "0.5"]])
def test_target_before_the_subcommand_is_used(command, capsys, monkeypatch):
    """`dspy-pool --target X status` (and probe) goes to X: a port nobody listens on says so (was 'invalid choice')."""
    monkeypatch.delenv("DSPY_POOL_TARGET", raising=False)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, not listening: a refused connection
        assert cli.main(["--target", f"127.0.0.1:{port}", *command, *(["--timeout", "2"] if command == ["status"] else [])]) == 1
    err = capsys.readouterr().err
    assert f"no server at 127.0.0.1:{port}" in err or "not serving: UNAVAILABLE" in err, err


@pytest.mark.parametrize("listen", ["127.0.0.1:99999", "127.0.0.1:65536", "127.0.0.1:x", "nope"])
def test_sim_lm_listen_refuses_a_port_out_of_range(listen):
    """`sim-lm --listen 127.0.0.1:99999` listened on 34463 (the bind wraps round): refused, as `serve` refuses it."""
    with pytest.raises(ValueError, match="0..65535"):
        simlm_server.parse_listen(listen)
    assert simlm_server.parse_listen("127.0.0.1:65535") == ("127.0.0.1", 65535)


def test_ctrl_c_before_the_command_has_started_is_one_line_and_exit_130(monkeypatch, capsys):
    """Ctrl-C in the first few hundred ms (while imports run) printed a traceback; now as later: one line, exit 130."""
    import types

    from dspy_pool import entry

    def interrupted() -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "dspy_pool.cli", types.SimpleNamespace(main=interrupted))
    assert entry.main() == 130
    assert capsys.readouterr().err == "dspy-pool: interrupted\n"
