"""The Node.js client's own tests (node --test) against a real server they start."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "clients" / "node"

pytestmark = pytest.mark.timeout(150)


def _server_bin() -> str | None:
    """The dspy-pool script of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).with_name("dspy-pool")
    return str(beside) if beside.exists() else shutil.which("dspy-pool")


def test_node_client_suite_passes():
    """`node --test clients/node/test` exits 0 (register, execute, NOT_FOUND, sessions, deadlines)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not on PATH")
    if not (NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("clients/node/node_modules is missing; run `npm ci --prefix clients/node`")
    server_bin = _server_bin()
    if server_bin is None:
        pytest.skip("the dspy-pool script is not installed")
    env = {**os.environ, "DSPY_POOL_BIN": server_bin}
    # Its own process group, so a hung run takes the server it started down with it.
    process = subprocess.Popen(
        [node, "--test", "clients/node/test"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=140)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"node --test timed out:\n{stdout[-6000:]}\n{stderr[-3000:]}")
    assert process.returncode == 0, f"node --test failed ({process.returncode}):\n{stdout[-6000:]}\n{stderr[-3000:]}"
