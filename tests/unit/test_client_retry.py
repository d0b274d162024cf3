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
