"""classify: an exception from a program run -> ErrorKind, by type names along MRO and cause chain."""

from __future__ import annotations

import pytest

from dspy_pool.errors import ErrorKind, NotFound, PoolError
from dspy_pool.pool.failures import classify


class LMRateLimitError(Exception):
    pass


class LMServerError(Exception):
    pass


class LMTransportError(Exception):
    pass


class AdapterParseError(Exception):
    pass


class SomeTimeoutError(Exception):
    pass


class ProgramWrapperError(Exception):
    pass


class SubclassOfRateLimit(LMRateLimitError):
    pass


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (LMRateLimitError("429"), ErrorKind.LM_RATE_LIMITED),
        (LMServerError("500"), ErrorKind.LM_ERROR),
        (LMTransportError("reset"), ErrorKind.LM_CONNECTION),
        (AdapterParseError("no field"), ErrorKind.LM_MALFORMED_OUTPUT),
        (SomeTimeoutError("slow"), ErrorKind.LM_TIMEOUT),
    ],
)
def test_classify_by_type_name(exc, kind):
    """The exception's own type name picks the kind."""
    assert classify(exc) is kind


def test_builtin_timeout_and_connection_errors():
    """Builtin TimeoutError and ConnectionError subclasses map to LM timeout / connection."""
    assert classify(TimeoutError()) is ErrorKind.LM_TIMEOUT
    assert classify(ConnectionRefusedError()) is ErrorKind.LM_CONNECTION


def test_classify_by_base_class_name():
    """A subclass with an unrelated name is matched through its MRO."""
    assert classify(SubclassOfRateLimit()) is ErrorKind.LM_RATE_LIMITED


def test_classify_through_cause_chain():
    """A wrapper raised `from` an LM error takes the LM error's kind."""
    try:
        try:
            raise LMRateLimitError("429")
        except LMRateLimitError as inner:
            raise ProgramWrapperError("program failed") from inner
    except ProgramWrapperError as outer:
        assert classify(outer) is ErrorKind.LM_RATE_LIMITED


def test_outer_link_wins_over_cause():
    """When both the wrapper and its cause match, the outermost match decides."""
    outer = AdapterParseError("bad output")
    outer.__cause__ = SomeTimeoutError()
    assert classify(outer) is ErrorKind.LM_MALFORMED_OUTPUT


def test_cyclic_chain_terminates():
    """A cause chain that loops back on itself does not hang classify."""
    a, b = ProgramWrapperError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert classify(a) is ErrorKind.PROGRAM_ERROR


def test_pool_error_keeps_its_kind():
    """A PoolError is reported with its own kind, whatever its name."""
    assert classify(NotFound("nope")) is ErrorKind.NOT_FOUND
    assert classify(PoolError("x", kind=ErrorKind.WORKER_HUNG)) is ErrorKind.WORKER_HUNG


def test_unrelated_error_is_program_error():
    """A plain ValueError from user code is a program error."""
    assert classify(ValueError("bad input")) is ErrorKind.PROGRAM_ERROR


def test_lm_module_prefix_is_lm_error():
    """An unmatched exception type defined in an LM client module counts as an LM error."""
    cls = type("WeirdFailure", (Exception,), {"__module__": "litellm.exceptions"})
    assert classify(cls()) is ErrorKind.LM_ERROR
