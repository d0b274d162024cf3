"""Module kinds clients may name in a ProgramSpec: the operator's extension point.

A kind is a factory `(signature, **options) -> dspy.Module`. Built-ins are
`predict` and `chain_of_thought`. Operator code, imported once in the zygote
through `--programs MODULE`, adds its own:

    from dspy_pool import kinds

    @kinds.register("rag")
    def make_rag(signature, k=3):
        return MyRAG(signature, k=k)

Clients can only name kinds; they never send code.
"""

from __future__ import annotations

import re
from typing import Any, Callable

Factory = Callable[..., Any]

_KIND_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_factories: dict[str, Factory] = {}


def register(name: str, factory: Factory | None = None):
    """Register `factory` under `name`; usable as a decorator."""
    if not _KIND_NAME.fullmatch(name):
        raise ValueError(f"module kind {name!r} must match {_KIND_NAME.pattern}")

    def _add(fn: Factory) -> Factory:
        if name in _factories and _factories[name] is not fn:
            raise ValueError(f"module kind {name!r} is already registered")
        _factories[name] = fn
        return fn

    return _add(factory) if factory is not None else _add


def get(name: str) -> Factory:
    try:
        return _factories[name]
    except KeyError:
        raise KeyError(f"unknown module kind {name!r}; known kinds: {', '.join(sorted(_factories))}") from None


_worker_start_hooks: list[Callable[[], None]] = []


def on_worker_start(fn: Callable[[], None]) -> Callable[[], None]:
    """Run `fn` in every worker after fork, before it takes calls (reconnect clients, seed RNGs)."""
    _worker_start_hooks.append(fn)
    return fn


def run_worker_start_hooks() -> None:
    for hook in _worker_start_hooks:
        hook()


def names() -> list[str]:
    return sorted(_factories)


def _register_builtins() -> None:
    import dspy

    register("predict", lambda signature, **options: dspy.Predict(signature, **options))
    register("chain_of_thought", lambda signature, **options: dspy.ChainOfThought(signature, **options))


def load_builtins() -> None:
    """Import-time cost (dspy) is paid by the caller, in the zygote, never in the front."""
    if "predict" not in _factories:
        _register_builtins()
