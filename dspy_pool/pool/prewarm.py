"""Pre-fork warm-up: do in the zygote, once, what every worker's first call would pay.

A fresh worker's first LM call used to cost about 70 ms more than its second
(measured with `--lm sim` at 0 ms latency: 92 ms vs 16 ms). Nearly all of it
was one-off process work, not network: DSPy loads and parses its bundled
model-metadata map (a gzipped JSON file, about 50 ms) the first time it prices
a response, and imports or compiles adapters, regexes and the engine on first
use. Doing it here, before `gc.freeze()` and fork, means every worker inherits
the result copy-on-write and its first call costs what every later call does.

Fork safety: the warm-up call runs synchronously on the in-process simulated
engine (no socket, no event loop, no thread), and the zygote checks that no
thread is left behind.
"""

from __future__ import annotations

import importlib
import sys
import threading

from dspy_pool.internal import worker_pb2 as wire

__all__ = ["warm_before_fork"]

_WARM_SIGNATURE = "question -> answer"
# Imported by DSPy on first use (found by diffing sys.modules around a worker's first call).
_LAZY_MODULES = (
    "dspy.adapters.chat_adapter",
    "dspy.adapters.json_adapter",
    "dspy.clients.engines.lm15_engine",
    "dspy.clients.execution",
    "dspy._vendor.lm15.cloud.hosts",
    "dspy._vendor.lm15.cloud.sigv4",
    "dspy_pool.pool.lean_lm",  # a fallback LM a worker builds on its loop may be a lean one
    "uvloop",
)


def warm_before_fork(config: wire.ZygoteConfig) -> None:
    """Import, load and run once what a worker's first call needs. Never raises."""
    for step in (_build_configured_lm, _import_lazy_modules, _load_model_metadata, _run_one_call_per_kind):
        try:
            step(config)
        except Exception as exc:  # a broken step costs the worker its first-call time, nothing more
            print(f"zygote: warm-up step {step.__name__} failed: {type(exc).__name__}", file=sys.stderr)
    if threading.active_count() > 1:
        # A thread does not survive fork; a lock it held would stay held in every worker.
        names = [thread.name for thread in threading.enumerate() if thread is not threading.main_thread()]
        print(f"zygote: warm-up left threads running: {names}", file=sys.stderr)


def _build_configured_lm(config: wire.ZygoteConfig) -> None:
    # A bad LM config shows up again, clearly, in the worker; here it only costs the warm-up.
    from dspy_pool.options import parse_lm_rules
    from dspy_pool.pool import lms

    lm = lms.build_lm(config)
    # If the operator's LM, or an option it allow-lists, sends calls through LiteLLM,
    # import it once here: shared by every worker, and never on a worker's loop.
    sample = {name: option.min if option.min is not None else option.choices[0]
              for name, option in parse_lm_rules(config.lm_call_options).items()}
    lms.prepare_engine(lm, sample)
    warm = getattr(lm, "warm", None)
    if callable(warm):  # the lean engine: its capability answers and TLS context, computed once here (no socket)
        warm()


def _import_lazy_modules(config: wire.ZygoteConfig) -> None:
    for name in _LAZY_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # moved in another DSPy version, or uvloop not installed
            pass


def _load_model_metadata(config: wire.ZygoteConfig) -> None:
    # DSPy prices every response from a bundled map it parses on first use;
    # source_info() triggers that load (LITELLM_LOCAL_MODEL_COST_MAP keeps it offline).
    from dspy.clients.model_metadata import source_info

    source_info()


def _run_one_call_per_kind(config: wire.ZygoteConfig) -> None:
    """One full call through Predict and ChainOfThought: adapters, parsing, pricing, usage."""
    import dspy

    from dspy_pool.simlm.engine import make_dummy_lm

    with dspy.context(lm=make_dummy_lm(), track_usage=True):
        for module_kind in (dspy.Predict, dspy.ChainOfThought):
            module_kind(_WARM_SIGNATURE)(question="warm-up")
