"""Program spec files: YAML, TOML or JSON <-> `pb.ProgramSpec`, with precise errors.

A file holds one spec (a mapping of ProgramSpec fields), a list of specs, or
`{"programs": [...]}` (TOML can only say the last, as `[[programs]]`, or one spec as
top-level keys). Field names are ProgramSpec's (`warmup_inputs`; the JSON names such
as `warmupInputs` work too), converted by `json_format.ParseDict`, so every field of the
public API works here without a list of them to keep in step.

    load_specs(path) -> [ProgramSpec]        parse_specs(text, fmt, source) -> [ProgramSpec]
    dump_specs(specs, fmt) -> text           (what load_specs reads back to equal specs)

Pure: reading the one file is the only I/O; nothing here talks to a server. Every error
is a SpecFileError whose message names the file, the entry and the field, because a
spec list that fails as "invalid value" somewhere in 40 entries is no help.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import descriptor as _descriptor
from google.protobuf import json_format, message_factory

from dspy_pool.v1 import dspy_pool_pb2 as pb

FORMATS = ("yaml", "json", "toml")
_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".toml": "toml"}
_LIST_KEY = "programs"


@dataclasses.dataclass(frozen=True)
class SpecFileError(ValueError):
    """A spec file that cannot be read; str() is the whole, one-line explanation."""

    source: str
    reason: str
    entry: str = ""  # e.g. 'programs[2] ("qa")'; empty for file-level errors
    field: str = ""  # e.g. "fallback.chain", "demos[0].answer"

    def __str__(self) -> str:
        parts = [self.source, self.entry, f'field "{self.field}"' if self.field else "", self.reason]
        return ": ".join(part for part in parts if part)


# -- loading ------------------------------------------------------------------------------


def format_of(path: str | Path) -> str:
    """The format a file's suffix names; SpecFileError for any other suffix."""
    fmt = _SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise SpecFileError(str(path), "unknown format: name the file .yaml, .yml, .toml or .json")
    return fmt


def load_specs(path: str | Path) -> list[pb.ProgramSpec]:
    """Every spec in the file at `path`, in registration order (parse_specs); SpecFileError naming what is wrong."""
    fmt = format_of(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecFileError(str(path), f"cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_specs(text, fmt, str(path))


def parse_specs(text: str, fmt: str, source: str = "<input>") -> list[pb.ProgramSpec]:
    """The specs in `text` of format `fmt` ("yaml" also reads JSON), in registration order (in_fallback_order);
    `source` names it in errors."""
    document = _parse_document(text, fmt, source)
    entries, label = _entries(document, source)
    return in_fallback_order([_to_spec(entry, label(index, entry), source) for index, entry in enumerate(entries)])


def in_fallback_order(specs: list[pb.ProgramSpec]) -> list[pb.ProgramSpec]:
    """File order, except that a program named as another's fallback comes before it (registration refuses a fallback
    program not registered yet). Programs whose fallbacks form a cycle keep their order (registration refuses it)."""
    names = {spec.name for spec in specs}
    placed: set[str] = set()
    ordered: list[pb.ProgramSpec] = []
    waiting = list(specs)
    while waiting:
        ready = [spec for spec in waiting if spec.fallback.program not in names - placed or spec.fallback.program == spec.name]
        for spec in ready or waiting:  # nothing ready: a cycle; the rest go as they are
            ordered.append(spec)
            placed.add(spec.name)
        waiting = [spec for spec in waiting if spec not in ready] if ready else []
    return ordered


def _parse_document(text: str, fmt: str, source: str) -> Any:
    try:
        if fmt == "yaml":
            return yaml.safe_load(text)
        if fmt == "json":
            return json.loads(text)
        if fmt == "toml":
            return tomllib.loads(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecFileError(source, f"invalid YAML{where}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SpecFileError(source, "invalid YAML: " + " ".join(str(exc).split())) from None
    except json.JSONDecodeError as exc:
        raise SpecFileError(source, f"invalid JSON: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecFileError(source, f"invalid TOML: {exc}") from None
    raise SpecFileError(source, f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")


def _entries(document: Any, source: str):
    """The list of raw entries, and how to name entry i in errors (as the file spells it)."""
    if isinstance(document, dict) and _LIST_KEY in document:
        extra = sorted(str(key) for key in document if key != _LIST_KEY)
        if extra:
            raise SpecFileError(source, f'unexpected top-level keys beside "{_LIST_KEY}": {", ".join(extra)}')
        entries = document[_LIST_KEY]
        if not isinstance(entries, list):
            raise SpecFileError(source, f'"{_LIST_KEY}" must be a list of specs (in TOML, [[{_LIST_KEY}]] tables), got {_type_name(entries)}')
        prefix = _LIST_KEY
    elif isinstance(document, list):
        entries, prefix = document, ""
    elif isinstance(document, dict) and document:
        return [document], lambda index, entry: f'program "{entry["name"]}"' if _has_name(entry) else "the spec"
    else:
        raise SpecFileError(source, f'expected a program spec, a list of specs or {{"{_LIST_KEY}": [...]}}, '
                                    f"got {_type_name(document) if document not in (None, {}) else 'nothing'}")
    return entries, lambda index, entry: _named(f"{prefix}[{index}]", entry)


def _named(where: str, entry: Any) -> str:
    return f'{where} ("{entry["name"]}")' if _has_name(entry) else where


def _has_name(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("name"), str) and bool(entry["name"])


def _to_spec(entry: Any, label: str, source: str) -> pb.ProgramSpec:
    if not isinstance(entry, dict):
        raise SpecFileError(source, f"expected a mapping of ProgramSpec fields, got {_type_name(entry)}", label)
    problem = _first_problem(entry, pb.ProgramSpec.DESCRIPTOR, "")
    if problem is not None:
        raise SpecFileError(source, problem[1], label, problem[0])
    spec = pb.ProgramSpec()
    try:
        json_format.ParseDict(entry, spec)
    except json_format.ParseError as exc:  # not expected after the walk; keep ParseDict's word for it
        field, reason = _from_parse_error(exc, "")
        raise SpecFileError(source, reason, label, field) from None
    if not spec.name:
        raise SpecFileError(source, "required: the program's name", label, "name")
    return spec


# -- locating a bad field -----------------------------------------------------------------
# ParseDict stops at the first problem with a message such as 'Failed to parse fallback
# field: Message type ... has no field named "chian" at "ProgramSpec.fallback"'. Walking
# the mapping against the descriptor first gives the full path and a plain reason.


def _first_problem(value: dict, descriptor: _descriptor.Descriptor, prefix: str) -> tuple[str, str] | None:
    """(field path, reason) of the first field in `value` that does not fit `descriptor`."""
    names = {**{f.json_name: f for f in descriptor.fields}, **descriptor.fields_by_name}
    for key, item in value.items():
        field = names.get(key) if isinstance(key, str) else None
        if field is None:
            return f"{prefix}{key}", _unknown_field(key, descriptor)
        problem = _field_problem(field, item, f"{prefix}{field.name}")
        if problem is not None:
            return problem
    return None


def _field_problem(field: _descriptor.FieldDescriptor, item: Any, where: str) -> tuple[str, str] | None:
    if item is None:
        return None  # ParseDict reads null as "unset", as proto3 JSON does
    repeated = field.is_repeated
    if repeated and not isinstance(item, list):
        return where, f"expected a list, got {_type_name(item)}"
    for index, element in enumerate(item if repeated else [item]):
        at = f"{where}[{index}]" if repeated else where
        problem = _value_problem(field, element, at)
        if problem is not None:
            return problem
    return None


def _value_problem(field: _descriptor.FieldDescriptor, value: Any, where: str) -> tuple[str, str] | None:
    if field.type == _descriptor.FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            shown = f" {value!r} (quote it)" if isinstance(value, (bool, int, float)) else ""
            return where, f"expected a string, got {_type_name(value)}{shown}"
        return None
    if field.type == _descriptor.FieldDescriptor.TYPE_MESSAGE and field.message_type.full_name == "google.protobuf.Struct":
        if not isinstance(value, dict):
            return where, f"expected a mapping, got {_type_name(value)}"
        return _json_problem(value, where)
    if field.type == _descriptor.FieldDescriptor.TYPE_MESSAGE and not _is_well_known(field.message_type):
        if not isinstance(value, dict):
            return where, f"expected a mapping of {field.message_type.name} fields, got {_type_name(value)}"
        return _first_problem(value, field.message_type, where + ".")
    # Structs and any other scalar: ParseDict is the judge, one value at a time.
    holder = message_factory.GetMessageClass(field.containing_type)()
    try:
        json_format.ParseDict({field.name: [value] if field.is_repeated else value}, holder)
    except json_format.ParseError as exc:
        return _from_parse_error(exc, where, field.name)
    return None


def _json_problem(value: Any, where: str) -> tuple[str, str] | None:
    """The first value inside a Struct that JSON cannot hold (YAML and TOML read dates, for one)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return where, f"keys are strings, got {_type_name(key)} {key!r} (quote it)"
            problem = _json_problem(item, f"{where}.{key}")
            if problem is not None:
                return problem
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{where}[{index}]")
            if problem is not None:
                return problem
    elif isinstance(value, float) and not math.isfinite(value):
        return where, f"{value} is not a JSON number"
    elif not isinstance(value, (str, int, float, bool, type(None))):
        return where, f"{_type_name(value)} {str(value)!r} is not a JSON value (quote it)"
    return None


def _is_well_known(message: _descriptor.Descriptor) -> bool:
    return message.full_name.startswith("google.protobuf.")


_PARSE_PREFIX = re.compile(r"^(Failed to parse \w+ field: )+")
_PARSE_AT = re.compile(r"\s+at\s+\"?\w+\.([\w.\[\]]+?)\"?\.*$")


def _from_parse_error(exc: json_format.ParseError, where: str, field_name: str = "") -> tuple[str, str]:
    """(field path, reason) from ParseDict's message: its nesting prefixes dropped, and the
    path it ends with ('at ProgramSpec.demos[0].when', inside the one value we gave it)
    grafted onto `where`, which has the real index."""
    message = _PARSE_PREFIX.sub("", str(exc).split("\n")[0]).strip()
    found = _PARSE_AT.search(message)
    if not found:
        return where, message.rstrip(" .")
    inner, message = found.group(1), message[: found.start()].rstrip(" .")
    if not field_name:
        return inner, message
    head = re.match(re.escape(field_name) + r"(\[\d+\])?", inner)
    return where + (inner[head.end():] if head else ""), message


def _unknown_field(key: Any, descriptor: _descriptor.Descriptor) -> str:
    if not isinstance(key, str):
        return f"field names are strings, got {_type_name(key)} {key!r}"
    known = [f.name for f in descriptor.fields]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f'; did you mean "{close[0]}"?' if close else f"; {descriptor.name} fields are {', '.join(known)}"
    return f"unknown field{hint}"


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), f"a {type(value).__name__}")


# -- dumping ------------------------------------------------------------------------------


def dump_specs(specs: Iterable[pb.ProgramSpec | pb.Program], fmt: str) -> str:
    """`{"programs": [...]}` in `fmt` ("yaml", "json", "toml"); Program messages give their spec.

    Fields left at their defaults are left out, so a dump reads like a hand-written file.
    ValueError for a value the format cannot hold (TOML has no null).
    """
    fmt = "yaml" if fmt == "yml" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (one of {', '.join(FORMATS)})")
    document = {_LIST_KEY: [_spec_dict(spec) for spec in specs]}
    if fmt == "yaml":
        return yaml.dump(document, Dumper=_YamlDumper, sort_keys=False, allow_unicode=True, width=100)
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return _toml_document(document)


def _spec_dict(spec: pb.ProgramSpec | pb.Program) -> dict:
    if isinstance(spec, pb.Program):
        spec = spec.spec
    try:
        return _whole_numbers(json_format.MessageToDict(spec, preserving_proto_field_name=True))
    except json_format.Error as exc:  # a Struct number that is inf or nan: no format here holds one
        raise ValueError(f"program {spec.name!r}: {exc}") from None


def _whole_numbers(value: Any) -> Any:
    """512.0 -> 512: Struct holds every number as a double, and a file reads better without
    the ".0"; loading reads it back to the same double, so the round trip still holds."""
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        if value or math.copysign(1.0, value) > 0:  # -0.0 would read back as 0.0
            return int(value)
    return value


class _YamlDumper(yaml.SafeDumper):
    """Multi-line strings (instructions, saved state) as `|` blocks, the way people write them."""


_YAML_BREAKS = ("\x85", "\u2028", "\u2029")


def _yaml_str(dumper: yaml.SafeDumper, value: str):
    # YAML reads NEL and the Unicode line/paragraph separators as line breaks, and PyYAML
    # writes them bare in plain and block styles; double quotes escape them.
    if any(char in value for char in _YAML_BREAKS):
        style = '"'
    else:
        style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_YamlDumper.add_representer(str, _yaml_str)


# TOML: the standard library reads it but cannot write it, and the shapes here are few:
# tables, arrays of tables, and inline values. Sub-tables follow a table's plain keys.

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_document(document: dict) -> str:
    if not document[_LIST_KEY]:
        return f"{_LIST_KEY} = []\n"
    lines: list[str] = []
    for index, spec in enumerate(document[_LIST_KEY]):
        if lines:
            lines.append("")
        _toml_table(spec, [_LIST_KEY], lines, array=True, where=f"{_LIST_KEY}[{index}]")
    return "\n".join(lines) + "\n"


def _toml_table(table: dict, path: list[str], lines: list[str], array: bool, where: str) -> None:
    header = ".".join(_toml_key(part) for part in path)
    lines.append(f"[[{header}]]" if array else f"[{header}]")
    nested = []
    for key, value in table.items():
        if isinstance(value, dict) and value:
            nested.append((key, value, False))
        elif _is_table_array(value):
            nested.append((key, value, True))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value, f'{where}.{key}')}")
    for key, value, is_array in nested:
        if is_array:
            for index, element in enumerate(value):
                _toml_table(element, [*path, key], lines, array=True, where=f"{where}.{key}[{index}]")
        else:
            _toml_table(value, [*path, key], lines, array=False, where=f"{where}.{key}")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(element, dict) for element in value)


def _toml_value(value: Any, where: str) -> str:
    if value is None:
        raise ValueError(f"{where}: TOML has no null; dump this spec as YAML or JSON")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # '1e-05', '2.5': TOML floats (MessageToDict already refused inf and nan)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(element, f"{where}[{i}]") for i, element in enumerate(value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v, f'{where}.{k}')}" for k, v in value.items()) + "}"
    raise ValueError(f"{where}: cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_string(value: str) -> str:
    # JSON's escapes are TOML's, once non-ASCII stays literal (TOML has no surrogate pairs)
    # and DEL, which JSON leaves alone and TOML forbids, is escaped too.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
