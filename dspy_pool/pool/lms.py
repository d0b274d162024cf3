"""Configure DSPy inside a worker: the LM, a bounded cache, history off.

DSPy keeps every call in `lm.history` unless told otherwise, which grows
without bound in a long-lived worker; `disable_history` turns that off. The
response cache lives in memory only, capped by entry count (0 disables it).

LiteLLM off the loop: DSPy 3.4 runs a call on its native engine unless a
setting cannot be carried there (an unknown generation option such as
`{"foo": 1}`, extra client keys, a model it cannot route); then it falls back
to LiteLLM, which it imports on that first call, synchronously, inside the
coroutine: the worker's event loop stalled 2.1 to 2.4 s here (4 to 7 s on a
loaded machine), and every call on that worker with it. `prepare_engine`
answers "would this LM with these options need LiteLLM?" offline and, if so,
imports it on the calling thread: the zygote before fork, or a worker's build
thread, never its loop.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping

import dspy

from dspy_pool.internal import worker_pb2

DUMMY_LM = "dummy"


def build_lm(config: worker_pb2.ZygoteConfig) -> dspy.LM:
    cache_enabled = config.lm_cache_entries > 0
    if config.lm == DUMMY_LM:
        from dspy_pool.simlm.engine import make_dummy_lm

        return make_dummy_lm()
    options: dict = {}
    if config.lm_api_base:
        options["api_base"] = config.lm_api_base
    if config.lm_api_key:
        options["api_key"] = config.lm_api_key
    if config.lm_timeout_s > 0:
        options["timeout"] = config.lm_timeout_s
    if config.lm_max_tokens > 0:
        options["max_tokens"] = config.lm_max_tokens
    if config.lm_temperature > 0:
        options["temperature"] = config.lm_temperature
    return dspy.LM(config.lm, cache=cache_enabled, num_retries=max(0, config.lm_num_retries), **options)


class LMCache:
    """Extra LMs a worker builds on demand (fallback models), one per (model, api_base)."""

    def __init__(self, config: worker_pb2.ZygoteConfig) -> None:
        self._config = config
        self._lms: dict[tuple[str, str], dspy.LM] = {}

    def get(self, model: str, api_base: str) -> dspy.LM:
        key = (model, api_base)
        lm = self._lms.get(key)
        if lm is None:
            config = worker_pb2.ZygoteConfig()
            config.CopyFrom(self._config)
            config.lm, config.lm_api_base = model, api_base
            lm = self._lms[key] = build_lm(config)
        return lm


def configure(config: worker_pb2.ZygoteConfig) -> dspy.LM:
    dspy.configure_cache(
        enable_disk_cache=False,
        enable_memory_cache=config.lm_cache_entries > 0,
        memory_max_entries=max(1, config.lm_cache_entries),
    )
    lm = build_lm(config)
    dspy.configure(lm=lm, disable_history=True, track_usage=True)
    return lm


_PROBE_MESSAGES = [{"role": "user", "content": "probe"}]


def litellm_loaded() -> bool:
    return "litellm" in sys.modules


def needs_litellm(lm: Any, options: Mapping[str, Any]) -> bool:
    """Whether a call on `lm` with `options` would leave DSPy's native engine for LiteLLM (decided offline)."""
    if not isinstance(getattr(lm, "_engine_spec", None), str):
        return False  # a custom engine (the dummy LM) brings its own client
    try:
        from dspy._vendor.lm15.providers.openai_chat import request_from_openai_chat
        from dspy.clients.backend_selection import CLIENT_KEYS, select_backend
    except ImportError:  # another DSPy layout: assume LiteLLM, so the import happens here, off the loop
        return True
    try:
        selection = select_backend(lm, dict(options))
        if not selection.native:
            return True
        # The same body DSPy's native path builds (execution._canonical), with a probe message.
        skipped = CLIENT_KEYS | {"n", "rollout_id", "num_generations", "prompt_cache"}
        body = {k: v for k, v in {**lm.kwargs, **options}.items() if k not in skipped and v is not None}
        compat = getattr(selection.resolution, "compat", None)
        request_from_openai_chat({**body, "model": lm.model, "messages": _PROBE_MESSAGES}, compat=compat)
    except Exception:  # refused natively (or the probe itself failed): the call would go to LiteLLM
        return True
    return False


def load_litellm() -> None:
    """Import LiteLLM the way DSPy does on first use, here rather than on an event loop."""
    from dspy.clients._litellm import get_litellm

    get_litellm(feature="dspy.LM")


def prepare_engine(lm: Any, options: Mapping[str, Any]) -> None:
    """Load LiteLLM now, on this thread, if calls on `lm` with `options` would need it."""
    if lm is not None and not litellm_loaded() and needs_litellm(lm, options):
        load_litellm()
