"""The one state store's interface and the records it holds.

Everything durable goes through a `StateStore`: the program registry (every
version), sessions (their turns), the result cache's lower levels, and next
the optimization issue's datasets, jobs and feedback. Nothing else in
dspy-pool talks to a database. Three backends implement it:

    memory   this process only (tests, throwaway runs); says so at start-up
    sqlite   the embedded default: one file in --state-dir, WAL, every call on a thread
    redis    several replicas sharing one state (redis-py's asyncio client)

Rules every backend keeps:
- Every method is a coroutine and never blocks the event loop.
- A method that changes state returns only after the change is committed
  (an RPC answers OK only then: DESIGN.md hard rule 11).
- Failures to reach the store raise `StateUnavailable` (the RPC answers
  UNAVAILABLE); a store that cannot be opened safely (a schema written by a
  newer version, a corrupt file, a wrong URL) raises `StateError` naming where,
  and nothing is ever reset or overwritten to get past it.
- Times are wall-clock seconds (time.time()): they must mean the same thing
  after a restart and on another replica.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

SCHEMA_VERSION = 4  # bump with a migration in every backend that keeps a schema


class StateError(Exception):
    """The store cannot be opened or used safely; the message names the path or URL and what is wrong."""


class StateUnavailable(StateError):
    """The store cannot be reached right now (Redis down); reads of what is already known still work."""


@dataclass(frozen=True, slots=True)
class ProgramRecord:
    """One registered program version, as stored."""

    name: str
    version: int
    spec: bytes  # serialized dspy_pool.v1.ProgramSpec
    content_hash: str  # sha256 of the spec, deterministic serialization
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    takes_history: bool
    created_at: float  # wall-clock seconds
    meta: bytes = b""  # serialized dspy_pool.v1.ProgramMeta (provenance and scores of an optimized version), opaque here


@dataclass(frozen=True, slots=True)
class NewProgram:
    """A version to add: the store assigns its number."""

    name: str
    spec: bytes
    content_hash: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    takes_history: bool
    created_at: float
    meta: bytes = b""  # stored with the version and returned as is


@dataclass(frozen=True, slots=True)
class AddedProgram:
    record: ProgramRecord
    created: bool  # False: the latest version of this name already had this content, and is returned as is


@dataclass(frozen=True, slots=True)
class TurnRecord:
    program: str
    inputs_json: str  # JSON object
    outputs_json: str  # JSON object


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    created_at: float
    last_used_at: float
    turns: tuple[TurnRecord, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class ExampleRecord:
    """One labelled example of a dataset: what a call gets, and what it should answer."""

    inputs_json: str  # JSON object
    outputs_json: str  # JSON object: the expected outputs
    source: str = "client"  # "client" (AddExamples) or "feedback" (RecordFeedback on a captured call)
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    name: str
    counts: tuple[tuple[str, int], ...]  # (split, examples), splits sorted: ("dev", n), ("train", m)
    content_hash: str  # sha256 over every example of every split, in order: equal content, equal hash
    updated_at: float


@dataclass(frozen=True, slots=True)
class JobRecord:
    """An optimization job as stored: the request it was started with, where it is, what it produced.

    Everything but the identity is opaque to the store: `request`, `progress` and `result` are
    serialized protobuf messages (dspy_pool.v1.StartOptimizationRequest, OptimizationProgress,
    OptimizationResult) the optimize package reads.
    """

    job_id: str
    dedup_key: str  # equal for identical jobs (program version, dataset hash, optimizer, options, metric)
    program: str  # the program's name, for listing
    state: str  # queued | running | succeeded | failed | cancelled | interrupted
    priority: int
    created_at: float
    updated_at: float
    request: bytes = b""
    progress: bytes = b""
    result: bytes = b""
    error: str = ""
    owner: str = ""  # the replica running it (its lease holder), "" when none
    lease_expires_at: float = 0.0


JOB_ACTIVE_STATES = ("queued", "running")
JOB_FINISHED_STATES = ("succeeded", "failed", "cancelled", "interrupted")  # final: put_job never moves a job out of one


@dataclass(frozen=True, slots=True)
class Revision:
    """Where the store's programs stand. A replica compares both parts: the revision alone cannot tell a store
    that moved on from one that was wiped (FLUSHALL, an empty Redis restarted) and has since counted past it."""

    epoch: str  # the store's identity, written when it was created: another one ("" when lost) is another store
    programs: int  # program_revision()


@dataclass(frozen=True, slots=True)
class StatsCount:
    """Counts of one program's version and arm: add_stats adds them up, load_stats returns the sums. Feedback is per
    version (arm ""), examples added from feedback per program (version 0, arm "")."""

    program: str
    version: int
    arm: str
    calls: int = 0
    errors: int = 0
    feedback_count: int = 0
    feedback_sum: float = 0.0
    feedback_examples: int = 0


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What bounds sessions, the same on every replica and across restarts."""

    ttl_s: float
    max_turns: int
    max_sessions: int
    protect_s: float  # at the cap, sessions used this recently are never evicted
    max_bytes: int = 0  # a session keeps its newest turns whose inputs and outputs fit this (the newest always); 0: no bound


@dataclass(frozen=True, slots=True)
class AppendResult:
    session: SessionRecord  # after the append (turns trimmed to max_turns)
    started: bool  # this append created the session
    evicted: tuple[str, ...] = ()  # sessions pushed out (idle past protect_s) to make room


class StateStore(abc.ABC):
    """The async interface every backend implements. `open()` before use, `close()` after."""

    #: what the store is, for logs and errors ("sqlite:///var/lib/dspy-pool/state.db"); never a password
    description: str = ""
    #: False for the memory backend: state ends with the process
    durable: bool = True
    #: True when several servers may use the store at once (Redis): leases decide who runs a job
    shared: bool = False

    @property
    def write_problem(self) -> str:
        """Why writes are refused until a restart, though reads still work ("" when they are not)."""
        return ""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema; StateError if it was written by a newer version or is unreadable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; idempotent."""

    # -- programs -------------------------------------------------------------
    @abc.abstractmethod
    async def add_program(self, program: NewProgram, max_programs: int) -> AddedProgram:
        """Add the next version of `program.name`, atomically across replicas.

        If the latest version a client registered (no meta) has the same content
        hash as a client's registration, return it with created=False instead;
        an optimization's result (meta set) is compared with the latest version. Version numbers are never reused, even after
        a delete. Past `max_programs` versions in all, raise ResourceExhausted
        (dspy_pool.errors).
        """

    @abc.abstractmethod
    async def delete_programs(self, name: str, version: int = 0) -> list[int]:
        """Delete one version, or every version when `version` is 0; the versions deleted ([] if none). The deleted
        versions' statistics go with them, and the program's policy and statistics with its last version."""

    @abc.abstractmethod
    async def list_programs(self) -> list[ProgramRecord]:
        """Every stored version, by name then version."""

    @abc.abstractmethod
    async def revision(self) -> Revision:
        """The store's epoch and program revision, read together: a replica reloads the list when the revision
        moves, and takes a changed epoch for a store that lost what it held (registry.refresh)."""

    async def program_revision(self) -> int:
        """A counter every add and delete increases (and every put_policy)."""
        return (await self.revision()).programs

    # -- sessions -------------------------------------------------------------
    @abc.abstractmethod
    async def get_session(self, session_id: str, now: float, limits: SessionLimits) -> SessionRecord | None:
        """The live session, or None (never used, closed, or expired: an expired one is deleted here).

        Expired means idle longer than `ttl_s` (state.policy.is_expired); reading does not touch
        `last_used_at` (append_turn does).
        """

    @abc.abstractmethod
    async def open_session(self, session_id: str, now: float, limits: SessionLimits, with_turns: bool = True) -> AppendResult:
        """The live session (touched), or a new empty one (started=True) created under the same cap policy
        as `append_turn`: called before a session's call runs, so a call that would exceed the cap is
        refused before it spends anything on the LM. The turns returned are the history the call sees;
        with `with_turns=False` (a program without a history input) none are read or returned."""

    @abc.abstractmethod
    async def append_turn(self, session_id: str, turn: TurnRecord, now: float, limits: SessionLimits,
                          with_turns: bool = False) -> AppendResult:
        """Append one turn atomically (two replicas appending at once both keep theirs), keep the last
        `max_turns`, touch `last_used_at`. Creating a session at `max_sessions` first removes expired
        ones, then the least recently used one idle at least `protect_s`; if none can go, raise
        ResourceExhausted (dspy_pool.errors) with a retry hint. The result carries the session's turns only
        with `with_turns=True` (the hot path does not need them back: reading them costs most of a call)."""

    @abc.abstractmethod
    async def delete_session(self, session_id: str) -> SessionRecord | None:
        """Remove a session; what it held, or None if there was none."""

    @abc.abstractmethod
    async def expire_sessions(self, now: float, limits: SessionLimits) -> list[str]:
        """Delete sessions idle longer than the TTL; their ids."""

    @abc.abstractmethod
    async def count_sessions(self) -> int:
        """Live sessions stored (expired ones not yet swept may count)."""

    # -- result cache (the levels below the front's memory) ----------------------
    @abc.abstractmethod
    async def cache_get(self, key: bytes, now: float) -> bytes | None:
        """A cached value not past its expiry (live while now < expires_at), counting the hit; None on a miss."""

    @abc.abstractmethod
    async def cache_put(self, key: bytes, value: bytes, expires_at: float, max_bytes: int = 0) -> None:
        """Store or replace a value (a replaced key keeps its hit count). With max_bytes, the entries that expire
        soonest make room, so the cache holds at most max_bytes (entries cost state.policy.entry_bytes; the one put
        always stays, and one larger than max_bytes alone is not stored). 0: no bound."""

    @abc.abstractmethod
    async def cache_top(self, limit: int, max_bytes: int, now: float) -> list[tuple[bytes, bytes, float]]:
        """The most-hit live entries (key, value, expires_at), at most `limit` and `max_bytes` in all: for warming.

        An entry costs len(key) + len(value); one that does not fit what is left is skipped (state.policy.pick_top).
        """

    async def cache_expire(self, now: float) -> int:
        """Delete entries past their expiry; how many. Call it now and then: expired entries are otherwise only
        dropped when read. A backend whose entries expire by themselves (Redis TTLs) keeps this default."""
        return 0

    async def release_free_space(self) -> int:
        """Give space that deleted rows left free back to the file system, a bounded amount at a time (state.policy.
        pages_to_release); pages given back. Call it now and then. A backend with no file (memory, Redis) keeps this."""
        return 0

    # -- datasets (optimization's training data) ----------------------------------
    @abc.abstractmethod
    async def add_examples(self, dataset: str, split: str, examples: list[ExampleRecord], max_examples: int) -> DatasetInfo:
        """Append examples to a split (creating the dataset), atomically; past `max_examples` in the
        dataset raise ResourceExhausted (dspy_pool.errors) and add none. The content hash changes."""

    @abc.abstractmethod
    async def get_dataset(self, dataset: str) -> DatasetInfo | None: ...

    @abc.abstractmethod
    async def list_datasets(self) -> list[DatasetInfo]:
        """Every dataset, by name."""

    @abc.abstractmethod
    async def load_examples(self, dataset: str, split: str) -> list[ExampleRecord]:
        """A split's examples in the order they were added ([] for an unknown dataset or split)."""

    @abc.abstractmethod
    async def delete_dataset(self, dataset: str) -> bool:
        """Remove a dataset and its examples; False if there was none."""

    # -- optimization jobs ------------------------------------------------------------
    @abc.abstractmethod
    async def put_job(self, job: JobRecord) -> bool:
        """Insert or replace a job by job_id (committed when this returns); True if written.

        A job already stored in a finished state (JOB_FINISHED_STATES) is final: it is kept as it is and this
        returns False, so a runner that outlived its lease cannot turn `interrupted` back into `succeeded`."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> JobRecord | None: ...

    @abc.abstractmethod
    async def list_jobs(self, program: str = "", states: tuple[str, ...] = (), limit: int = 100) -> list[JobRecord]:
        """Jobs, newest first, optionally of one program and/or in some states."""

    @abc.abstractmethod
    async def prune_jobs(self, keep: int) -> int:
        """Delete the finished jobs (and their cancel requests) older than the newest `keep` finished ones; queued and
        running jobs are never deleted. Returns how many went. (Jobs started and cancelled in a loop grew without end.)"""

    @abc.abstractmethod
    async def find_job(self, dedup_key: str) -> JobRecord | None:
        """The newest job with this dedup key (for "start an identical job: get that one")."""

    @abc.abstractmethod
    async def claim_job(self, job_id: str, owner: str, now: float, lease_s: float) -> bool:
        """Take (or renew) the lease on a job atomically: True if it was free, expired, or already `owner`'s.
        With several replicas on one store exactly one runs a job."""

    @abc.abstractmethod
    async def request_job_cancel(self, job_id: str, now: float) -> None:
        """Ask whichever process runs `job_id` to stop it (it reads job_cancel_requested while it runs);
        committed when this returns, and asking again changes nothing."""

    @abc.abstractmethod
    async def job_cancel_requested(self, job_id: str) -> bool: ...

    # -- execution policies ---------------------------------------------------------------
    @abc.abstractmethod
    async def put_policy(self, program: str, policy: bytes) -> None:
        """Store a program's execution policy (a serialized dspy_pool.v1.ExecutionPolicy) and move the
        program revision, so replicas reload it with the programs (versioned reads)."""

    @abc.abstractmethod
    async def list_policies(self) -> dict[str, bytes]:
        """Every program's execution policy."""

    # -- program statistics (what each version served, and its feedback) -------------
    @abc.abstractmethod
    async def add_stats(self, counts: list[StatsCount], batch_id: str) -> None:
        """Add each count to its (program, version, arm) sums, all or none: fronts and replicas add theirs. A batch id
        already added is not added again (a retry of a batch whose outcome was unknown, Redis timing out after it had
        the commands). Counts for a version the store no longer holds (version 0: for a program with none) are dropped:
        calls that finished after a delete must not bring its figures back."""

    @abc.abstractmethod
    async def load_stats(self) -> list[StatsCount]:
        """Every (program, version, arm) sum."""
