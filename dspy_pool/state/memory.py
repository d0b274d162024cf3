"""The memory backend: plain dicts in this process, for tests and throwaway runs.

It keeps exactly the contract the durable backends keep (tests/integration/
state_contract.py runs against all of them), only nothing survives the
process. No method awaits anything, so each one runs to completion without
interleaving: that is the whole of its atomicity.
"""

from __future__ import annotations

import collections
import dataclasses
import uuid
from dataclasses import dataclass, field

from dspy_pool.state import policy
from dspy_pool.state.base import (
    JOB_FINISHED_STATES, AddedProgram, AppendResult, DatasetInfo, ExampleRecord, JobRecord, NewProgram, ProgramRecord,
    Revision, SessionLimits, SessionRecord, StateStore, StatsCount, TurnRecord,
)


@dataclass(slots=True)
class _Session:
    created_at: float
    last_used_at: float
    turns: collections.deque[TurnRecord] = field(default_factory=collections.deque)

    def record(self, session_id: str, with_turns: bool = True) -> SessionRecord:
        return SessionRecord(session_id, self.created_at, self.last_used_at, tuple(self.turns) if with_turns else ())


@dataclass(slots=True)
class _Split:
    examples: list[ExampleRecord] = field(default_factory=list)
    head: str = policy.EMPTY_HEAD


@dataclass(slots=True)
class _Dataset:
    splits: dict[str, _Split] = field(default_factory=dict)
    updated_at: float = 0.0

    def info(self, name: str) -> DatasetInfo:
        splits = [(split, len(s.examples), s.head) for split, s in sorted(self.splits.items()) if s.examples]
        return DatasetInfo(name, tuple((split, count) for split, count, _ in splits), policy.dataset_hash(splits),
                           self.updated_at)


@dataclass(slots=True)
class _CacheEntry:
    value: bytes
    expires_at: float
    hits: int = 0


_STATS_BATCHES_KEPT = 10_000


class MemoryStore(StateStore):
    description = "memory"
    durable = False

    def __init__(self) -> None:
        self._programs: dict[str, dict[int, ProgramRecord]] = {}
        # Per name, the highest version ever assigned: a deleted number is never handed out again.
        self._last_version: dict[str, int] = {}
        self._revision = 0
        self._epoch = uuid.uuid4().hex  # this store's identity: it lives and dies with the process
        # Least recently used first (append moves a session to the end), so the cap walks it from the front.
        self._sessions: collections.OrderedDict[str, _Session] = collections.OrderedDict()
        self._cache: dict[bytes, _CacheEntry] = {}
        self._datasets: dict[str, _Dataset] = {}
        self._jobs: dict[str, JobRecord] = {}
        self._job_cancels: set[str] = set()  # job ids asked to stop (request_job_cancel)
        self._policies: dict[str, bytes] = {}
        self._stats: dict[tuple[str, int, str], StatsCount] = {}
        self._stats_batches: dict[str, None] = {}  # batch ids added, oldest first (a retried batch is added once)

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- programs -------------------------------------------------------------
    async def add_program(self, program: NewProgram, max_programs: int) -> AddedProgram:
        versions = self._programs.get(program.name, {})
        compared = [number for number, record in versions.items() if program.meta or not record.meta]
        if compared:
            latest = versions[max(compared)]
            if latest.content_hash == program.content_hash:
                return AddedProgram(latest, created=False)
        if sum(len(v) for v in self._programs.values()) >= max_programs:
            raise policy.programs_full(max_programs)
        version = self._last_version.get(program.name, 0) + 1
        record = ProgramRecord(
            program.name, version, program.spec, program.content_hash, tuple(program.input_names),
            tuple(program.output_names), program.takes_history, program.created_at, program.meta,
        )
        self._programs.setdefault(program.name, {})[version] = record
        self._last_version[program.name] = version
        self._revision += 1
        return AddedProgram(record, created=True)

    async def delete_programs(self, name: str, version: int = 0) -> list[int]:
        versions = self._programs.get(name, {})
        doomed = policy.versions_to_delete(versions, version)
        for number in doomed:
            del versions[number]
        if doomed:
            self._stats = {key: count for key, count in self._stats.items() if not policy.forgotten(key, name, doomed)}
        if not versions:
            self._programs.pop(name, None)
            self._policies.pop(name, None)
            self._stats = {key: count for key, count in self._stats.items() if key[0] != name}
        if doomed:
            self._revision += 1
        return doomed

    async def list_programs(self) -> list[ProgramRecord]:
        return [self._programs[name][v] for name in sorted(self._programs) for v in sorted(self._programs[name])]

    async def revision(self) -> Revision:
        return Revision(self._epoch, self._revision)

    # -- sessions -------------------------------------------------------------
    def _live(self, session_id: str, now: float, limits: SessionLimits) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is not None and policy.is_expired(session.last_used_at, now, limits.ttl_s):
            del self._sessions[session_id]
            return None
        return session

    async def get_session(self, session_id: str, now: float, limits: SessionLimits) -> SessionRecord | None:
        session = self._live(session_id, now, limits)
        return None if session is None else session.record(session_id)

    async def open_session(self, session_id: str, now: float, limits: SessionLimits,
                           with_turns: bool = True) -> AppendResult:
        session, started, evicted = self._open(session_id, now, limits, opening=True)
        return AppendResult(session.record(session_id, with_turns), started, evicted)

    async def append_turn(self, session_id: str, turn: TurnRecord, now: float, limits: SessionLimits,
                          with_turns: bool = False) -> AppendResult:
        session, started, evicted = self._open(session_id, now, limits)
        session.turns.append(turn)
        while len(session.turns) > max(0, limits.max_turns):
            session.turns.popleft()
        if limits.max_bytes:
            sizes = [policy.turn_bytes(kept.inputs_json, kept.outputs_json) for kept in session.turns]
            for _ in range(policy.first_kept_by_size(sizes, limits.max_bytes)):
                session.turns.popleft()
        return AppendResult(session.record(session_id, with_turns), started, evicted)

    def _open(self, session_id: str, now: float, limits: SessionLimits,
              opening: bool = False) -> tuple[_Session, bool, tuple[str, ...]]:
        """The live session touched (an open only as policy.open_touches says), or a new one made room for:
        (session, started, evicted)."""
        session = self._live(session_id, now, limits)
        if session is not None:
            if not opening or policy.open_touches(session.last_used_at, now, limits):
                session.last_used_at = now
                self._sessions.move_to_end(session_id)
            return session, False, ()
        evicted = self._make_room(now, limits)
        session = self._sessions[session_id] = _Session(created_at=now, last_used_at=now)
        return session, True, evicted

    def _make_room(self, now: float, limits: SessionLimits) -> tuple[str, ...]:
        lru = ((sid, s.last_used_at) for sid, s in self._sessions.items())
        room = policy.make_room(len(self._sessions), lru, now, limits)
        if room.retry_after_ms:
            raise policy.sessions_full(limits, room)
        for sid in room.expired + room.evicted:
            del self._sessions[sid]
        return room.evicted

    async def delete_session(self, session_id: str) -> SessionRecord | None:
        session = self._sessions.pop(session_id, None)
        return None if session is None else session.record(session_id)

    async def expire_sessions(self, now: float, limits: SessionLimits) -> list[str]:
        gone = [sid for sid, s in self._sessions.items() if policy.is_expired(s.last_used_at, now, limits.ttl_s)]
        for sid in gone:
            del self._sessions[sid]
        return gone

    async def count_sessions(self) -> int:
        return len(self._sessions)

    # -- result cache -----------------------------------------------------------
    async def cache_get(self, key: bytes, now: float) -> bytes | None:
        entry = self._cache.get(key)
        if entry is None:
            return None
        if now >= entry.expires_at:
            del self._cache[key]
            return None
        entry.hits += 1
        return entry.value

    async def cache_put(self, key: bytes, value: bytes, expires_at: float, max_bytes: int = 0) -> None:
        if max_bytes and policy.entry_bytes(key, value) > max_bytes:
            return
        entry = self._cache.get(key)
        if entry is None:
            self._cache[key] = _CacheEntry(value, expires_at)
        else:  # a refreshed result keeps its key's popularity, as the other backends do
            entry.value, entry.expires_at = value, expires_at
        if max_bytes:  # a scan per put: this store is for tests and demos, and no cache level of the server
            excess = sum(policy.entry_bytes(k, e.value) for k, e in self._cache.items()) - max_bytes
            if excess > 0:
                by_expiry = sorted((e.expires_at, k) for k, e in self._cache.items() if k != key)
                for gone in policy.first_to_drop(((k, policy.entry_bytes(k, self._cache[k].value)) for _, k in by_expiry), excess):
                    del self._cache[gone]

    async def cache_top(self, limit: int, max_bytes: int, now: float) -> list[tuple[bytes, bytes, float]]:
        live = [(key, e) for key, e in self._cache.items() if now < e.expires_at]
        live.sort(key=lambda item: item[1].hits, reverse=True)
        return policy.pick_top(((key, e.value, e.expires_at) for key, e in live), limit, max_bytes)

    async def cache_expire(self, now: float) -> int:
        gone = [key for key, e in self._cache.items() if now >= e.expires_at]
        for key in gone:
            del self._cache[key]
        return len(gone)

    # -- datasets ---------------------------------------------------------------
    async def add_examples(self, dataset: str, split: str, examples: list[ExampleRecord],
                           max_examples: int) -> DatasetInfo:
        held = self._datasets.get(dataset)
        stored = 0 if held is None else sum(len(s.examples) for s in held.splits.values())
        if not policy.examples_fit(stored, len(examples), max_examples):
            raise policy.examples_full(dataset, stored, len(examples), max_examples)
        held = self._datasets.setdefault(dataset, _Dataset())
        if examples:
            part = held.splits.setdefault(split, _Split())
            part.examples.extend(examples)
            part.head = policy.chain_examples(part.head, examples)
            held.updated_at = max(held.updated_at, *(e.created_at for e in examples))
        return held.info(dataset)

    async def get_dataset(self, dataset: str) -> DatasetInfo | None:
        held = self._datasets.get(dataset)
        return None if held is None else held.info(dataset)

    async def list_datasets(self) -> list[DatasetInfo]:
        return [self._datasets[name].info(name) for name in sorted(self._datasets)]

    async def load_examples(self, dataset: str, split: str) -> list[ExampleRecord]:
        held = self._datasets.get(dataset)
        part = None if held is None else held.splits.get(split)
        return [] if part is None else list(part.examples)

    async def delete_dataset(self, dataset: str) -> bool:
        return self._datasets.pop(dataset, None) is not None

    # -- jobs -------------------------------------------------------------------
    async def put_job(self, job: JobRecord) -> bool:
        stored = self._jobs.get(job.job_id)
        if stored is not None and stored.state in JOB_FINISHED_STATES:
            return False
        self._jobs[job.job_id] = job
        return True

    async def get_job(self, job_id: str) -> JobRecord | None:
        return self._jobs.get(job_id)

    async def list_jobs(self, program: str = "", states: tuple[str, ...] = (), limit: int = 100) -> list[JobRecord]:
        jobs = [j for j in self._jobs.values() if (not program or j.program == program) and (not states or j.state in states)]
        jobs.sort(key=policy.newest_first, reverse=True)
        return jobs[:max(0, limit)]

    async def prune_jobs(self, keep: int) -> int:
        finished = sorted((j for j in self._jobs.values() if j.state in JOB_FINISHED_STATES), key=policy.newest_first, reverse=True)
        gone = finished[max(0, keep):]
        for job in gone:
            del self._jobs[job.job_id]
            self._job_cancels.discard(job.job_id)
        return len(gone)

    async def find_job(self, dedup_key: str) -> JobRecord | None:
        return max((j for j in self._jobs.values() if j.dedup_key == dedup_key), key=policy.newest_first, default=None)

    async def claim_job(self, job_id: str, owner: str, now: float, lease_s: float) -> bool:
        job = self._jobs.get(job_id)
        if job is None or not policy.can_claim(job.owner, job.lease_expires_at, owner, now):
            return False
        self._jobs[job_id] = dataclasses.replace(job, owner=owner, lease_expires_at=now + lease_s)
        return True

    async def request_job_cancel(self, job_id: str, now: float) -> None:
        self._job_cancels.add(job_id)

    async def job_cancel_requested(self, job_id: str) -> bool:
        return job_id in self._job_cancels

    # -- execution policies -------------------------------------------------------
    async def put_policy(self, program: str, policy: bytes) -> None:
        self._policies[program] = policy
        self._revision += 1

    async def list_policies(self) -> dict[str, bytes]:
        return dict(self._policies)

    # -- program statistics -------------------------------------------------------
    async def add_stats(self, counts: list[StatsCount], batch_id: str) -> None:
        if batch_id in self._stats_batches:
            return
        self._stats_batches[batch_id] = None
        if len(self._stats_batches) > _STATS_BATCHES_KEPT:
            self._stats_batches.pop(next(iter(self._stats_batches)))
        for count in counts:
            versions = self._programs.get(count.program)
            if not versions or (count.version and count.version not in versions):
                continue  # a deleted version's (or program's) late counts
            key = (count.program, count.version, count.arm)
            self._stats[key] = policy.add_counts(self._stats.get(key), count)

    async def load_stats(self) -> list[StatsCount]:
        return list(self._stats.values())
