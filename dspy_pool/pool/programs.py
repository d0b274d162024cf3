"""Build a runnable dspy.Module from a declarative ProgramSpec (runs in workers).

Everything here is data-driven: the signature string is parsed by DSPy's
AST-based parser (no eval), saved state is JSON, and the module kind must be
one the operator registered. A spec that cannot be built raises
InvalidArgument with DSPy's own message.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import dspy

from dspy_pool import kinds
from dspy_pool.errors import InvalidArgument
from dspy_pool.structs import struct_to_dict
from dspy_pool.v1 import dspy_pool_pb2 as pb

HISTORY_FIELD = "history"


@dataclass(frozen=True)
class BuiltProgram:
    module: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    takes_history: bool
    runs_async: bool
    text_inputs: tuple[str, ...] = ()  # inputs typed str: other JSON values reach them as JSON text


def _field_clause(field: pb.FieldSpec) -> str:
    return f"{field.name}: {field.type}" if field.type else field.name


def build_signature(spec: pb.ProgramSpec) -> type[dspy.Signature]:
    if spec.signature.strip():
        text = spec.signature
    elif spec.input_fields and spec.output_fields:
        inputs = ", ".join(_field_clause(f) for f in spec.input_fields)
        outputs = ", ".join(_field_clause(f) for f in spec.output_fields)
        text = f"{inputs} -> {outputs}"
    else:
        raise InvalidArgument("a program needs a signature string or both input_fields and output_fields")
    try:
        signature = dspy.Signature(text, spec.instructions or None)
    except Exception as exc:  # DSPy raises ValueError, SyntaxError, TypeError...
        raise InvalidArgument(f"bad signature {text!r}: {exc}") from exc
    for field in (*spec.input_fields, *spec.output_fields):
        if field.name not in signature.fields:
            raise InvalidArgument(f"field {field.name!r} is not in the signature {text!r}")
        if field.description:
            signature = signature.with_updated_fields(field.name, desc=field.description)
    return signature


def _apply_demos(module: Any, demos: list[dict[str, Any]]) -> None:
    examples = [dspy.Example(**demo) for demo in demos]
    for predictor in module.predictors():
        predictor.demos = list(examples)


def _runs_async(module: Any) -> bool:
    """Modules without their own aforward are synchronous: they run in a thread."""
    return callable(getattr(module, "aforward", None))


def build(spec: pb.ProgramSpec) -> BuiltProgram:
    signature = build_signature(spec)
    try:
        factory = kinds.get(spec.module or "predict")
    except KeyError as exc:
        raise InvalidArgument(str(exc.args[0])) from None
    options = struct_to_dict(spec.module_options) if spec.HasField("module_options") else {}
    try:
        module = factory(signature, **options)
    except Exception as exc:
        raise InvalidArgument(f"module kind {spec.module!r} rejected the spec: {type(exc).__name__}: {exc}") from exc
    if spec.demos:
        _apply_demos(module, [struct_to_dict(d) for d in spec.demos])
    if spec.state_json:
        try:
            module.load_state(json.loads(spec.state_json))
        except Exception as exc:
            raise InvalidArgument(f"saved state does not fit the program: {type(exc).__name__}: {exc}") from exc
    input_names = tuple(signature.input_fields)
    return BuiltProgram(
        module=module,
        input_names=tuple(n for n in input_names if n != HISTORY_FIELD),
        output_names=tuple(signature.output_fields),
        takes_history=HISTORY_FIELD in input_names,
        runs_async=_runs_async(module),
        text_inputs=tuple(n for n, f in signature.input_fields.items() if f.annotation is str),
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
