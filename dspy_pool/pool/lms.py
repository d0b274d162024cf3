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

The engine (`--lm-engine`): `lean` is LeanLM (lean_lm.py), a client for
OpenAI-compatible chat completions; `lm15` and `litellm` are dspy.LM with that
engine; `auto` picks lean for an OpenAI-compatible endpoint (`openai/...`, or
an OpenAI-dialect provider such as `hosted_vllm/...` with an api_base) that no
HTTP proxy stands in front of, and DSPy's own selection for everything else.
A ZygoteConfig that names no engine keeps DSPy's own selection.
"""

from __future__ import annotations

import sys
import urllib.request
from typing import Any, Mapping
from urllib.parse import urlsplit

import dspy

from dspy_pool.internal import worker_pb2

DUMMY_LM = "dummy"
_DSPY_AUTO = "dspy"  # what `auto` resolves to when lean does not fit: dspy.LM(engine="auto")


def build_lm(config: worker_pb2.ZygoteConfig) -> dspy.BaseLM:
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
    engine = choose_engine(config.lm, config.lm_api_base, config.lm_engine)
    if engine == "lean":
        from dspy_pool.pool.lean_lm import DEFAULT_MAX_CONNECTIONS, LeanLM

        return LeanLM(config.lm, cache=cache_enabled, num_retries=max(0, config.lm_num_retries),
                      max_connections=max(DEFAULT_MAX_CONNECTIONS, config.worker_concurrency), **options)
    return dspy.LM(config.lm, cache=cache_enabled, num_retries=max(0, config.lm_num_retries),
                   engine="auto" if engine == _DSPY_AUTO else engine, **options)


def choose_engine(model: str, api_base: str, engine: str) -> str:
    """lean, lm15, litellm, or "dspy" (dspy.LM's own selection) for `--lm-engine ENGINE` with this model and endpoint."""
    if engine in ("lean", "lm15", "litellm"):
        return engine
    if engine == "auto" and openai_compatible(model, api_base) and not _behind_proxy(model, api_base):
        return "lean"
    return _DSPY_AUTO  # "auto" where lean does not fit, and "" (a ZygoteConfig that names no engine)


def openai_compatible(model: str, api_base: str) -> bool:
    """Whether DSPy itself would send this model's calls as OpenAI chat completions to this endpoint.

    `openai/...` with an api_base always; without one only where DSPy's native engine would take it
    (an OPENAI_BASE_URL in the environment sends DSPy's calls elsewhere, through LiteLLM). Another
    prefix needs an api_base and a provider DSPy speaks the OpenAI chat dialect to (hosted_vllm,
    ollama_chat, groq, ...), never a cloud host (Azure, Bedrock) with its own URLs and auth.
    """
    from dspy_pool.pool.lean_lm import route

    found = route(model)
    if found is None or not found.openai_chat or found.hosted:
        return False
    if api_base:
        return True
    if found.provider != "openai-chat":
        return False
    try:
        from dspy.clients.backend_selection import select_backend

        return select_backend(dspy.LM(model, engine="auto"), {}).native
    except Exception:  # another DSPy layout: an explicit --lm-api-base is the certain case
        return False


def _behind_proxy(model: str, api_base: str) -> bool:
    """Whether the standard proxy settings (HTTP(S)_PROXY, NO_PROXY) route this endpoint through a proxy.

    LeanLM connects directly; DSPy's engines honour proxies, so `auto` leaves such endpoints to them.
    """
    from dspy_pool.pool.lean_lm import resolve_endpoint

    url = urlsplit(resolve_endpoint(model, api_base or None, "-")[2])
    proxies = urllib.request.getproxies()
    return bool(proxies.get(url.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(url.hostname or "")


class LMCache:
    """Extra LMs a worker builds on demand (fallback models), one per (model, api_base)."""

    def __init__(self, config: worker_pb2.ZygoteConfig) -> None:
        self._config = config
        self._lms: dict[tuple[str, str], dspy.BaseLM] = {}

    def get(self, model: str, api_base: str) -> dspy.BaseLM:
        key = (model, api_base)
        lm = self._lms.get(key)
        if lm is None:
            config = worker_pb2.ZygoteConfig()
            config.CopyFrom(self._config)
            config.lm, config.lm_api_base = model, api_base
            lm = self._lms[key] = build_lm(config)
        return lm


def configure(config: worker_pb2.ZygoteConfig) -> dspy.BaseLM:
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
