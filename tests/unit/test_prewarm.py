"""Pre-fork warm-up: what a worker's first call would load is loaded, and no thread is left to fork."""

from __future__ import annotations

import json
import subprocess
import sys

_PROBE = """
import json, sys, threading
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool import prewarm
prewarm.warm_before_fork(wire.ZygoteConfig(lm=sys.argv[1], lm_api_base="http://127.0.0.1:9/v1", lm_api_key="k"))
from dspy.clients import model_metadata
print(json.dumps({
    "threads": threading.active_count(),
    "metadata_loaded": model_metadata._data is not None,
    "lazy_modules": [name for name in prewarm._LAZY_MODULES if name not in sys.modules],
}))
"""


def run_probe(lm: str) -> tuple[dict, str]:
    done = subprocess.run([sys.executable, "-c", _PROBE, lm], capture_output=True, text=True, timeout=60,
                          env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": ""})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_warm_up_loads_first_call_costs_and_leaves_one_thread():
    """DSPy's model-metadata map and lazy modules are loaded; the zygote may still fork safely."""
    report, stderr = run_probe("openai/gpt-4o-mini")
    assert report == {"threads": 1, "metadata_loaded": True, "lazy_modules": []}
    assert "failed" not in stderr and "left threads" not in stderr


def test_a_broken_lm_config_does_not_stop_the_warm_up():
    """An LM dspy.LM cannot build still gets the rest of the warm-up; the worker reports the LM error itself."""
    report, stderr = run_probe("")  # dspy.LM("") raises ValueError
    assert "_build_configured_lm failed: ValueError" in stderr
    assert report == {"threads": 1, "metadata_loaded": True, "lazy_modules": []}
