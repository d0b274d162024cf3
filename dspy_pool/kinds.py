"""Module kinds clients may name in a ProgramSpec: the operator's extension point.

A kind is a factory `(signature, **options) -> dspy.Module` plus the options
it declares. Built-ins are `predict` and `chain_of_thought`, which take no
options (LM call settings such as temperature go in the spec's `lm_options`,
checked against the operator's allow-list). Operator code, imported once in
the zygote through `--programs MODULE`, adds its own:

    from dspy_pool import kinds
    from dspy_pool.options import Option

    @kinds.register("rag", options={"k": Option(int, default=3, min=1, max=20)})
    def make_rag(signature, k):
        return MyRAG(signature, k=k)

Clients can only name kinds and set the options a kind declares, each typed
and bounded; anything else in `module_options` is INVALID_ARGUMENT. They never
send code.

Metric kinds for optimization jobs work the same way (`register_metric`,
`metric_names`): a factory `(fields, **options) -> metric(example,
prediction, trace=None)`, next to the built-in kinds of optimize.catalog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from dspy_pool.options import Option

Factory = Callable[..., Any]

_KIND_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True)
class Kind:
    name: str
    factory: Factory
    options: Mapping[str, Option] = field(default_factory=dict)


_kinds: dict[str, Kind] = {}


def register(name: str, factory: Factory | None = None, *, options: Mapping[str, Option] | None = None):
    """Register `factory` under `name`, taking the `options` it declares; usable as a decorator."""
    if not _KIND_NAME.fullmatch(name):
        raise ValueError(f"module kind {name!r} must match {_KIND_NAME.pattern}")
    declared = dict(options or {})
    for option_name, option in declared.items():
        if not _OPTION_NAME.fullmatch(option_name) or not isinstance(option, Option):
            raise ValueError(f"module kind {name!r}: option {option_name!r} must be an identifier mapped to an Option")

    def _add(fn: Factory) -> Factory:
        existing = _kinds.get(name)
        if existing is not None and existing.factory is not fn:
            raise ValueError(f"module kind {name!r} is already registered")
        _kinds[name] = Kind(name, fn, MappingProxyType(declared))
        return fn

    return _add(factory) if factory is not None else _add


def lookup(name: str) -> Kind:
    try:
        return _kinds[name]
    except KeyError:
        raise KeyError(f"unknown module kind {name!r}; known kinds: {', '.join(sorted(_kinds))}") from None


def get(name: str) -> Factory:
    return lookup(name).factory


_worker_start_hooks: list[Callable[[], None]] = []


def on_worker_start(fn: Callable[[], None]) -> Callable[[], None]:
    """Run `fn` in every worker after fork, before it takes calls (reconnect clients, seed RNGs)."""
    _worker_start_hooks.append(fn)
    return fn


def run_worker_start_hooks() -> None:
    for hook in _worker_start_hooks:
        hook()


def names() -> list[str]:
    return sorted(_kinds)


# -- metric kinds (optimization jobs) -------------------------------------------
@dataclass(frozen=True)
class MetricKind:
    name: str
    factory: Factory  # (fields: tuple[str, ...], **options) -> metric(example, prediction, trace=None) -> float | bool
    options: Mapping[str, Option] = field(default_factory=dict)


_metrics: dict[str, MetricKind] = {}


def register_metric(name: str, factory: Factory | None = None, *, options: Mapping[str, Option] | None = None):
    """Register a metric kind optimization jobs may name; usable as a decorator.

        @kinds.register_metric("bleu", options={"max_order": Option(int, default=4, min=1, max=8)})
        def make_bleu(fields, max_order):
            return lambda example, prediction, trace=None: bleu(example, prediction, fields, max_order)

    `fields` are the output fields the job compares (every expected output
    field when the job names none). The metric returns a score in [0, 1] (or a
    bool). The built-in kinds (exact_match, f1, ...) cannot be replaced.
    """
    from dspy_pool.optimize.catalog import METRICS

    if not _KIND_NAME.fullmatch(name):
        raise ValueError(f"metric kind {name!r} must match {_KIND_NAME.pattern}")
    if name in METRICS:
        raise ValueError(f"metric kind {name!r} is built in")
    declared = dict(options or {})
    for option_name, option in declared.items():
        if not _OPTION_NAME.fullmatch(option_name) or not isinstance(option, Option):
            raise ValueError(f"metric kind {name!r}: option {option_name!r} must be an identifier mapped to an Option")

    def _add(fn: Factory) -> Factory:
        existing = _metrics.get(name)
        if existing is not None and existing.factory is not fn:
            raise ValueError(f"metric kind {name!r} is already registered")
        _metrics[name] = MetricKind(name, fn, MappingProxyType(declared))
        return fn

    return _add(factory) if factory is not None else _add


def lookup_metric(name: str) -> MetricKind:
    try:
        return _metrics[name]
    except KeyError:
        raise KeyError(f"unknown metric kind {name!r}; registered metric kinds: {', '.join(sorted(_metrics)) or 'none'}") from None


def metric_names() -> list[str]:
    """The operator's metric kinds (the built-in ones are in optimize.catalog.METRICS)."""
    return sorted(_metrics)


def _register_builtins() -> None:
    import dspy

    # No options: everything dspy.Predict takes as keywords becomes an LM kwarg
    # (api_base, api_key, headers...), which only the operator may set.
    register("predict", lambda signature: dspy.Predict(signature))
    register("chain_of_thought", lambda signature: dspy.ChainOfThought(signature))


def load_builtins() -> None:
    """Import-time cost (dspy) is paid by the caller, in the zygote, never in the front."""
    if "predict" not in _kinds:
        _register_builtins()
