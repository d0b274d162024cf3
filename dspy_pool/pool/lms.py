"""Configure DSPy inside a worker: the LM, a bounded cache, history off.

DSPy keeps every call in `lm.history` unless told otherwise, which grows
without bound in a long-lived worker; `disable_history` turns that off. The
response cache lives in memory only, capped by entry count (0 disables it).
"""

from __future__ import annotations

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
