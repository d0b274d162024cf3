"""The error table (one row per kind), the hierarchy's status codes, and PoolError -> rich gRPC status."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from dspy_pool.errors import (
    MEANINGS,
    PHASE_QUEUED,
    DeadlineExceeded,
    ErrorKind,
    KindMeaning,
    InvalidArgument,
    NotFound,
    PoolError,
    QueueFull,
    Unavailable,
    WorkerCrashed,
    from_kind,
    meaning,
)
from dspy_pool.server.status import DOMAIN, to_grpc_status


def rich_status(error: PoolError) -> status_pb2.Status:
    """The google.rpc.Status carried in the grpc-status-details-bin trailer."""
    status = to_grpc_status(error)
    [(key, value)] = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    return status_pb2.Status.FromString(value)


def details_of(status: status_pb2.Status, message_type):
    out = []
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            out.append(message)
    return out


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_kind_has_a_status_code(kind):
    """Every ErrorKind maps to a gRPC status code other than OK."""
    code = meaning(kind).status
    assert isinstance(code, grpc.StatusCode)
    assert code is not grpc.StatusCode.OK


def test_table_has_exactly_one_row_per_kind():
    """MEANINGS covers every ErrorKind and nothing else."""
    assert set(MEANINGS) == set(ErrorKind)


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_nothing_that_may_have_run_is_transient(kind):
    """Hard rule 10: a kind that may have run is never one the server retries."""
    assert not (MEANINGS[kind].transient and MEANINGS[kind].may_have_run)


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_caller_faults_neither_trip_the_breaker_nor_fall_back(kind):
    """Hard rule 8: the caller's own fault says nothing about the endpoint and is never hidden by a fallback."""
    row = MEANINGS[kind]
    if row.caller_fault:
        assert not row.breaker_failure and row.fallback is None


def test_a_row_breaking_the_rules_is_refused():
    """KindMeaning itself refuses a transient row that may have run, and a caller fault that counts."""
    with pytest.raises(ValueError, match="hard rule 10"):
        KindMeaning(grpc.StatusCode.UNAVAILABLE, "x", transient=True, may_have_run=True)
    with pytest.raises(ValueError, match="hard rule 8"):
        KindMeaning(grpc.StatusCode.INVALID_ARGUMENT, "x", caller_fault=True, breaker_failure=True)


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (ErrorKind.LM_AUTH, grpc.StatusCode.FAILED_PRECONDITION),
        (ErrorKind.LM_BAD_REQUEST, grpc.StatusCode.INVALID_ARGUMENT),
        (ErrorKind.PROGRAM_QUARANTINED, grpc.StatusCode.FAILED_PRECONDITION),
        (ErrorKind.FAILED_PRECONDITION, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_new_kinds_have_their_issue_codes(kind, code):
    """A refused key is FAILED_PRECONDITION, an over-long prompt INVALID_ARGUMENT, a quarantined program FAILED_PRECONDITION."""
    assert meaning(kind).status is code


@pytest.mark.parametrize("kind", [ErrorKind.LM_AUTH, ErrorKind.LM_BAD_REQUEST])
def test_refusals_are_never_retried(kind):
    """A 401 or a 400 fails the same way every time: not transient."""
    assert not MEANINGS[kind].transient


@pytest.mark.parametrize("kind", [ErrorKind.WORKER_CRASHED, ErrorKind.WORKER_HUNG, ErrorKind.LM_TIMEOUT, ErrorKind.DEADLINE_EXCEEDED])
def test_calls_cut_off_while_running_may_have_run(kind):
    """A dead or hung worker, an LM timeout and a deadline while running may have left work done."""
    assert MEANINGS[kind].may_have_run


def test_meaning_of_an_undeclared_kind_is_internals():
    """A kind string nobody declared reads as INTERNAL, as from_kind rebuilds it."""
    assert meaning("martian") is MEANINGS[ErrorKind.INTERNAL]
    assert meaning("lm_auth") is MEANINGS[ErrorKind.LM_AUTH]


def test_a_deadline_spent_in_the_queue_did_not_run():
    """phase=queued turns may_have_run off for that one error; the kind's row stays as it is."""
    assert not DeadlineExceeded("late", metadata={"phase": PHASE_QUEUED}).may_have_run
    assert DeadlineExceeded("late", metadata={"phase": "running"}).may_have_run


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (QueueFull("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (WorkerCrashed("x"), grpc.StatusCode.UNAVAILABLE),
        (PoolError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_subclass_status_codes_follow_the_design_table(error, code):
    """Each error class has the code the design's status table gives it."""
    assert error.status_code is code


def test_meaning_accepts_kind_strings():
    """meaning() accepts the kind's string value as the worker sends it; an unknown kind reads as internal."""
    assert meaning("lm_timeout").status is grpc.StatusCode.DEADLINE_EXCEEDED
    assert meaning("no_such_kind") is meaning(ErrorKind.INTERNAL)


def test_explicit_kind_overrides_class_kind():
    """A kind passed to the constructor replaces the class default."""
    assert PoolError("slow", kind=ErrorKind.LM_RATE_LIMITED).status_code is grpc.StatusCode.UNAVAILABLE


def test_error_type_defaults_to_class_name():
    """error_type defaults to the class name, and metadata is copied."""
    metadata = {"a": "1"}
    error = NotFound("x", metadata=metadata)
    metadata["a"] = "2"
    assert error.error_type == "NotFound"
    assert error.metadata == {"a": "1"}


def test_from_kind_rebuilds_worker_error():
    """from_kind rebuilds a reported error with its kind, type, message and traceback."""
    error = from_kind("lm_rate_limited", "429 too many", error_type="RateLimitError", remote_traceback="tb")
    assert (error.kind, error.message, error.error_type, error.remote_traceback) == (ErrorKind.LM_RATE_LIMITED, "429 too many", "RateLimitError", "tb")


def test_from_kind_unknown_is_internal():
    """An unknown kind string becomes INTERNAL instead of raising."""
    error = from_kind("martian", "??")
    assert error.kind is ErrorKind.INTERNAL
    assert error.status_code is grpc.StatusCode.INTERNAL


def test_grpc_status_code_and_message():
    """The grpc.Status has the error's code and a message prefixed with its type."""
    error = PoolError("boom", kind=ErrorKind.PROGRAM_ERROR, error_type="KeyError")
    status = to_grpc_status(error)
    assert status.code is grpc.StatusCode.INTERNAL
    assert status.details == "KeyError: boom"


def test_message_not_prefixed_twice():
    """When the message already names the type it is not prefixed again."""
    error = PoolError("KeyError: 'q'", error_type="KeyError")
    assert to_grpc_status(error).details == "KeyError: 'q'"


def test_error_info_reason_domain_and_metadata():
    """ErrorInfo carries the kind as reason, the service domain, error_type and metadata."""
    status = rich_status(NotFound("no program", metadata={"program": "qa"}))
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    [info] = details_of(status, error_details_pb2.ErrorInfo)
    assert info.reason == "NOT_FOUND"
    assert info.domain == DOMAIN
    assert dict(info.metadata) == {"error_type": "NotFound", "program": "qa", "kind": "not_found", "may_have_run": "false",
                                   "transient": "false"}


@pytest.mark.parametrize(
    ("error", "may_have_run", "transient"),
    [
        (WorkerCrashed("died", metadata={"worker_pid": "12"}), "true", "false"),
        (PoolError("hung", kind=ErrorKind.WORKER_HUNG), "true", "false"),
        (DeadlineExceeded("late", metadata={"phase": "running"}), "true", "false"),
        (DeadlineExceeded("late", metadata={"phase": PHASE_QUEUED}), "false", "false"),
        (PoolError("429", kind=ErrorKind.LM_RATE_LIMITED), "false", "true"),
        (QueueFull("full"), "false", "false"),
        (Unavailable("draining"), "false", "false"),
    ],
)
def test_error_info_says_may_have_run_and_transient(error, may_have_run, transient):
    """Clients read ErrorInfo.metadata may_have_run/transient ("true"/"false") and the kind from the table."""
    [info] = details_of(rich_status(error), error_details_pb2.ErrorInfo)
    assert (info.metadata["may_have_run"], info.metadata["transient"]) == (may_have_run, transient)
    assert info.metadata["kind"] == error.kind.value and info.reason == error.kind.value.upper()


def test_lm_auth_message_names_the_key_setting():
    """A refused key tells the operator where the key comes from (DSPY_POOL_LM_API_KEY), ahead of the provider's text."""
    error = PoolError("[openai/x] bad key", kind=ErrorKind.LM_AUTH, error_type="LMAuthError")
    status = to_grpc_status(error)
    assert status.code is grpc.StatusCode.FAILED_PRECONDITION
    assert status.details.index("DSPY_POOL_LM_API_KEY") < status.details.index("bad key")


def test_retry_info_when_retry_after_given():
    """retry_after_ms in metadata becomes a RetryInfo delay."""
    status = rich_status(PoolError("slow down", kind=ErrorKind.LM_RATE_LIMITED, metadata={"retry_after_ms": "1500"}))
    [retry] = details_of(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToMilliseconds() == 1500


def test_no_retry_info_without_retry_after():
    """Without retry_after_ms there is no RetryInfo."""
    assert details_of(rich_status(Unavailable("draining")), error_details_pb2.RetryInfo) == []


def test_debug_info_carries_remote_traceback_tail():
    """A remote traceback travels as DebugInfo, cut to its last 1500 bytes, so the status fits the 8 KiB metadata limit."""
    traceback = "x" * 5000 + "END"
    [debug] = details_of(rich_status(PoolError("boom", remote_traceback=traceback)), error_details_pb2.DebugInfo)
    assert len(debug.detail) == 1500
    assert debug.detail.endswith("END")


@pytest.mark.parametrize("text", ["x" * 5000, "é" * 5000, "\U0001f600" * 5000], ids=["ascii", "two-byte", "four-byte"])
def test_a_long_status_fits_the_clients_metadata_limit(text):
    """However long the message and traceback, and whatever their script, grpc-message (percent-encoded: up to 3 bytes per
    byte) and the details trailer (base64) stay well under the 8 KiB a gRPC client accepts, and the cut is marked."""
    from urllib.parse import quote

    error = NotFound(f"no program {text!r}", remote_traceback=text)
    status = to_grpc_status(error)
    [(_, details)] = status.trailing_metadata
    on_the_wire = len(quote(status.details.encode(), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")) + len(details) * 4 / 3
    assert on_the_wire < 7000
    assert status.details.endswith("...(truncated)") and status.details.startswith("NotFound: no program '")
    [debug] = details_of(status_pb2.Status.FromString(details), error_details_pb2.DebugInfo)
    assert text.endswith(debug.detail)  # a traceback keeps its end


def test_a_short_status_is_not_cut():
    assert to_grpc_status(NotFound("no program 'é😀'")).details == "NotFound: no program 'é😀'"
