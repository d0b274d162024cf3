"""The fields a ProgramSpec declares, read without DSPy: the front checks them, the worker again.

A signature string is read the way DSPy reads it, with Python's parser on
`def f(<inputs>)` and `def f(<outputs>)`, never eval. Two things DSPy would
let through are refused here:

- Type annotations are a closed vocabulary (builtins, a few typing names,
  dspy.History, literals). DSPy resolves any other name by importing a module
  of that name and following attributes, so `x: os.environ -> y` put the
  worker's environment into the error message, and `x: antigravity -> y` ran
  a module's import-time code.
- Counts and names: at most MAX_FIELDS fields (each costs prompt text and a
  pydantic field; 10,000 of them once stalled a worker), no duplicates, at
  least one input and one output, and no input named like the keywords
  dspy.Predict takes out of a call's inputs to steer the call (RESERVED_INPUTS).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Iterable

from dspy_pool.errors import InvalidArgument

MAX_FIELDS = 256  # inputs and outputs together
MAX_TYPE_CHARS = 256  # one field list entry's type: the front parses it, so it stays small
HISTORY = "history"  # filled from the session by the worker, never by the caller
# dspy.Predict pops these from a call's keyword arguments and uses them as its
# LM, LM kwargs, signature and demos: as input fields they would hand a caller the LM.
RESERVED_INPUTS = frozenset({"config", "lm", "signature", "demos", "new_signature", "prediction"})

_TYPE_NAMES = frozenset({
    "str", "int", "float", "bool", "list", "dict", "tuple", "set", "frozenset", "None", "NoneType",
    "Any", "Optional", "Union", "Literal", "List", "Dict", "Tuple", "Set",
})
_QUALIFIED_TYPES = frozenset({("dspy", "History"), *(("typing", name) for name in ("Any", "Optional", "Union", "Literal", "List", "Dict", "Tuple", "Set"))})
_MAX_TYPE_NODES = 64


@dataclass(frozen=True)
class DeclaredFields:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def signature_text(spec) -> str:
    """The DSPy string form of a spec: its signature, or one made from its field lists."""
    if spec.signature.strip():
        return spec.signature
    if spec.input_fields and spec.output_fields:
        inputs = ", ".join(_clause(f) for f in spec.input_fields)
        outputs = ", ".join(_clause(f) for f in spec.output_fields)
        return f"{inputs} -> {outputs}"
    raise InvalidArgument("a program needs a signature (e.g. 'question -> answer') or input_fields and output_fields")


def _clause(field) -> str:
    return f"{field.name}: {field.type}" if field.type else field.name


def declared_fields(spec) -> DeclaredFields:
    """The spec's input and output names, checked (see the module docstring); raises InvalidArgument."""
    listed = len(spec.input_fields) + len(spec.output_fields)
    if listed > MAX_FIELDS:  # before any parsing: the lists can be long
        raise InvalidArgument(f"at most {MAX_FIELDS} fields (inputs and outputs together), got {listed}")
    _check_unique("field lists", [f.name for f in (*spec.input_fields, *spec.output_fields)])
    for listed in (*spec.input_fields, *spec.output_fields):
        if len(listed.type) > MAX_TYPE_CHARS:
            raise InvalidArgument(f"field {listed.name!r}: type longer than {MAX_TYPE_CHARS} characters")
    text = signature_text(spec)
    if text.count("->") != 1:
        raise InvalidArgument(f"signature {text[:200]!r} needs exactly one '->' between inputs and outputs")
    inputs_text, outputs_text = text.split("->")
    fields = DeclaredFields(_names(inputs_text, "inputs"), _names(outputs_text, "outputs"))
    check_fields(fields)
    return fields


def check_fields(fields: DeclaredFields) -> None:
    total = len(fields.inputs) + len(fields.outputs)
    if total > MAX_FIELDS:
        raise InvalidArgument(f"at most {MAX_FIELDS} fields (inputs and outputs together), got {total}")
    if not fields.inputs:
        raise InvalidArgument("the signature has no input fields")
    if not fields.outputs:
        raise InvalidArgument("the signature has no output fields")
    _check_unique("signature", [*fields.inputs, *fields.outputs])
    reserved = sorted(RESERVED_INPUTS.intersection(fields.inputs))
    if reserved:
        raise InvalidArgument(f"input field name {reserved[0]!r} is reserved (DSPy reads it as a call setting); rename it")


def _check_unique(where: str, names: Iterable[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidArgument(f"field {name!r} appears twice in the {where}")
        seen.add(name)


def _names(text: str, side: str) -> tuple[str, ...]:
    if text.count(",") >= MAX_FIELDS:  # cheap bound before the parser sees it
        raise InvalidArgument(f"at most {MAX_FIELDS} fields (inputs and outputs together)")
    try:
        args = ast.parse(f"def f({text}): pass").body[0].args
    except (SyntaxError, ValueError, RecursionError, MemoryError, IndexError, AttributeError) as exc:
        message = getattr(exc, "msg", None) or type(exc).__name__
        raise InvalidArgument(f"bad signature {side} {text.strip()[:200]!r}: {message}") from None
    if args.posonlyargs or args.kwonlyargs or args.vararg or args.kwarg or args.defaults:
        raise InvalidArgument(f"signature {side} must be plain 'name: type' fields, got {text.strip()[:200]!r}")
    for arg in args.args:
        if arg.annotation is not None:
            check_type(arg.arg, arg.annotation)
    return tuple(arg.arg for arg in args.args)


def check_type(field: str, node: ast.AST) -> None:
    """Only the closed type vocabulary; anything else (a module, an attribute chain, a call) is refused."""
    nodes = list(ast.walk(node))
    if len(nodes) > _MAX_TYPE_NODES:
        raise InvalidArgument(f"field {field!r}: type annotation too complex")
    for part in nodes:
        if not _allowed(part, node):
            raise InvalidArgument(f"field {field!r}: type {ast.unparse(node)[:100]!r} is not allowed "
                                  f"(use str, int, float, bool, list[...], dict[...], Optional, Union, Literal, dspy.History)")


def _allowed(part: ast.AST, root: ast.AST) -> bool:
    if isinstance(part, ast.Name):
        return part.id in _TYPE_NAMES or _is_qualifier(part, root)
    if isinstance(part, ast.Attribute):
        return isinstance(part.value, ast.Name) and (part.value.id, part.attr) in _QUALIFIED_TYPES
    if isinstance(part, ast.Constant):  # Literal values
        return part.value is None or isinstance(part.value, (str, int, float, bool))
    return isinstance(part, (ast.Subscript, ast.Tuple, ast.BinOp, ast.BitOr, ast.Load))  # BinOp: only `X | Y`


def _is_qualifier(name: ast.Name, root: ast.AST) -> bool:
    """`dspy` in `dspy.History`: allowed only as the left side of an allowed attribute."""
    return any(isinstance(p, ast.Attribute) and p.value is name and (name.id, p.attr) in _QUALIFIED_TYPES for p in ast.walk(root))
