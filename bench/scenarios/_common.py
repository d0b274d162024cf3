"""Shared bits of the scenarios: bench/ on sys.path (load.py, load_stats.py), memory readings, output."""

from __future__ import annotations

import json
import pathlib
import sys

BENCH = pathlib.Path(__file__).resolve().parent.parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import psutil  # noqa: E402

import load  # noqa: E402,F401  (re-exported for the scenarios)
import load_stats  # noqa: E402,F401

MB = 2**20


def rss_mb(pid: int) -> float | None:
    try:
        return psutil.Process(pid).memory_info().rss / MB
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def worker_pids(app) -> list[int]:
    return [h.pid for h in app.pool.worker_pool.handles() if h.pid]


def ready_workers(app) -> list:
    return [h for h in app.pool.worker_pool.handles() if getattr(h.state, "value", h.state) == "ready"]


def emit(report: dict) -> None:
    """The one JSON object on stdout (logs go to stderr)."""
    print(json.dumps(report), flush=True)
