"""The Python client's RetryPolicy (clients/python): what it resends, read from the server's ErrorInfo."""

from __future__ import annotations

import pathlib
import random
import sys

import grpc
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "clients" / "python"))

from dspy_pool_client.errors import DSPyPoolError, error_class  # noqa: E402
from dspy_pool_client.retry import RetryPolicy  # noqa: E402

POLICY = RetryPolicy(max_attempts=4)


def error(code: grpc.StatusCode, retry_after_s: float | None = None, **metadata: str) -> DSPyPoolError:
    return error_class(code)(code, "x", reason=metadata.get("kind", "").upper(), metadata=metadata, retry_after_s=retry_after_s)


@pytest.mark.parametrize("kind", ["worker_crashed", "worker_hung"])
def test_unavailable_that_may_have_run_is_not_retried(kind):
    """A worker that died running the call is UNAVAILABLE, but may_have_run=true forbids a second attempt."""
    crashed = error(grpc.StatusCode.UNAVAILABLE, kind=kind, may_have_run="true", transient="false")
    assert crashed.may_have_run and not POLICY.retryable(crashed)
    assert POLICY.delay_s(1, crashed, random.Random(0)) is None


def test_unavailable_that_did_not_run_is_retried():
    """Draining, breaker open, an LM 429: the call did not run, so it is sent again."""
    draining = error(grpc.StatusCode.UNAVAILABLE, kind="unavailable", may_have_run="false")
    assert POLICY.retryable(draining) and POLICY.delay_s(1, draining, random.Random(0)) is not None


def test_the_default_policy_keeps_trying_through_a_server_restart():
    """A server restarting answers UNAVAILABLE for a second or two (grpc's reconnect backoff is 1 s): the default
    waits add up to at least 3 s (4 attempts at 0.05 s doubling gave up after 0.35 s; the deadline still bounds them)."""
    unreachable = error(grpc.StatusCode.UNAVAILABLE)
    policy, rng = RetryPolicy(), random.Random(0)
    waits = []
    while (wait := policy.delay_s(len(waits) + 1, unreachable, rng)) is not None:
        waits.append(wait)
    assert sum(waits) >= 3.0 and max(waits) <= policy.max_backoff_s


def test_transport_unavailable_without_error_info_is_retried():
    """No ErrorInfo (the connection failed): retried as before; the README names the caveat."""
    assert POLICY.retryable(error(grpc.StatusCode.UNAVAILABLE))


def test_queue_full_needs_retry_info_and_not_run():
    """RESOURCE_EXHAUSTED is retried only with the server's RetryInfo."""
    assert POLICY.retryable(error(grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after_s=0.1, kind="queue_full", may_have_run="false"))
    assert not POLICY.retryable(error(grpc.StatusCode.RESOURCE_EXHAUSTED, kind="resource_exhausted"))


@pytest.mark.parametrize("code", [grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL,
                                  grpc.StatusCode.DEADLINE_EXCEEDED])
def test_other_codes_are_not_retried(code):
    """A refused LM key, bad input, program errors and spent deadlines are never resent."""
    assert not POLICY.retryable(error(code, may_have_run="false"))


# -- the attempt plans both clients share (clients/python/dspy_pool_client/attempts.py) ----------------------------

from dspy_pool_client.attempts import CallAttempts, WatchAttempts  # noqa: E402
from dspy_pool_client.errors import DeadlineExceeded  # noqa: E402
from dspy_pool_client.optimization import OptimizationJob  # noqa: E402

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=0.1, jitter=0.0)
DRAINING = error(grpc.StatusCode.UNAVAILABLE, kind="unavailable", may_have_run="false")


def test_a_call_is_tried_again_within_its_deadline_then_gives_up_with_the_last_error():
    plan = CallAttempts(FAST, budget_s=10.0, now=100.0)
    assert plan.next_attempt(100.0) == pytest.approx(10.0)
    assert plan.after(DRAINING, RuntimeError("rpc"), 100.5) == pytest.approx(0.1)
    assert plan.next_attempt(100.6) == pytest.approx(9.4)  # what is left of the one deadline
    assert plan.after(DRAINING, RuntimeError("rpc"), 100.7) == pytest.approx(0.1)
    plan.next_attempt(100.8)
    with pytest.raises(DSPyPoolError) as caught:  # the third attempt was the last (max_attempts=3)
        plan.after(DRAINING, RuntimeError("rpc"), 100.9)
    assert caught.value is DRAINING


def test_no_time_for_the_backoff_is_the_clients_deadline_naming_the_last_error():
    plan = CallAttempts(FAST, budget_s=1.0, now=0.0)
    plan.next_attempt(0.0)
    with pytest.raises(DeadlineExceeded, match="no time left for attempt 2 within 1.000s") as caught:
        plan.after(DRAINING, RuntimeError("rpc"), 0.95)
    assert caught.value.reason == "CLIENT_DEADLINE" and "last error" in caught.value.message
    with pytest.raises(DeadlineExceeded, match="passed before attempt 2"):
        plan.next_attempt(1.0)


def test_a_call_that_is_not_idempotent_is_resent_only_when_the_server_answered():
    transport = error(grpc.StatusCode.UNAVAILABLE)  # no ErrorInfo: the connection broke; it may have been committed
    plan = CallAttempts(FAST, budget_s=10.0, now=0.0, idempotent=False)
    plan.next_attempt(0.0)
    with pytest.raises(DSPyPoolError):
        plan.after(transport, RuntimeError("rpc"), 0.1)
    answered = CallAttempts(FAST, 10.0, 0.0, idempotent=False)
    answered.next_attempt(0.0)
    assert answered.after(DRAINING, RuntimeError("rpc"), 0.1) == pytest.approx(0.1)  # ErrorInfo: it did not run
    never = CallAttempts(FAST, 10.0, 0.0, retry=False)
    never.next_attempt(0.0)
    with pytest.raises(DSPyPoolError):
        never.after(DRAINING, RuntimeError("rpc"), 0.1)


def test_a_watch_is_opened_again_with_fresh_backoff_after_it_saw_the_job():
    running = OptimizationJob.from_proto(pb_job("j1", "running"))
    plan = WatchAttempts(FAST, "j1", timeout_s=None, now=0.0)
    assert plan.next_attempt(0.0) is None  # no limit
    assert plan.after(DRAINING, None, 1.0) == pytest.approx(0.1)
    plan.seen(running)
    assert plan.after(DRAINING, None, 2.0) == pytest.approx(0.1)
    assert plan.after(DRAINING, None, 3.0) == pytest.approx(0.1)
    with pytest.raises(DSPyPoolError):  # three losses in a row with no message between
        plan.after(DRAINING, None, 4.0)


def test_a_watch_past_its_timeout_says_the_job_keeps_running():
    plan = WatchAttempts(FAST, "j1", timeout_s=5.0, now=0.0)
    plan.seen(OptimizationJob.from_proto(pb_job("j1", "running")))
    with pytest.raises(DeadlineExceeded, match="did not finish within 5s \\(still running; it keeps running"):
        plan.after(error(grpc.StatusCode.DEADLINE_EXCEEDED), None, 5.0)
    with pytest.raises(DeadlineExceeded):
        plan.next_attempt(5.0)


def pb_job(job_id: str, state: str):
    from dspy_pool_client._gen import dspy_pool_pb2 as pb

    return pb.OptimizationJob(job_id=job_id, state=state)
