"""The one resilience path every Execute takes: cache (serve) -> breaker -> primary (with retries) -> fallback chain.

    the program serves from the cache and an identical call was answered? --> that answer (served_by "cache")
         | no
    acquire breaker permit --none (open)--------------------------+
         | permit                                                  |
         v                                                         v
    primary on the pool --ok--> cache the result (if the program's  fallback steps in order:
         | PoolError             policy keeps results), SUCCESS     cache: last good result (memory, then store)
         | transient and budget left and time left? -> backoff,  static: fixed outputs
         |    retry (one permit covers the attempts)             program: a simpler program
         v                                                       fail: the original error
    record FAILURE (system) or IGNORED (caller's fault) ------->  (bad input never falls back)

Policies are the pure modules beside this one (breaker, retry, fallback,
cache policy); this module only sequences them. Nothing awaits while a
breaker is consulted, so no lock is held across the guarded call.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Collection
from dataclasses import dataclass

import structlog

from dspy_pool import errors, structs
from google.protobuf import struct_pb2

from dspy_pool.pool.api import CallResult, LMChoice
from dspy_pool.server import fallback as fallback_policy
from dspy_pool.server import retry as retry_policy
from dspy_pool.server.executor import Served, primary
from dspy_pool.server.breaker import AsyncBreakerGuard, BreakerConfig, BreakerKey, BreakerRegistry, Outcome
from dspy_pool.server.breaker import outcome_for as breaker_outcome_for
from dspy_pool.server.fallback import FallbackBudget, FallbackChain, Step, default_steps_for
from dspy_pool.server.registry import ProgramRegistry, ProgramVersion
from dspy_pool.server.cache import Mode, Policy, TieredCache, policy_for
from dspy_pool.server.result_cache import ResultCache, cache_key
from dspy_pool.v1 import dspy_pool_pb2 as pb

log = structlog.get_logger("dspy_pool.resilience")


@dataclass(frozen=True)
class ResilienceSettings:
    breaker: BreakerConfig = BreakerConfig()
    max_attempts: int = 3
    backoff_base_s: float = 0.05
    backoff_max_s: float = 1.0
    retry_ratio: float = 0.2
    cache_entries: int = 10000
    cache_ttl_s: float = 3600.0
    cache_max_bytes: int = 64 * 1024 * 1024
    fallback_concurrency: int = 256
    default_chain: tuple[str, ...] = ()
    fallback_lms: dict[str, str] | None = None  # model -> api_base, from the operator's config


def chain_for(spec: pb.ProgramSpec, default_chain: tuple[str, ...]) -> FallbackChain:
    """The program's own chain, else the server default; raises ValueError when invalid."""
    fb = spec.fallback
    static = structs.struct_to_dict(fb.static_outputs) if fb.HasField("static_outputs") else None
    steps = tuple(fb.chain) or default_steps_for(default_chain, fb.lm, fb.program, static)
    return FallbackChain(steps=steps, lm=fb.lm, lm_api_base=fb.lm_api_base, program=fb.program, static_outputs=static)


_CRASHES_REMEMBERED = 1024


@dataclass(frozen=True, slots=True)
class _ProgramFacts:
    """What the hot path needs of a program version, worked out once per content (program key)."""

    cache_policy: Policy
    chain: FallbackChain | None  # None: the spec's chain is invalid (refused at registration; never expected here)
    breaker_key: BreakerKey
    serves_from_cache: bool  # cache_policy.mode is SERVE
    writes_cache: bool  # cache_policy.writes
    reserves: bool  # the chain has steps, so the primary gets less than the whole deadline


class ResilientExecutor:
    def __init__(self, executor, registry: ProgramRegistry, settings: ResilienceSettings, lm_endpoint: str,
                 breakers: AsyncBreakerGuard | None = None, cache: TieredCache | None = None) -> None:
        self.executor = executor
        self.registry = registry
        self.settings = settings
        self.lm_endpoint = lm_endpoint
        self.breakers = breakers if breakers is not None else AsyncBreakerGuard(BreakerRegistry(settings.breaker))
        self.cache = cache if cache is not None else TieredCache(ResultCache(settings.cache_entries, settings.cache_max_bytes), None)
        self._facts: dict[str, _ProgramFacts] = {}
        self._max_attempts = settings.max_attempts
        self.retry_budget = retry_policy.RetryBudget(ratio=settings.retry_ratio)
        self.fallback_budget = FallbackBudget(settings.fallback_concurrency)
        self._rng = random.Random()
        self._crashes_counted: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self.retries = 0
        self.fallbacks_served = 0

    def forget(self, program: str, content_keys: Collection[str], every_version: bool) -> None:
        """A deletion: drop what was worked out for those contents, and the program's breakers once no version is left."""
        for key in content_keys:
            self._facts.pop(key, None)
        if every_version:
            for key in [key for key in self.breakers.registry.keys() if isinstance(key, BreakerKey) and key.program == program]:
                self.breakers.registry.discard(key)

    def _outcome_for(self, program: str, error: errors.PoolError, budget_s: float) -> Outcome:
        outcome = breaker_outcome_for(error, budget_s)  # the error table decides; this only de-duplicates deaths
        worker_pid = error.metadata.get("worker_pid")  # set only on errors a worker's death caused
        if outcome is Outcome.FAILURE and worker_pid:
            # One crash fails every call its worker ran; it is one failure, not one per call.
            crash = (program, worker_pid)
            if crash in self._crashes_counted:
                return Outcome.IGNORED
            self._crashes_counted[crash] = None
            if len(self._crashes_counted) > _CRASHES_REMEMBERED:
                self._crashes_counted.popitem(last=False)
        return outcome

    def _primary_deadline(self, facts: _ProgramFacts, deadline: float) -> float:
        """The deadline less the fallback chain's reserve, so a hanging LM is cut off while the chain can still answer."""
        if not facts.reserves:  # no chain: nothing to keep back (reserve_s would say 0)
            return deadline
        return deadline - fallback_policy.reserve_s(facts.chain, deadline - asyncio.get_running_loop().time())

    def check_fallback_lm(self, chain: FallbackChain) -> None:
        """A client may only name a fallback LM the operator allow-listed, and never its endpoint."""
        if Step.LM not in chain.steps:
            return
        allowed = self.settings.fallback_lms or {}
        if chain.lm not in allowed:
            names = ", ".join(sorted(allowed)) or "none configured (--fallback-lms)"
            raise errors.InvalidArgument(f"fallback lm {chain.lm!r} is not allowed; allowed: {names}")
        if chain.lm_api_base and chain.lm_api_base != allowed[chain.lm]:
            raise errors.InvalidArgument("fallback lm_api_base is set by the operator, not by clients; leave it empty")

    def _cache_key(self, program: ProgramVersion, request: pb.ExecuteRequest) -> bytes:
        return cache_key(program.name, program.version, request.inputs.SerializeToString(deterministic=True))

    def _program_facts(self, program: ProgramVersion) -> _ProgramFacts:
        facts = self._facts.get(program.key)
        if facts is None:
            spec = program.program.spec
            has_cache_step = Step.CACHE.value in (tuple(spec.fallback.chain) or self.settings.default_chain)
            try:
                chain = chain_for(spec, self.settings.default_chain)
            except ValueError:
                chain = None
            policy = policy_for(spec, self.settings.cache_ttl_s, has_cache_step)
            facts = self._facts[program.key] = _ProgramFacts(policy, chain, BreakerKey(spec.name, self.lm_endpoint),
                                                             policy.mode is Mode.SERVE, policy.writes,
                                                             chain is not None and bool(chain.steps))
        return facts

    def cache_policy(self, program: ProgramVersion) -> Policy:
        """The program's cache policy (validated at registration), worked out once per version."""
        return self._program_facts(program).cache_policy

    async def _served_from_cache(self, program: ProgramVersion, request: pb.ExecuteRequest) -> Served | None:
        """An identical earlier call's result, for programs that serve from the cache (never within a session)."""
        if request.session_id or program.takes_history:
            return None
        hit = await self.cache.get(self._cache_key(program, request), time.time())
        if hit is None:
            return None
        return Served(CallResult(struct_pb2.Struct.FromString(hit.value)), served_by="cache", cache_level=hit.level)

    async def execute(self, program: ProgramVersion, request: pb.ExecuteRequest, request_id: str, deadline: float) -> Served:
        facts = self._facts.get(program.key) or self._program_facts(program)
        if facts.serves_from_cache:
            cached = await self._served_from_cache(program, request)
            if cached is not None:
                return cached
        key = facts.breaker_key
        breakers = self.breakers
        permit = breakers.acquire(key)
        started = time.monotonic()  # the loop's clock (a deadline is on it), read without looking the loop up
        if permit is None:
            return await self._fall_back(program, request, deadline, "breaker_open", errors.Unavailable(
                f"circuit breaker open for {program.name!r}; no fallback answered"))
        try:
            # A half-open probe asks "is the LM back?" once; retrying it would multiply load on a sick provider.
            attempts = 1 if permit.probe else self._max_attempts
            # The worker gets the primary's deadline as its timeout and cancels the LM request there.
            primary_deadline = self._primary_deadline(facts, deadline) if facts.reserves else deadline
            self.retry_budget.record_call(time.monotonic())
            failed = None
            session_id = request.session_id
            try:  # the first attempt inline: one coroutine less on every call; retries only when it failed
                if session_id:
                    served = await self.executor.execute(program, request.inputs, session_id, request_id, primary_deadline)
                else:  # no session: the pool's awaitable itself, not a coroutine around it
                    served = primary(await self.executor.call(program, request.inputs, request_id, primary_deadline))
            except errors.PoolError as error:
                if attempts <= 1 or not retry_policy.is_transient(error.kind.value):
                    raise
                failed = error
            if failed is not None:  # out of the except block, so later attempts' errors do not chain to this one
                served = await self._retry(program, request, request_id, primary_deadline, attempts, failed)
        except errors.PoolError as error:
            breakers.record(key, permit, self._outcome_for(key.program, error, deadline - started))
            reason = fallback_policy.classify(error.kind.value)
            if reason is None:  # the caller's own fault never falls back
                raise
            return await self._fall_back(program, request, deadline, reason.value, error)
        except asyncio.CancelledError:
            breakers.record(key, permit, Outcome.IGNORED)
            raise
        breakers.record(key, permit, Outcome.SUCCESS)
        if facts.writes_cache:  # only programs whose policy reads the cache pay for serializing and hashing outputs
            self.cache.put(self._cache_key(program, request), served.result.outputs.SerializeToString(), time.time(),
                           facts.cache_policy.ttl_s)
        return served

    async def _retry(self, program, request, request_id, deadline, max_attempts: int, error: errors.PoolError):
        """Attempts 2.. after a transient first failure `error`, while attempts, the deadline and the retry budget allow."""
        attempt = 1
        while True:
            delay = retry_policy.backoff_delay(attempt - 1, self.settings.backoff_base_s, self.settings.backoff_max_s, self._rng)
            # The loop is looked up only here, on a retry: on 3.11 that costs a getpid syscall, every call would pay it.
            if asyncio.get_running_loop().time() + delay >= deadline or not self.retry_budget.try_spend(time.monotonic()):
                raise error
            self.retries += 1
            await asyncio.sleep(delay)
            try:
                return await self.executor.execute(program, request.inputs, request.session_id, request_id, deadline)
            except errors.PoolError as failed:
                attempt += 1
                if attempt >= max_attempts or not retry_policy.is_transient(failed.kind.value):
                    raise
                error = failed

    async def _fall_back(self, program: ProgramVersion, request: pb.ExecuteRequest, deadline: float, reason: str, error: errors.PoolError) -> Served:
        try:
            chain = chain_for(program.program.spec, self.settings.default_chain)
        except ValueError:
            raise error from None
        steps = fallback_policy.plan(chain, reason)
        if not steps or not self.fallback_budget.try_acquire():
            raise error
        try:
            for step in steps:
                served = await self._try_step(step, chain, program, request, deadline)
                if served is not None:
                    self.fallbacks_served += 1
                    return served._replace(served_by=step.value, fallback_reason=reason)
                if step is Step.FAIL:
                    break
        finally:
            self.fallback_budget.release()
        raise error

    async def _try_step(self, step: Step, chain: FallbackChain, program: ProgramVersion, request: pb.ExecuteRequest, deadline: float) -> Served | None:
        if step is Step.CACHE:
            hit = await self.cache.get(self._cache_key(program, request), time.time())
            if hit is None:
                return None
            return Served(CallResult(struct_pb2.Struct.FromString(hit.value)), cache_level=hit.level)
        if step is Step.STATIC:
            return Served(CallResult(structs.dict_to_struct(dict(chain.static_outputs or {}))))
        if step is Step.PROGRAM:
            try:
                simpler = await self.registry.find(chain.program)
                return await self.executor.execute(simpler, request.inputs, "", request.request_id, deadline)
            except errors.PoolError as step_error:
                log.info("fallback_step_failed", step=step.value, program=chain.program, kind=step_error.kind.value)
                return None
        if step is Step.LM and chain.lm in (self.settings.fallback_lms or {}):
            lm = LMChoice(chain.lm, (self.settings.fallback_lms or {})[chain.lm])
            try:
                return await self.executor.execute(program, request.inputs, "", request.request_id, deadline, lm=lm)
            except errors.PoolError as step_error:
                log.info("fallback_step_failed", step=step.value, lm=chain.lm, kind=step_error.kind.value)
                return None
        return None  # "fail" ends the chain
