"""Build a runnable dspy.Module from a declarative ProgramSpec (in workers, on a build thread).

    spec --fields.declared_fields--> names and types checked (count, duplicates, vocabulary)
         --build_signature---------> one dspy.Signature, made in one go (linear in fields)
         --kinds.lookup------------> factory(signature, **the options the kind declares)
         --demos, state_json-------> data only, checked before DSPy loads them
         --lm_options--------------> the operator's allow-list -> each predictor's LM kwargs
         --input checks------------> one pydantic TypeAdapter per typed input, used per call

Everything is data-driven: the signature is parsed (never eval'd), saved
state is JSON, the module kind is one the operator registered. Nothing in a
spec can choose the LM, its endpoint, key or headers (DESIGN.md, hard rule 9):
module options are declared per kind, LM call options pass the allow-list,
and saved state may not carry an LM or LM kwargs. A spec that cannot be built
raises InvalidArgument, naming the field or option at fault.
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import dspy
import pydantic

from dspy_pool import fields, kinds
from dspy_pool.errors import InvalidArgument
from dspy_pool.options import Option, check_options
from dspy_pool.structs import struct_to_dict
from dspy_pool.v1 import dspy_pool_pb2 as pb

HISTORY_FIELD = fields.HISTORY
_DEMO_MARKERS = frozenset({"augmented"})  # DSPy's bootstrapped demos carry this flag
# What dspy.Predict.dump_state writes (plus "config", DSPy's LM kwargs, held to the allow-list).
_PREDICTOR_STATE_KEYS = frozenset({"traces", "train", "demos", "signature", "fields", "lm", "config"})
_SHOWN_CHARS = 60


@dataclass(frozen=True)
class BuildRules:
    """What the operator lets specs set: the LM call options (ServerConfig.lm_call_options)."""

    lm_options: Mapping[str, Option] = field(default_factory=dict)


@dataclass(frozen=True)
class InputCheck:
    """One caller input: str fields take any JSON value (non-text as JSON text), typed ones are validated."""

    name: str
    adapter: pydantic.TypeAdapter | None  # None: a text field

    def value(self, raw: Any) -> Any:
        if self.adapter is None:
            return raw if raw is None or isinstance(raw, str) else json.dumps(raw, ensure_ascii=False)
        try:
            return self.adapter.validate_python(raw)
        except pydantic.ValidationError as exc:
            problem = exc.errors()[0]["msg"] if exc.errors() else str(exc)
            raise InvalidArgument(f"input {self.name!r}: {problem} (got {_shown(raw)})") from None


@dataclass(frozen=True)
class BuiltProgram:
    module: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    takes_history: bool
    runs_async: bool
    inputs: tuple[InputCheck, ...] = ()
    lm_options: Mapping[str, Any] = field(default_factory=dict)

    def call_inputs(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The caller's inputs, checked against the signature and converted to its types."""
        if HISTORY_FIELD in given and not self.takes_history:
            raise InvalidArgument(f"this program has no {HISTORY_FIELD!r} input; history comes from a session only "
                                  f"for programs that declare it")
        unknown = sorted(set(given) - set(self.input_names) - {HISTORY_FIELD})
        if unknown:
            raise InvalidArgument(f"unknown input {unknown[0]!r} (expects {', '.join(self.input_names)})")
        missing = [check.name for check in self.inputs if check.name not in given]
        if missing:
            raise InvalidArgument(f"input {missing[0]!r} is missing (expects {', '.join(self.input_names)})")
        return {check.name: check.value(given[check.name]) for check in self.inputs}


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


# -- signature ------------------------------------------------------------
def build_signature(spec: pb.ProgramSpec) -> type[dspy.Signature]:
    fields.declared_fields(spec)  # counts, names and types, before DSPy parses anything
    text = fields.signature_text(spec)
    try:
        signature = dspy.Signature(text, spec.instructions or None)
    except Exception as exc:  # DSPy raises ValueError, SyntaxError, TypeError...
        raise InvalidArgument(f"bad signature {text[:200]!r}: {exc}") from exc
    descriptions = {}
    for listed in (*spec.input_fields, *spec.output_fields):
        if listed.name not in signature.fields:
            raise InvalidArgument(f"field {listed.name!r} is not in the signature {text[:200]!r}")
        if listed.description:
            descriptions[listed.name] = listed.description
    return _with_descriptions(signature, descriptions) if descriptions else signature


def _with_descriptions(signature: type[dspy.Signature], descriptions: Mapping[str, str]) -> type[dspy.Signature]:
    """Every description in one new class: with_updated_fields per field deep-copies all fields each time,
    which took minutes (then a RecursionError) at 250 described fields."""
    described = {}
    for name, info in signature.fields.items():
        if name in descriptions:
            info = copy.copy(info)
            info.json_schema_extra = {**(info.json_schema_extra or {}), "desc": descriptions[name]}
        described[name] = (info.annotation, info)
    return dspy.Signature(described, signature.instructions)


def _input_checks(signature: type[dspy.Signature]) -> tuple[InputCheck, ...]:
    checks = []
    for name, info in signature.input_fields.items():
        if name == HISTORY_FIELD:
            continue
        if info.annotation is str:
            checks.append(InputCheck(name, None))
            continue
        try:
            checks.append(InputCheck(name, pydantic.TypeAdapter(info.annotation)))
        except Exception as exc:  # a type pydantic cannot validate cannot be checked: refuse it
            raise InvalidArgument(f"field {name!r}: type {info.annotation!r} cannot be checked: {exc}") from None
    return tuple(checks)


# -- demos and saved state ---------------------------------------------------
def _demo_fields(signature: type[dspy.Signature], module: Any) -> frozenset[str]:
    names = set(signature.fields) | _DEMO_MARKERS
    for predictor in module.predictors():
        names.update(predictor.signature.fields)
    return frozenset(names)


def _check_demos(demos: Any, allowed: frozenset[str], where: str) -> None:
    """Demos are data for the signature's fields, nothing else."""
    if not isinstance(demos, list):
        raise InvalidArgument(f"{where}: demos must be a list")
    for number, demo in enumerate(demos):
        if not isinstance(demo, dict):
            raise InvalidArgument(f"{where}: demo {number} must be an object of field values")
        unknown = sorted(set(demo) - allowed)
        if unknown:
            raise InvalidArgument(f"{where}: demo {number} has {unknown[0]!r}, which is not a field of the signature")


def _apply_demos(module: Any, demos: list[dict[str, Any]]) -> None:
    examples = [dspy.Example(**demo) for demo in demos]
    for predictor in module.predictors():
        predictor.demos = list(examples)


def check_saved_state(state: Any, module: Any, rules: BuildRules) -> None:
    """Refuse saved state that would set an LM or LM kwargs, before dspy's load_state reads it."""
    if not isinstance(state, dict):
        raise InvalidArgument("saved state must be a JSON object")
    if isinstance(module, dspy.Predict):  # a bare Predict saves its own keys at the top level
        _check_predictor_state("saved state", state, module, rules)
        return
    parameters = dict(module.named_parameters())
    for name, entry in state.items():
        parameter = parameters.get(name)
        if parameter is None:
            raise InvalidArgument(f"saved state has {name!r}, which the program does not (it has: {', '.join(parameters) or 'nothing'})")
        if not isinstance(parameter, dspy.Predict):
            raise InvalidArgument(f"saved state for {name!r} ({type(parameter).__name__}) cannot be loaded: only dspy.Predict state is accepted")
        _check_predictor_state(f"saved state {name!r}", entry, parameter, rules)


def _check_predictor_state(where: str, state: Any, predictor: Any, rules: BuildRules) -> None:
    if not isinstance(state, dict):
        raise InvalidArgument(f"{where} must be a JSON object")
    unknown = sorted(set(state) - _PREDICTOR_STATE_KEYS)
    if unknown:
        raise InvalidArgument(f"{where} has {unknown[0]!r}; a predictor's state holds only {', '.join(sorted(_PREDICTOR_STATE_KEYS))}")
    if state.get("lm") is not None:
        raise InvalidArgument(f"{where} names an LM; the LM is the server's (save state with predictor.lm = None)")
    if "config" in state:
        if not isinstance(state["config"], dict):
            raise InvalidArgument(f"{where}: config must be an object")
        state["config"] = check_options(state["config"], rules.lm_options, f"{where}: LM option")
    for key in ("traces", "train"):
        if not isinstance(state.get(key, []), list):
            raise InvalidArgument(f"{where}: {key} must be a list")
    _check_demos(state.get("demos", []), frozenset(predictor.signature.fields) | _DEMO_MARKERS, where)


_MAX_STATE_DEPTH = 100  # a saved state is a few levels deep; typed demos add a few more


def _nesting_depth(value: Any) -> int:
    """How deep JSON values nest, walked without recursion (a hostile state can be thousands deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in item)
    return deepest


def _load_state(module: Any, state_json: str, rules: BuildRules) -> None:
    try:
        state = json.loads(state_json)
    except RecursionError:
        raise InvalidArgument(f"saved state is nested deeper than {_MAX_STATE_DEPTH} levels") from None
    except ValueError as exc:
        raise InvalidArgument(f"saved state is not JSON: {exc}") from None
    if _nesting_depth(state) > _MAX_STATE_DEPTH:
        raise InvalidArgument(f"saved state is nested deeper than {_MAX_STATE_DEPTH} levels")
    check_saved_state(state, module, rules)
    try:
        module.load_state(state)
    except Exception as exc:
        raise InvalidArgument(f"saved state does not fit the program: {type(exc).__name__}: {exc}") from exc


# -- the program --------------------------------------------------------------
def _runs_async(module: Any) -> bool:
    """Modules without their own aforward are synchronous: they run in a thread."""
    return callable(getattr(module, "aforward", None))


def _make_module(spec: pb.ProgramSpec, signature: type[dspy.Signature]) -> Any:
    try:
        kind = kinds.lookup(spec.module or "predict")
    except KeyError as exc:
        raise InvalidArgument(str(exc.args[0])) from None
    given = struct_to_dict(spec.module_options) if spec.HasField("module_options") else {}
    options = check_options(given, kind.options, f"module kind {kind.name!r}: module option")
    try:
        return kind.factory(signature, **options)
    except Exception as exc:
        raise InvalidArgument(f"module kind {kind.name!r} rejected the spec: {type(exc).__name__}: {exc}") from exc


def build(spec: pb.ProgramSpec, rules: BuildRules = BuildRules()) -> BuiltProgram:
    signature = build_signature(spec)
    module = _make_module(spec, signature)
    given = struct_to_dict(spec.lm_options) if spec.HasField("lm_options") else {}
    lm_options = check_options(given, rules.lm_options, "LM option")
    if spec.demos:
        demos = [struct_to_dict(d) for d in spec.demos]
        _check_demos(demos, _demo_fields(signature, module), "demos")
        _apply_demos(module, demos)
    if spec.state_json:
        _load_state(module, spec.state_json, rules)
    for predictor in module.predictors():  # after load_state, so the spec's own options win
        predictor.config = {**predictor.config, **lm_options}
    input_names = tuple(signature.input_fields)
    return BuiltProgram(
        module=module,
        input_names=tuple(n for n in input_names if n != HISTORY_FIELD),
        output_names=tuple(signature.output_fields),
        takes_history=HISTORY_FIELD in input_names,
        runs_async=_runs_async(module),
        inputs=_input_checks(signature),
        lm_options=lm_options,
    )


class ProgramCache:
    """Built programs by key ("name@version"), least recently used evicted first."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max(1, max_entries)
        self._programs: OrderedDict[str, BuiltProgram] = OrderedDict()

    def get(self, key: str) -> BuiltProgram | None:
        program = self._programs.get(key)
        if program is not None:
            self._programs.move_to_end(key)
        return program

    def put(self, key: str, program: BuiltProgram) -> None:
        self._programs[key] = program
        self._programs.move_to_end(key)
        while len(self._programs) > self._max_entries:
            self._programs.popitem(last=False)

    def __len__(self) -> int:
        return len(self._programs)
