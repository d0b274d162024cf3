"""Program versions, in the front. Versions are first-class from the start.

Registering a name with content that differs from its latest version creates
version N+1; identical content returns the existing version. Old versions stay
addressable until deleted, so a hot-swapped optimized version can run beside
the one it replaces.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Collection, Iterable

import structlog

from google.protobuf import timestamp_pb2

from dspy_pool import fields as spec_fields
from dspy_pool.errors import InvalidArgument, NotFound, PoolError, ResourceExhausted, Unavailable
from dspy_pool.pool.api import ProgramRef
from dspy_pool.state import NewProgram, ProgramRecord, Revision, StateStore
from dspy_pool.state.policy import versions_to_delete
from dspy_pool.state.unreachable import unavailable_while_down
from dspy_pool.v1 import dspy_pool_pb2 as pb

log = structlog.get_logger("dspy_pool.registry")

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_SIGNATURE_CHARS = 4096
MAX_STATE_JSON_BYTES = 1024 * 1024
MAX_WARMUP_INPUTS = 4  # each is one program call on every worker that joins the pool
HISTORY_INPUT = "history"  # filled from the session; never required from the caller


@dataclass(slots=True)
class ProgramVersion:
    program: pb.Program
    ref: ProgramRef  # what the pool builds and runs
    takes_history: bool
    # Read on every call: worked out once here rather than through the message (each step of which builds a wrapper).
    name: str = field(init=False)
    version: int = field(init=False)
    key: str = field(init=False)  # the content's key (ref.key): versions with one content share it
    client_registered: bool = field(init=False)  # not an optimization's result: a candidate for base_version
    spec_bytes: int = field(init=False)  # what the spec takes serialized (the registry's byte bound counts it)

    def __post_init__(self) -> None:
        self.name = self.program.spec.name
        self.version = self.program.version
        self.key = self.ref.key
        self.client_registered = not self.program.meta.job_id
        self.spec_bytes = self.program.spec.ByteSize()

    @property
    def input_names(self) -> list[str]:
        return list(self.program.input_names)


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
    for declared in (*spec.input_fields, *spec.output_fields):
        if not _FIELD_NAME.fullmatch(declared.name):
            raise InvalidArgument(f"field name {declared.name!r} must be a Python identifier")
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
    """Program versions: the state store holds them; this keeps a snapshot for the hot path.

    A write (add, delete) goes to the store first and is committed before the
    RPC answers; then the snapshot takes it. Reads (get, list) use the snapshot
    only. Replicas on one shared store see each other's writes by versioned
    reads: `watch()` polls the store's program revision every `poll_s` and
    reloads the snapshot when it moved, and a call that names a program the
    snapshot lacks refreshes once before it says NOT_FOUND. While the store is
    unreachable the snapshot keeps serving and writes fail UNAVAILABLE.

    A store that lost what it held (its epoch changed: FLUSHALL, an empty Redis
    restarted; or its revision went back: an older backup) is a reset, however
    far its revision has counted since: the programs it lost stay in the
    snapshot, beside whatever is registered in it from then on, until a name
    is registered again (the store's versions of it take over) or the replica
    restarts.
    """

    def __init__(self, store: StateStore, max_programs: int, max_bytes: int = 128 << 20) -> None:
        self.store = store
        self.max_programs = max_programs
        # The versions' specs together, as this snapshot holds them (every version the store holds, and any kept):
        # a soft bound (two replicas adding at once may both pass), where max_programs is the store's own.
        self.max_bytes = max_bytes
        self._versions: dict[str, dict[int, ProgramVersion]] = {}
        self.bases: dict[str, ProgramVersion] = {}  # name -> base_version(name), worked out when the versions change
        self._revision: Revision | None = None
        self.policies: dict[str, pb.ExecutionPolicy] = {}  # program name -> its execution policy
        # What a reset store lost and this replica still serves: names the store does not hold (again) yet.
        self._kept: dict[str, dict[int, ProgramVersion]] = {}
        self._kept_policies: dict[str, pb.ExecutionPolicy] = {}
        self.store_problem = ""  # why the store cannot be used now, as the poll last found it ("" when it can)
        self._writing = asyncio.Lock()  # a write here (store, then snapshot) and a load never interleave

    def __len__(self) -> int:
        return sum(len(v) for v in self._versions.values())

    def held_bytes(self) -> int:
        return sum(entry.spec_bytes for versions in self._versions.values() for entry in versions.values())

    # -- the snapshot ---------------------------------------------------------
    async def load(self) -> None:
        """Replace the snapshot with what the store holds now."""
        # Under the write lock: a register, delete or policy written here while the read was under way could be
        # missing from it (or, a delete, still in it), and the snapshot would put back what a client was just told.
        async with self._writing:
            self._replace(*await self._read())

    async def _read(self) -> tuple[Revision, list[ProgramRecord], dict[str, bytes]]:
        async with _store_errors():
            return await self.store.revision(), await self.store.list_programs(), await self.store.list_policies()

    def _replace(self, revision: Revision, records: list[ProgramRecord], stored_policies: dict[str, bytes]) -> None:
        stored: dict[str, dict[int, ProgramVersion]] = {}
        for record in records:
            stored.setdefault(record.name, {})[record.version] = _version(record, created=False)
        # A kept name the store holds again is the store's from then on, whole (and gone when deleted there).
        self._kept = {name: kept for name, kept in self._kept.items() if name not in stored}
        self._kept_policies = {name: kept for name, kept in self._kept_policies.items() if name in self._kept}
        versions = {**self._kept, **stored}
        policies = {**self._kept_policies, **{name: pb.ExecutionPolicy.FromString(data)
                                              for name, data in stored_policies.items()}}
        self._versions, self._revision = versions, revision
        self.bases = {name: _base(entries) for name, entries in versions.items()}
        self.policies = {name: policy_within(policy, versions.get(name, {})) for name, policy in policies.items()}

    async def refresh(self) -> bool:
        """Reload if another replica (or process) changed the programs; True when it did (after a reset: when
        the store holds something beyond the snapshot kept)."""
        async with _store_errors():
            revision = await self.store.revision()
        if revision == self._revision:
            return False
        reset = self._revision is not None and _was_reset(self._revision, revision)
        if reset:
            self._keep_snapshot(revision)
        before = self._versions
        await self.load()
        return not reset or self._versions != before

    def _keep_snapshot(self, now: Revision) -> None:
        """The store lost what it held: keep serving every program known here, and say so."""
        self._kept = dict(self._versions)
        self._kept_policies = dict(self.policies)
        if self._revision.epoch:  # (from a lost epoch, "", to a new one is the same reset, re-seeded by an opener)
            log.error("state_store_reset_detected", store=self.store.description, had=self._revision.programs,
                      now=now.programs, epoch_changed=now.epoch != self._revision.epoch, kept=len(self),
                      hint="the store lost its programs; this replica keeps serving the ones it knew. Re-register them "
                           "(or restart with --programs-file) once the store is back as it should be")

    async def watch(self, poll_s: float) -> None:
        """Keep the snapshot current until cancelled; an unreachable store is logged once, then retried."""
        while True:
            await asyncio.sleep(poll_s)
            try:
                await self.refresh()
            except PoolError as error:  # unreachable (Unavailable), or refusing: the loop must outlive it
                if not self.store_problem:
                    log.warning("state_store_unreachable", store=self.store.description, message=error.message,
                                hint="serving the programs already known; writes fail UNAVAILABLE until it is back")
                self.store_problem = error.message
                continue
            if self.store_problem:
                log.info("state_store_back", store=self.store.description)
                self.store_problem = ""

    # -- reads ------------------------------------------------------------------
    def existing(self, spec: pb.ProgramSpec) -> ProgramVersion | None:
        """The version a client registration of `spec` gives back unchanged: the latest one a client registered, when
        its content is the same (an optimization's versions since do not count: a programs file read again at every
        start made a new version after each optimization)."""
        base = self.bases.get(spec.name)  # an optimization's, when no client version is left: the store adds anew then
        same = base is not None and base.client_registered and base.program.content_hash == content_hash(spec)
        return base if same else None

    def get(self, name: str, version: int = 0) -> ProgramVersion:
        versions = self._versions.get(name)
        if not versions:
            raise NotFound(f"no program named {name!r}")
        if version == 0:
            return versions[max(versions)]
        if version < 0:
            raise _negative(version)
        try:
            return versions[version]
        except KeyError:
            raise NotFound(f"program {name!r} has no version {version}; versions: {sorted(versions)}") from None

    async def find(self, name: str, version: int = 0) -> ProgramVersion:
        """get(), refreshing the snapshot once first if it does not know the program (another replica may)."""
        try:
            return self.get(name, version)
        except NotFound:
            with contextlib.suppress(Unavailable):  # the store down: what the snapshot knows is the answer
                await self.refresh()
            # Whether or not this refresh loaded anything: a concurrent call's load may have brought the program in
            # meanwhile (this refresh then finds the revision unchanged), and a client just told it exists must find it.
            return self.get(name, version)

    def versions(self, name: str) -> dict[int, ProgramVersion]:
        """Every version of `name` the snapshot holds (a copy; empty when none)."""
        return dict(self._versions.get(name, {}))

    def base_version(self, name: str) -> ProgramVersion:
        """The latest version a client registered (not one an optimization produced): what traditional mode runs."""
        base = self.bases.get(name)
        if base is None:
            raise NotFound(f"no program named {name!r}")
        return base

    def known_base(self, name: str) -> ProgramVersion | None:
        """base_version, or None when the snapshot has no such program (the caller may refresh: see find)."""
        return self.bases.get(name)

    def policy(self, name: str) -> pb.ExecutionPolicy:
        return self.policies.get(name) or pb.ExecutionPolicy(program=name, mode="traditional", promotion="manual")

    async def set_policy(self, policy: pb.ExecutionPolicy) -> pb.ExecutionPolicy:
        """Store a program's policy (committed when this returns; replicas reload it with the programs)."""
        async with self._writing:
            async with _store_errors():
                await self.store.put_policy(policy.program, policy.SerializeToString())
            self.policies[policy.program] = policy
        return policy

    def list(self, all_versions: bool) -> list[ProgramVersion]:
        out = []
        for name in sorted(self._versions):
            versions = self._versions[name]
            out.extend(versions[v] for v in sorted(versions)) if all_versions else out.append(versions[max(versions)])
        return out

    # -- writes -----------------------------------------------------------------
    async def add(self, spec: pb.ProgramSpec, input_names: list[str], output_names: list[str], takes_history: bool,
                  meta: pb.ProgramMeta | None = None) -> ProgramVersion:
        """Store a new version (or find the latest with this content); committed when this returns."""
        new = NewProgram(spec.name, spec.SerializeToString(deterministic=True), content_hash(spec), tuple(input_names),
                         tuple(output_names), takes_history, time.time(), meta.SerializeToString() if meta is not None else b"")
        async with self._writing:
            held = self.held_bytes()
            if held + len(new.spec) > self.max_bytes:
                raise ResourceExhausted(f"the registry's program versions take {held / 2**20:.1f} MiB and this one "
                                        f"{len(new.spec) / 2**20:.2f} MiB more, past its {self.max_bytes / 2**20:.0f} MiB "
                                        "(--max-programs-bytes); delete some first")
            async with _store_errors():
                added = await self.store.add_program(new, self.max_programs)
            entry = _version(added.record, created=added.created)
            versions = self._versions.setdefault(spec.name, {})
            versions[entry.version] = entry
            self.bases[spec.name] = _base(versions)
        return entry

    async def delete(self, name: str, version: int = 0) -> list[int]:
        if version < 0:
            raise _negative(version)
        async with self._writing:
            async with _store_errors():
                deleted = await self.store.delete_programs(name, version)
            if not deleted:  # a program the store lost (a reset) that this replica still serves can be deleted too
                deleted = self._forget_kept(name, version)
            if not deleted:
                raise NotFound(f"no program named {name!r}" if version == 0 else f"program {name!r} has no version {version}")
            versions = self._versions.get(name, {})
            for number in deleted:
                versions.pop(number, None)
            if versions:
                self.bases[name] = _base(versions)
            else:
                self._versions.pop(name, None)
                self.bases.pop(name, None)
                self.policies.pop(name, None)  # the store deleted it with the last version: the name starts afresh
        policy = self.policies.get(name)
        if versions and policy is not None:  # a policy never names a deleted version
            kept = policy_within(policy, versions)
            if kept is not policy:
                await self.set_policy(kept)
        return deleted

    def _forget_kept(self, name: str, version: int) -> list[int]:
        """Drop `version` (0: every version) of a name kept from before a store reset; the versions dropped."""
        kept = self._kept.get(name)
        if not kept:
            return []
        doomed = versions_to_delete(kept, version)
        for number in doomed:
            kept.pop(number)
        if not kept:
            self._kept.pop(name)
            self._kept_policies.pop(name, None)
        return doomed

    def holds(self, name: str, version: int) -> bool:
        """Whether the snapshot has this version (a call that ran on a version deleted meanwhile counts for nothing)."""
        versions = self._versions.get(name)
        return versions is not None and version in versions


def _negative(version: int) -> InvalidArgument:
    return InvalidArgument(f"version {version}: versions are numbered from 1 (0: the latest, or every one for a delete)")


def _was_reset(had: Revision, now: Revision) -> bool:
    """The store is not the one `had` was read from (another epoch), or went back (a revision never does)."""
    return now.epoch != had.epoch or now.programs < had.programs


def policy_within(policy: pb.ExecutionPolicy, versions: Collection[int]) -> pb.ExecutionPolicy:
    """`policy` with any base or optimized version that is not among `versions` cleared to 0 (the latest base;
    none promoted); `policy` itself when it names only versions that exist."""
    gone = [attribute for attribute in ("base_version", "optimized_version")
            if getattr(policy, attribute) and getattr(policy, attribute) not in versions]
    if not gone:
        return policy
    kept = pb.ExecutionPolicy()
    kept.CopyFrom(policy)
    for attribute in gone:
        setattr(kept, attribute, 0)
    return kept


def _base(versions: dict[int, ProgramVersion]) -> ProgramVersion:
    """The latest client-registered version, else the latest (a program of optimization results only)."""
    client_versions = [number for number, entry in versions.items() if entry.client_registered]
    return versions[max(client_versions or versions)]


def _version(record: ProgramRecord, created: bool) -> ProgramVersion:
    spec = pb.ProgramSpec.FromString(record.spec)
    created_at = timestamp_pb2.Timestamp()
    created_at.FromNanoseconds(int(record.created_at * 1e9))
    program = pb.Program(
        spec=spec, version=record.version, content_hash=record.content_hash, created_at=created_at,
        input_names=record.input_names, output_names=record.output_names, created=created,
    )
    if record.meta:
        program.meta.ParseFromString(record.meta)
    return ProgramVersion(program, program_ref(spec), record.takes_history)


def _store_errors():
    """The store unreachable is UNAVAILABLE for the caller, with what to expect."""
    return unavailable_while_down("programs already known keep serving, changes are refused until it is back")
