"""What each front of a --front-processes group is told, and how their statuses merge (pure)."""

from __future__ import annotations

import pytest

from dspy_pool.fronts.plan import front_config, listen_with_port, share
from dspy_pool.server.config import build
from dspy_pool.server.peers import FrontGroup, merge
from dspy_pool.v1 import dspy_pool_pb2 as pb


@pytest.mark.parametrize("total,count,expected", [(0, 2, 0), (1, 2, 1), (2, 2, 1), (3, 2, 2), (16, 4, 4), (5, 4, 2)])
def test_each_front_gets_its_rounded_up_share(total, count, expected):
    assert share(total, count) == expected
    assert total == 0 or share(total, count) * count >= total  # the group never has fewer workers than asked


def test_a_front_runs_its_share_on_the_groups_port_with_a_private_metrics_port():
    config = build(front_processes=3, listen="0.0.0.0:0", workers=4, min_workers=2, max_workers=10, metrics_port=9100,
                   metrics_addr="0.0.0.0")
    front = front_config(config, 50123)
    assert front.server.front_processes == 1
    assert front.server.listen == "0.0.0.0:50123"
    assert (front.pool.workers, front.pool.min_workers, front.pool.max_workers) == (2, 1, 4)
    assert (front.observe.metrics_port, front.observe.metrics_addr) == (0, "127.0.0.1")  # the supervisor owns 9100
    assert front.lm == config.lm and front.state == config.state


def test_metrics_stay_off_in_fronts_when_off_for_the_group():
    assert front_config(build(front_processes=2, metrics_port=-1), 1).observe.metrics_port == -1


def test_ipv6_listen_keeps_its_brackets():
    assert listen_with_port("[::1]:0", 7000) == "[::1]:7000"


@pytest.mark.parametrize("values,problem", [
    (dict(front_processes=2, state="memory"), "needs a state store the fronts share"),
    (dict(front_processes=2, listen="unix:/tmp/x.sock"), "needs a TCP listen address"),
])
def test_a_group_needs_a_shared_store_and_a_tcp_port(values, problem):
    with pytest.raises(ValueError, match=problem):
        build(**values)


def test_a_front_index_must_be_in_the_group():
    with pytest.raises(ValueError):
        FrontGroup(2, 2, "/tmp")
    assert FrontGroup(1, 3, "/run/g").peer_indexes == [0, 2]
    assert FrontGroup(1, 3, "/run/g").own_socket == "unix:/run/g/front-1.sock"


def _front(index: int, in_flight: int, completed: int, breaker_state: str) -> pb.PoolStatus:
    status = pb.PoolStatus(serving=index == 0, in_flight=in_flight, completed=completed, queue_wait_p95_ms=float(index * 10),
                           health_score=1.0 - index * 0.5, config=pb.PoolConfig(workers=1, min_workers=1, max_workers=2),
                           quarantined_programs=[f"p{index}", "shared"])
    status.workers.add(id=1, pid=100 + index, front=index)
    status.fronts.add(index=index, pid=10 + index, answered=index == 0)
    status.breakers.add(program="qa", lm_endpoint="sim", state=breaker_state)
    status.cache_levels.add(level="memory", hits=1, entries=2, bytes=30)
    status.cache_levels.add(level="store", hits=1, entries=-1, bytes=-1)
    return status


def test_merged_status_sums_counters_and_keeps_the_worst_of_each_breaker():
    merged = merge(_front(0, 3, 10, "closed"), {2: _front(2, 4, 5, "open"), 1: _front(1, 0, 1, "half_open")})
    assert (merged.in_flight, merged.completed) == (7, 16)
    assert merged.serving  # at least one front serves
    assert merged.queue_wait_p95_ms == 20.0 and merged.health_score == 0.0  # the worst front
    assert (merged.config.workers, merged.config.min_workers, merged.config.max_workers) == (3, 3, 6)
    assert [f.index for f in merged.fronts] == [0, 1, 2] and [f.answered for f in merged.fronts] == [True, False, False]
    assert sorted(w.front for w in merged.workers) == [0, 1, 2]
    assert [b.state for b in merged.breakers] == ["open"]
    assert sorted(merged.quarantined_programs) == ["p0", "p1", "p2", "shared"]
    levels = {level.level: level for level in merged.cache_levels}
    assert (levels["memory"].hits, levels["memory"].entries, levels["memory"].bytes) == (3, 6, 90)
    assert (levels["store"].hits, levels["store"].entries) == (3, -1)  # one store: its size is not summed


def test_a_peer_that_did_not_answer_is_listed_as_not_serving_and_adds_nothing_else():
    merged = merge(_front(0, 3, 10, "closed"), {1: None, 2: _front(2, 4, 5, "open")})
    assert [(f.index, f.pid) for f in merged.fronts] == [(0, 10), (1, 0), (2, 12)]
    silent = merged.fronts[1]
    assert (silent.serving, silent.answered, silent.workers, silent.in_flight) == (False, False, 0, 0)
    assert (merged.in_flight, merged.completed, merged.config.workers) == (7, 15, 2)
    assert merged.health_score == 0.0 and sorted(w.front for w in merged.workers) == [0, 2]


def test_a_group_where_no_peer_answered_still_lists_every_front():
    merged = merge(_front(0, 3, 10, "closed"), {1: None})
    assert [(f.index, f.pid, f.answered) for f in merged.fronts] == [(0, 10, True), (1, 0, False)]
    assert merged.serving  # this front still serves
    assert merged.health_score == 1.0 and merged.in_flight == 3


def _stats(*arms: tuple) -> pb.ProgramStats:
    stats = pb.ProgramStats(program="qa")
    for version, arm, calls, errors, p50, p95, feedback, mean in arms:
        stats.arms.add(version=version, arm=arm, calls=calls, errors=errors, latency_p50_ms=p50, latency_p95_ms=p95,
                       error_rate=errors / calls if calls else 0.0, feedback_count=feedback, feedback_score_mean=mean)
    return stats


def test_program_stats_merge_sums_counts_and_weights_means():
    from dspy_pool.server.peers import merge_program_stats

    merged = merge_program_stats(_stats((1, "traditional", 30, 3, 10.0, 40.0, 2, 1.0)),
                                 [_stats((1, "traditional", 10, 1, 20.0, 90.0, 6, 0.5), (2, "optimized", 5, 0, 8.0, 9.0, 0, 0.0))])
    arms = {(arm.version, arm.arm): arm for arm in merged.arms}
    first = arms[(1, "traditional")]
    assert (first.calls, first.errors, first.error_rate) == (40, 4, 0.1)
    assert first.latency_p50_ms == pytest.approx(12.5) and first.latency_p95_ms == 90.0  # weighted p50, worst p95
    assert (first.feedback_count, first.feedback_score_mean) == (8, pytest.approx(0.625))
    assert arms[(2, "optimized")].calls == 5  # an arm only a peer served


def test_socket_folders_of_killed_groups_are_swept_and_live_ones_kept(tmp_path):
    """A group killed with SIGKILL leaves its socket folder; the next group removes those whose supervisor is gone."""
    from dspy_pool.fronts.supervisor import sweep_socket_dirs

    for name in ("dspy-pool-fronts-111-ab", "dspy-pool-fronts-222-cd", "dspy-pool-fronts-xyz", "other-333-ef"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "front-0.sock").write_text("")
    (tmp_path / "dspy-pool-fronts-444-file").write_text("not a folder")
    assert sweep_socket_dirs(str(tmp_path), alive=lambda pid: pid == 222) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dspy-pool-fronts-222-cd", "dspy-pool-fronts-444-file", "dspy-pool-fronts-xyz", "other-333-ef"]
