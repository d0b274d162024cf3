"""The architecture's seams, checked on the source: server/ reaches the pool through its API only."""

from __future__ import annotations

import ast
import pathlib

SERVER = pathlib.Path(__file__).resolve().parents[2] / "dspy_pool" / "server"
# What server/ may import from the pool: the call API and the metrics it exports.
ALLOWED_POOL_MODULES = {"dspy_pool.pool.api", "dspy_pool.pool.metrics"}


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_server_never_imports_worker_wire_messages_or_handles():
    """No module in server/ imports dspy_pool.internal, or any pool module but the API and metrics."""
    offenders = {}
    for path in sorted(SERVER.glob("*.py")):
        bad = {name for name in _imports(path)
               if name.startswith("dspy_pool.internal") or (name.startswith("dspy_pool.pool") and name not in ALLOWED_POOL_MODULES)}
        if bad:
            offenders[path.name] = sorted(bad)
    assert not offenders, offenders
