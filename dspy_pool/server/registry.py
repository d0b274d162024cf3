"""Program versions, in the front. Versions are first-class from the start.

Registering a name with content that differs from its latest version creates
version N+1; identical content returns the existing version. Old versions stay
addressable until deleted, so a hot-swapped optimized version can run beside
the one it replaces.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from typing import Iterable

from google.protobuf import timestamp_pb2

from dspy_pool import fields as spec_fields
from dspy_pool.errors import InvalidArgument, NotFound, ResourceExhausted
from dspy_pool.pool.api import ProgramRef
from dspy_pool.v1 import dspy_pool_pb2 as pb

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_SIGNATURE_CHARS = 4096
MAX_STATE_JSON_BYTES = 1024 * 1024
MAX_WARMUP_INPUTS = 4  # each is one program call on every worker that joins the pool
HISTORY_INPUT = "history"  # filled from the session; never required from the caller


@dataclass
class ProgramVersion:
    program: pb.Program
    ref: ProgramRef  # what the pool builds and runs
    takes_history: bool

    @property
    def input_names(self) -> list[str]:
        return list(self.program.input_names)

    @property
    def name(self) -> str:
        return self.program.spec.name

    @property
    def key(self) -> str:
        return self.ref.key


def content_hash(spec: pb.ProgramSpec) -> str:
    return hashlib.sha256(spec.SerializeToString(deterministic=True)).hexdigest()


def program_ref(spec: pb.ProgramSpec) -> ProgramRef:
    """Keyed by content, not version: a worker's cached build is always the program its key names,
    so validating a spec builds exactly what will run and nothing a later version could collide with."""
    return ProgramRef(f"{spec.name}#{content_hash(spec)[:16]}", spec.SerializeToString())


def check_spec(spec: pb.ProgramSpec, known_kinds: list[str]) -> None:
    """Cheap checks in the front; the worker then builds the program for real."""
    if not NAME_PATTERN.fullmatch(spec.name):
        raise InvalidArgument(f"program name {spec.name!r} must match {NAME_PATTERN.pattern}")
    if not spec.signature.strip() and not (spec.input_fields and spec.output_fields):
        raise InvalidArgument("a program needs a signature (e.g. 'question -> answer') or input_fields and output_fields")
    if len(spec.signature) > MAX_SIGNATURE_CHARS:
        raise InvalidArgument(f"signature longer than {MAX_SIGNATURE_CHARS} characters")
    if spec.signature and "->" not in spec.signature:
        raise InvalidArgument(f"signature {spec.signature!r} has no '->' between inputs and outputs")
    for field in (*spec.input_fields, *spec.output_fields):
        if not _FIELD_NAME.fullmatch(field.name):
            raise InvalidArgument(f"field name {field.name!r} must be a Python identifier")
    spec_fields.declared_fields(spec)  # at most 256, no duplicates, inputs and outputs, known types only
    kind = spec.module or "predict"
    if kind not in known_kinds:
        raise InvalidArgument(f"unknown module kind {kind!r}; known kinds: {', '.join(known_kinds)}")
    if len(spec.state_json) > MAX_STATE_JSON_BYTES:
        raise InvalidArgument(f"state_json larger than {MAX_STATE_JSON_BYTES} bytes")
    if len(spec.warmup_inputs) > MAX_WARMUP_INPUTS:
        raise InvalidArgument(f"at most {MAX_WARMUP_INPUTS} warmup_inputs, got {len(spec.warmup_inputs)}")


def check_inputs(program: str, given: Iterable[str], input_names: list[str], takes_history: bool) -> None:
    """The inputs of one call must name exactly the program's inputs; `history` only where the program has one."""
    given, expected = set(given), set(input_names)
    missing = expected - given
    if missing:
        raise InvalidArgument(f"inputs missing for {program!r}: {', '.join(sorted(missing))} (expects {', '.join(input_names)})")
    if HISTORY_INPUT in given and not takes_history:
        raise InvalidArgument(f"{program!r} has no history input; send the turns through session_id instead")
    unknown = given - expected - {HISTORY_INPUT}
    if unknown:
        raise InvalidArgument(f"unknown inputs for {program!r}: {', '.join(sorted(unknown))} (expects {', '.join(input_names)})")


class ProgramRegistry:
    def __init__(self, max_programs: int) -> None:
        self.max_programs = max_programs
        self._versions: dict[str, dict[int, ProgramVersion]] = {}
        self._next_version: dict[str, int] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._versions.values())

    def existing(self, spec: pb.ProgramSpec) -> ProgramVersion | None:
        versions = self._versions.get(spec.name)
        if not versions:
            return None
        latest = versions[max(versions)]
        return latest if latest.program.content_hash == content_hash(spec) else None

    def add(self, spec: pb.ProgramSpec, input_names: list[str], output_names: list[str], takes_history: bool) -> ProgramVersion:
        if len(self) >= self.max_programs:
            raise ResourceExhausted(f"at most {self.max_programs} program versions; delete some first")
        version = self._next_version.get(spec.name, 1)
        self._next_version[spec.name] = version + 1
        created = timestamp_pb2.Timestamp()
        created.FromNanoseconds(time.time_ns())
        program = pb.Program(
            spec=spec, version=version, content_hash=content_hash(spec), created_at=created,
            input_names=input_names, output_names=output_names, created=True,
        )
        entry = ProgramVersion(program, program_ref(spec), takes_history)
        self._versions.setdefault(spec.name, {})[version] = entry
        return entry

    def get(self, name: str, version: int = 0) -> ProgramVersion:
        versions = self._versions.get(name)
        if not versions:
            raise NotFound(f"no program named {name!r}")
        if version == 0:
            return versions[max(versions)]
        try:
            return versions[version]
        except KeyError:
            raise NotFound(f"program {name!r} has no version {version}; versions: {sorted(versions)}") from None

    def list(self, all_versions: bool) -> list[ProgramVersion]:
        out = []
        for name in sorted(self._versions):
            versions = self._versions[name]
            out.extend(versions[v] for v in sorted(versions)) if all_versions else out.append(versions[max(versions)])
        return out

    def delete(self, name: str, version: int = 0) -> list[int]:
        versions = self._versions.get(name)
        if not versions:
            raise NotFound(f"no program named {name!r}")
        if version == 0:
            deleted = sorted(versions)
            del self._versions[name]
            return deleted
        if version not in versions:
            raise NotFound(f"program {name!r} has no version {version}")
        del versions[version]
        if not versions:
            del self._versions[name]
        return [version]
