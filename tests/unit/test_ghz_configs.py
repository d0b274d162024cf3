"""clients/ghz: the configs mean what the README says under ghz's rules, and run.sh fails a run whose calls failed."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from dspy_pool.server.sessions import SESSION_ID_PATTERN
from dspy_pool.v1 import dspy_pool_pb2 as pb

ROOT = pathlib.Path(__file__).resolve().parents[2]
GHZ = ROOT / "clients" / "ghz"
CONFIGS = sorted(GHZ.glob("*.json"))
# ghz copies max-duration into duration, and any duration makes it ignore total.
DURATION_KEYS = ("max-duration", "duration")
_TEMPLATE = re.compile(r"\{\{\s*(.*?)\s*\}\}")

_spec = importlib.util.spec_from_file_location("ghz_check_report", GHZ / "check_report.py")
check_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_report)


def load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text())


def worker_ids(config: dict) -> list[str]:
    """ghz's worker ids: g<worker>c<connection>, prefixed by `<name>:` when the config has a name (runner/requester.go)."""
    name = config.get("name", "").strip()
    connections = config.get("connections", 1)
    ids = [f"g{worker}c{worker % connections}" for worker in range(config.get("concurrency", 50))]
    return [f"{name}:{wid}" if name else wid for wid in ids]


def render(config: dict, worker_id: str, request_number: int) -> dict:
    """ghz's call data: the JSON text of `data` run through Go's text/template with the call's fields."""
    fields = {"WorkerID": worker_id, "RequestNumber": str(request_number)}

    def substitute(match: re.Match) -> str:
        action = match.group(1)
        assert action.startswith(".") and action[1:] in fields, f"template action {{{{{action}}}}} is not simulated here"
        return json.dumps(fields[action[1:]])[1:-1]  # inside a JSON string: escaped as JSON would

    return json.loads(_TEMPLATE.sub(substitute, json.dumps(config["data"])))


def test_configs_are_found():
    """The three profiles the README describes are here (so the checks below are not vacuous)."""
    assert {path.name for path in CONFIGS} == {"execute.json", "execute-proto.json", "sessions.json"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_each_profile_is_bounded_by_its_call_count(path):
    """No profile sets total together with max-duration or duration: ghz would run for the duration and ignore total."""
    config = load(path)
    assert config["total"] > 0
    assert not [key for key in DURATION_KEYS if key in config]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_each_profile_calls_an_existing_method_of_a_registered_program(path):
    """`call` names a DSPyPool method, and `data.program` is one register.py registers."""
    config = load(path)
    service, _, method = config["call"].rpartition(".")
    assert service == pb.DESCRIPTOR.services_by_name["DSPyPool"].full_name
    assert method in pb.DESCRIPTOR.services_by_name["DSPyPool"].methods_by_name
    programs = next(node.value for node in ast.parse((GHZ / "register.py").read_text()).body
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PROGRAMS")
    assert config["data"]["program"] in ast.literal_eval(programs)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_names_make_worker_ids_fit_for_session_ids(path):
    """A config's name is short and has no spaces: ghz puts it into {{.WorkerID}}."""
    name = load(path)["name"]
    assert SESSION_ID_PATTERN.fullmatch(name) and len(name) <= 64


def test_sessions_template_renders_valid_session_ids_one_per_worker():
    """sessions.json's session_id, rendered for every ghz worker, is a valid session id and distinct per worker."""
    config = load(GHZ / "sessions.json")
    session_ids = [render(config, worker_id, number)["session_id"] for number, worker_id in enumerate(worker_ids(config), 1)]
    for session_id in session_ids:
        assert SESSION_ID_PATTERN.fullmatch(session_id), session_id
    assert len(set(session_ids)) == config["concurrency"]
    assert session_ids[0] == "ghz-dspy-pool-sessions:g0c0"


def test_the_old_sessions_name_would_have_produced_invalid_session_ids():
    """The check above catches the reported bug: a long name with spaces makes every session id invalid."""
    config = {**load(GHZ / "sessions.json"), "name": "dspy-pool sessions: one conversation per ghz worker, history grows each call"}
    assert not SESSION_ID_PATTERN.fullmatch(render(config, worker_ids(config)[0], 1)["session_id"])


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_request_ids_fit(path):
    """A templated request_id stays within the server's 128 characters."""
    config = load(path)
    data = render(config, worker_ids(config)[-1], config["total"])
    assert len(data.get("request_id", "")) <= 128


def test_proto_paths_resolve_from_the_repository_root():
    """execute-proto.json's proto and import paths exist relative to the repository root, where run.sh runs ghz."""
    config = load(GHZ / "execute-proto.json")
    assert (ROOT / config["proto"]).is_file()
    for path in config["import-paths"]:
        assert (ROOT / path).is_dir()
    assert any((ROOT / path / "dspy_pool/v1/dspy_pool.proto").is_file() for path in config["import-paths"])


def report(statuses: dict[str, int], errors: dict[str, int] | None = None) -> dict:
    """A ghz JSON report, trimmed to the fields check_report reads (runner/reporter.go)."""
    return {"name": "dspy-pool-execute", "endReason": "normal", "count": sum(statuses.values()), "rps": 100.0,
            "statusCodeDistribution": statuses, "errorDistribution": errors or {}, "details": []}


@pytest.mark.parametrize("sample, code", [
    (report({"OK": 5000}), 0),
    (report({"OK": 4999, "Unavailable": 1}, {"rpc error: code = Unavailable desc = draining": 1}), 1),
    (report({"InvalidArgument": 2000}, {"rpc error: code = InvalidArgument desc = session_id must match": 2000}), 1),
    (report({}), 1),
    (report({"OK": 10, "": 1}, {"EOF": 1}), 1),
], ids=["all-ok", "one-error", "all-failed", "no-calls", "error-without-status"])
def test_check_report(tmp_path, capsys, sample, code):
    """All OK passes; any non-OK status (or a status-less failure) fails; a run with no call fails."""
    path = tmp_path / "report.json"
    path.write_text(json.dumps(sample))
    assert check_report.main([str(path)]) == code
    assert ("FAILED" in capsys.readouterr().out) == bool(code)


def test_check_report_fails_a_missing_or_unreadable_report(tmp_path):
    """ghz that wrote no report, or not JSON, fails the check."""
    garbage = tmp_path / "garbage.json"
    garbage.write_text("summary, not json")
    assert check_report.main([str(tmp_path / "missing.json")]) == 1
    assert check_report.main([str(garbage)]) == 1


FAKE_GHZ = """#!/usr/bin/env bash
# Stands in for ghz: writes $FAKE_REPORT to the -o path, or exits 1 without a report when FAKE_REPORT is unset.
while [[ $# -gt 0 ]]; do if [[ "$1" == "-o" ]]; then out="$2"; shift; fi; shift; done
[[ -n "${FAKE_REPORT:-}" ]] || exit 1
cp "$FAKE_REPORT" "$out"
"""
# Stands in for the Python that run.sh uses: registering needs a server, checking reports does not.
FAKE_PYTHON = f"""#!/usr/bin/env bash
case "$1" in *register.py) exit 0;; esac
exec {sys.executable} "$@"
"""


def run_sh(tmp_path, sample: dict | None) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("ghz", FAKE_GHZ), ("python", FAKE_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
           "GHZ_REPORTS": str(tmp_path / "reports")}
    env.pop("FAKE_REPORT", None)
    if sample is not None:
        (tmp_path / "sample.json").write_text(json.dumps(sample))
        env["FAKE_REPORT"] = str(tmp_path / "sample.json")
    return subprocess.run(["bash", str(GHZ / "run.sh"), "127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("sample, code", [
    (report({"OK": 100}), 0),
    (report({"InvalidArgument": 100}, {"invalid session_id": 100}), 1),
    (None, 1),
], ids=["all-ok", "all-failed", "ghz-failed"])
def test_run_sh_exit_code_follows_the_reports(tmp_path, sample, code):
    """run.sh exits 1 when ghz's report shows failed calls (ghz itself exits 0) or ghz fails, and 0 when every call was OK."""
    result = run_sh(tmp_path, sample)
    assert result.returncode == code, result.stdout + result.stderr
    if sample is not None:
        assert sorted(path.name for path in (tmp_path / "reports").iterdir()) == ["execute-proto.json", "execute.json", "sessions.json"]
