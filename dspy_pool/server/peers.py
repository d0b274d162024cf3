"""A front among N (--front-processes): its place in the group, and the group's one status.

Every front also listens on a private Unix socket in the group's folder, so
the others can reach it: the shared TCP port lands on whichever front the
kernel picks. GetPoolStatus on any front asks the others for their own status
(metadata `x-dspy-pool-scope: front`) and merges:

    local status ─┐
    peer 1 status ─┼─> merge() ──> one PoolStatus: counters summed, workers listed with their front,
    peer 2 status ─┘                worst breaker per key, one FrontStatus per front

A peer that does not answer within a second adds nothing but its FrontStatus,
with serving false and pid 0 (a client can tell it apart from a draining
front, which answers with its pid); the front supervisor restarts a dead or
hung one.
CancelOptimization for a job another front runs, and RecordFeedback for a call
another front captured, are passed to the peers the same way: only the front
running a job can stop its optimizer worker, and a capture lives in the memory
of the front that served the call. GetProgramStats merges every front's counts
(merge_program_stats): each front counts the calls it served.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

__all__ = ["FrontGroup", "Peers", "merge", "merge_program_stats", "SCOPE_KEY", "SCOPE_FRONT"]

SCOPE_KEY = "x-dspy-pool-scope"
SCOPE_FRONT = "front"  # this front only: what a peer asks for
_PEER_TIMEOUT_S = 1.0

_SUMMED = ("queue_depth", "in_flight", "completed", "failed", "rejected", "worker_restarts", "retries", "fallbacks_served",
           "recycled_workers", "scale_events", "workers_warming", "warmup_calls", "warmup_failures", "worker_cpu_percent",
           "sessions_evicted", "sessions_refused", "calls_per_s")
_BREAKER_RANK = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class FrontGroup:
    """This front's place among the group's front processes."""

    index: int
    count: int
    socket_dir: str  # the group's private folder: front-<i>.sock per front

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"front index {self.index} outside 0..{self.count - 1}")

    def socket(self, index: int) -> str:
        return "unix:" + os.path.join(self.socket_dir, f"front-{index}.sock")

    @property
    def own_socket(self) -> str:
        return self.socket(self.index)

    @property
    def peer_indexes(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]


class Peers:
    """Channels to the other fronts of the group, opened on first use."""

    def __init__(self, group: FrontGroup) -> None:
        self.group = group
        self._stubs: dict[int, pb_grpc.DSPyPoolStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    def _stub(self, index: int) -> pb_grpc.DSPyPoolStub:
        stub = self._stubs.get(index)
        if stub is None:
            channel = grpc.aio.insecure_channel(self.group.socket(index))
            self._channels.append(channel)
            stub = self._stubs[index] = pb_grpc.DSPyPoolStub(channel)
        return stub

    async def _status(self, index: int) -> pb.PoolStatus | None:
        try:
            return await self._stub(index).GetPoolStatus(pb.GetPoolStatusRequest(), timeout=_PEER_TIMEOUT_S,
                                                         metadata=((SCOPE_KEY, SCOPE_FRONT),))
        except grpc.RpcError:
            return None  # down, restarting or hung: merge() lists it as not serving

    async def statuses(self) -> dict[int, pb.PoolStatus | None]:
        """Each other front's own status by index; None for one that did not answer."""
        indexes = self.group.peer_indexes
        return dict(zip(indexes, await asyncio.gather(*(self._status(index) for index in indexes))))

    async def cancel_optimization(self, job_id: str) -> None:
        """Ask every other front to cancel `job_id`; the one running it does (the others find it is not theirs)."""
        async def ask(index: int) -> None:
            try:
                await self._stub(index).CancelOptimization(pb.CancelOptimizationRequest(job_id=job_id), timeout=_PEER_TIMEOUT_S,
                                                           metadata=((SCOPE_KEY, SCOPE_FRONT),))
            except grpc.RpcError:
                pass  # down: its lease runs out and the job is marked interrupted

        await asyncio.gather(*(ask(index) for index in self.group.peer_indexes))

    async def record_feedback(self, request: pb.RecordFeedbackRequest) -> pb.RecordFeedbackResponse | None:
        """Feedback on a call another front captured: the front holding it answers (a capture is taken once)."""
        async def ask(index: int) -> pb.RecordFeedbackResponse | None:
            try:
                return await self._stub(index).RecordFeedback(request, timeout=_PEER_TIMEOUT_S * 10, metadata=((SCOPE_KEY, SCOPE_FRONT),))
            except grpc.RpcError:
                return None  # not captured there (NOT_FOUND), or down

        answers = await asyncio.gather(*(ask(index) for index in self.group.peer_indexes))
        return next((answer for answer in answers if answer is not None), None)

    async def program_stats(self, request: pb.GetProgramStatsRequest) -> list[pb.ProgramStats]:
        async def ask(index: int) -> pb.ProgramStats | None:
            try:
                return await self._stub(index).GetProgramStats(request, timeout=_PEER_TIMEOUT_S, metadata=((SCOPE_KEY, SCOPE_FRONT),))
            except grpc.RpcError:
                return None

        answers = await asyncio.gather(*(ask(index) for index in self.group.peer_indexes))
        return [answer for answer in answers if answer is not None]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


def merge(local: pb.PoolStatus, peers: Mapping[int, pb.PoolStatus | None]) -> pb.PoolStatus:
    """One status for the group: `local` (this front's, with its FrontStatus) plus what the peers answered, by index;
    a peer that did not answer (None) is listed as a front that is not serving, and adds nothing else."""
    merged = pb.PoolStatus()
    merged.CopyFrom(local)
    for index, peer in peers.items():
        if peer is None:
            merged.fronts.add(index=index, serving=False, answered=False)
            continue
        for name in _SUMMED:
            setattr(merged, name, getattr(merged, name) + getattr(peer, name))
        merged.serving = merged.serving or peer.serving
        merged.queue_wait_p95_ms = max(merged.queue_wait_p95_ms, peer.queue_wait_p95_ms)
        merged.health_score = min(merged.health_score, peer.health_score)
        merged.config.workers += peer.config.workers
        merged.config.min_workers += peer.config.min_workers
        merged.config.max_workers += peer.config.max_workers
        merged.workers.extend(peer.workers)
        merged.fronts.extend(peer.fronts)
        for name in peer.quarantined_programs:
            if name not in merged.quarantined_programs:
                merged.quarantined_programs.append(name)
        merged.state_store_problem = merged.state_store_problem or peer.state_store_problem  # one store, shared
        _merge_cache_levels(merged, peer)
        _merge_breakers(merged, peer)
    merged.fronts.sort(key=lambda front: front.index)
    return merged


def _merge_cache_levels(merged: pb.PoolStatus, peer: pb.PoolStatus) -> None:
    levels = {level.level: level for level in merged.cache_levels}
    for level in peer.cache_levels:
        mine = levels.get(level.level)
        if mine is None:
            merged.cache_levels.add().CopyFrom(level)
            continue
        mine.hits += level.hits
        mine.misses += level.misses
        mine.evictions += level.evictions
        if level.level == "memory":  # one memory per front; the store is one and the same
            mine.entries += level.entries
            mine.bytes += level.bytes


def _merge_breakers(merged: pb.PoolStatus, peer: pb.PoolStatus) -> None:
    """Breakers are per front: show the worst state per (program, endpoint), as a caller may meet it."""
    mine = {(b.program, b.lm_endpoint): b for b in merged.breakers}
    for breaker in peer.breakers:
        current = mine.get((breaker.program, breaker.lm_endpoint))
        if current is None:
            merged.breakers.add().CopyFrom(breaker)
        elif _BREAKER_RANK.get(breaker.state, 0) > _BREAKER_RANK.get(current.state, 0):
            current.CopyFrom(breaker)


def merge_program_stats(local: pb.ProgramStats, peers: list[pb.ProgramStats]) -> pb.ProgramStats:
    """One program's statistics over the fronts, per (version, arm): counts summed, means weighted by what they
    average; the p50 is the calls-weighted mean of the fronts' p50s and the p95 their maximum (percentiles of
    separate windows do not merge exactly: both are approximations, the p95 a conservative one)."""
    merged = pb.ProgramStats()
    merged.CopyFrom(local)
    arms = {(arm.version, arm.arm): arm for arm in merged.arms}
    for peer in peers:
        for arm in peer.arms:
            mine = arms.get((arm.version, arm.arm))
            if mine is None:
                mine = arms[(arm.version, arm.arm)] = merged.arms.add()
                mine.CopyFrom(arm)
                continue
            calls = mine.calls + arm.calls
            feedback = mine.feedback_count + arm.feedback_count
            if calls:
                mine.latency_p50_ms = (mine.latency_p50_ms * mine.calls + arm.latency_p50_ms * arm.calls) / calls
            if feedback:
                mine.feedback_score_mean = (mine.feedback_score_mean * mine.feedback_count
                                            + arm.feedback_score_mean * arm.feedback_count) / feedback
            mine.latency_p95_ms = max(mine.latency_p95_ms, arm.latency_p95_ms)
            mine.calls, mine.errors, mine.feedback_count = calls, mine.errors + arm.errors, feedback
            mine.error_rate = mine.errors / calls if calls else 0.0
    return merged
