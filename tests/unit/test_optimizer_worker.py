"""The optimizer worker's side: which LM an allow-listed judge or reflection model resolves to."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dspy_pool.errors import PoolError
from dspy_pool.pool.optimizer_worker import lm_resolver


class _ExtraLMs:
    def __init__(self) -> None:
        self.built: list[tuple[str, str]] = []

    def get(self, model: str, api_base: str):
        self.built.append((model, api_base))
        return ("extra", model, api_base)


def _worker(model: str = "openai/sim"):
    return SimpleNamespace(lm=SimpleNamespace(model=model), extra_lms=_ExtraLMs())


def test_the_serving_lm_named_without_an_endpoint_is_the_serving_lm_itself():
    """An allow-list entry naming the serving model (no @API_BASE) resolves to the worker's own LM, at its own endpoint."""
    worker = _worker()
    assert lm_resolver(worker, ("openai/sim",))("openai/sim") is worker.lm
    assert worker.extra_lms.built == []


def test_an_allow_listed_model_with_an_endpoint_gets_its_own_lm():
    """MODEL@API_BASE builds that model at that endpoint; a model off the list is refused."""
    worker = _worker()
    lm_for = lm_resolver(worker, ("openai/judge@http://127.0.0.1:9/v1",))
    assert lm_for("openai/judge") == ("extra", "openai/judge", "http://127.0.0.1:9/v1")
    with pytest.raises(PoolError, match="allow-list"):
        lm_for("openai/gpt-4o")
