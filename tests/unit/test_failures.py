"""classify: an exception from a program run -> ErrorKind, by DSPy's typed LM errors (real instances), never by names."""

from __future__ import annotations

import dspy
import pytest
from dspy import lm15
from dspy._vendor.lm15.transports import ConnectError, ConnectTimeout, ReadError, ReadTimeout
from dspy.clients.errors import wrap_error

from dspy_pool.errors import ErrorKind, NotFound, PoolError
from dspy_pool.pool.failures import classify


def raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    """`outer` as Python leaves it after `raise outer from inner`."""
    try:
        try:
            raise inner
        except BaseException as caught:
            raise outer from caught
    except BaseException as result:
        return result


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (dspy.LMRateLimitError("slow down", status=429, retry_after=1.0), ErrorKind.LM_RATE_LIMITED),
        (dspy.LMServerError("boom", status=500), ErrorKind.LM_ERROR),
        (dspy.LMTimeoutError("provider timed out"), ErrorKind.LM_TIMEOUT),
        (dspy.LMAuthError("invalid api key", status=401), ErrorKind.LM_AUTH),
        (dspy.LMBillingError("insufficient quota", status=402), ErrorKind.LM_AUTH),
        (dspy.LMNotConfiguredError("no api key"), ErrorKind.LM_AUTH),
        (dspy.LMConfigurationError("unknown provider"), ErrorKind.LM_AUTH),
        (dspy.LMUnsupportedModelError("no such model", status=404), ErrorKind.LM_AUTH),
        (dspy.ContextWindowExceededError(model="m"), ErrorKind.LM_BAD_REQUEST),
        (dspy.LMInvalidRequestError("bad temperature", status=400), ErrorKind.LM_BAD_REQUEST),
        (dspy.LMUnsupportedFeatureError("no structured outputs", feature="response_format"), ErrorKind.LM_BAD_REQUEST),
        (dspy.LMStreamAssemblyError("stream ended early"), ErrorKind.LM_MALFORMED_OUTPUT),
        (dspy.LMCollectionLimitError("too much output"), ErrorKind.LM_MALFORMED_OUTPUT),
        (dspy.LMLockTimeoutError("credential lock busy"), ErrorKind.LM_ERROR),
        (dspy.LMUnexpectedError("engine failed"), ErrorKind.LM_ERROR),
        (dspy.LMProviderError("odd provider answer", status=418), ErrorKind.LM_ERROR),
    ],
)
def test_dspy_lm_errors_by_type(exc, kind):
    """Each of DSPy 3.4's typed LM errors maps to one kind; refused keys and configuration are LM_AUTH."""
    assert classify(exc) is kind


def test_adapter_parse_error_is_malformed_output():
    """The LM answered but the adapter could not parse it."""
    signature = dspy.Signature("question -> answer")
    assert classify(dspy.AdapterParseError(adapter_name="ChatAdapter", signature=signature, lm_response="junk")) is ErrorKind.LM_MALFORMED_OUTPUT


@pytest.mark.parametrize(
    ("engine_error", "kind"),
    [
        (lm15.AuthError("bad key", provider="openai", status=401), ErrorKind.LM_AUTH),
        (lm15.BillingError("quota", status=402), ErrorKind.LM_AUTH),
        (lm15.RateLimitError("429", status=429), ErrorKind.LM_RATE_LIMITED),
        (lm15.ServerError("500", status=500), ErrorKind.LM_ERROR),
        (lm15.TimeoutError("timed out"), ErrorKind.LM_TIMEOUT),
        (lm15.ContextLengthError("too long", status=400), ErrorKind.LM_BAD_REQUEST),
        (lm15.InvalidRequestError("bad param", status=400), ErrorKind.LM_BAD_REQUEST),
        (lm15.NotConfiguredError("no key"), ErrorKind.LM_AUTH),
        (lm15.TransportError("reset"), ErrorKind.LM_CONNECTION),
    ],
)
def test_engine_errors_as_dspy_projects_them(engine_error, kind):
    """lm15 errors (what LiteLLM errors are mapped to as well) go through DSPy's own projection, then classify."""
    assert classify(raised_from(wrap_error(engine_error, model="openai/m"), engine_error)) is kind


def _transport_failure(low: BaseException) -> BaseException:
    """What DSPy raises when lm15's transport fails: LMTransportError from lm15.TransportError from the socket error."""
    middle = raised_from(lm15.TransportError(str(low)), low)
    return raised_from(dspy.LMTransportError(str(low)), middle)


def test_hung_lm_is_a_timeout_not_a_connection_error():
    """A read that timed out after the request was sent is LM_TIMEOUT: the provider may still be working on it."""
    assert classify(_transport_failure(raised_from(ReadTimeout("read timed out"), TimeoutError()))) is ErrorKind.LM_TIMEOUT


@pytest.mark.parametrize("low", [ConnectError("refused"), ConnectTimeout("connect timed out"), ReadError("connection reset")])
def test_transport_failures_are_connection_errors(low):
    """Refused, reset, or a connect that timed out before anything was sent: LM_CONNECTION."""
    assert classify(_transport_failure(low)) is ErrorKind.LM_CONNECTION


@pytest.mark.parametrize("exc", [ConnectionError("vector store down"), ConnectionRefusedError(), TimeoutError("my own timeout"), OSError("disk")])
def test_operators_own_io_errors_are_program_errors(exc):
    """The operator's own ConnectionError or TimeoutError (a vector store, say) is not an LM failure."""
    assert classify(exc) is ErrorKind.PROGRAM_ERROR


def test_names_do_not_decide():
    """A type that merely looks like an LM error (by name or module) is the program's own."""
    lookalike = type("RateLimitError", (Exception,), {"__module__": "litellm.exceptions"})
    assert classify(lookalike("429")) is ErrorKind.PROGRAM_ERROR


def test_classify_through_cause_chain():
    """A program's wrapper raised `from` an LM error takes the LM error's kind."""
    wrapper = raised_from(RuntimeError("step 2 failed"), dspy.LMRateLimitError("429"))
    assert classify(wrapper) is ErrorKind.LM_RATE_LIMITED


def test_error_raised_while_handling_an_lm_error_keeps_its_kind():
    """An error raised inside `except LMError:` carries the LM error as its context."""
    try:
        try:
            raise dspy.LMAuthError("401")
        except dspy.LMError:
            raise KeyError("fallback value missing")
    except KeyError as error:
        assert classify(error) is ErrorKind.LM_AUTH


def test_from_none_hides_the_context():
    """`raise ... from None` says the earlier error is not the cause: the program's own error stands."""
    try:
        try:
            raise dspy.LMServerError("500")
        except dspy.LMError:
            raise ValueError("handled, then failed on its own") from None
    except ValueError as error:
        assert classify(error) is ErrorKind.PROGRAM_ERROR


def test_outer_link_wins_over_cause():
    """When both the wrapper and its cause are typed, the outermost decides."""
    signature = dspy.Signature("question -> answer")
    outer = raised_from(dspy.AdapterParseError(adapter_name="JSONAdapter", signature=signature, lm_response="{"), dspy.LMTimeoutError("t"))
    assert classify(outer) is ErrorKind.LM_MALFORMED_OUTPUT


def test_cyclic_chain_terminates():
    """A cause chain that loops back on itself does not hang classify."""
    a, b = RuntimeError("a"), ValueError("b")
    a.__cause__, b.__cause__ = b, a
    assert classify(a) is ErrorKind.PROGRAM_ERROR


def test_pool_error_keeps_its_kind():
    """A PoolError is reported with its own kind, also as the cause of a wrapper."""
    assert classify(NotFound("nope")) is ErrorKind.NOT_FOUND
    assert classify(PoolError("x", kind=ErrorKind.WORKER_HUNG)) is ErrorKind.WORKER_HUNG
    assert classify(raised_from(RuntimeError("wrapped"), PoolError("x", kind=ErrorKind.DEADLINE_EXCEEDED))) is ErrorKind.DEADLINE_EXCEEDED


def test_unrelated_error_is_program_error():
    """A plain ValueError from user code is a program error."""
    assert classify(ValueError("bad input")) is ErrorKind.PROGRAM_ERROR


def test_a_model_id_litellm_cannot_place_is_the_operators_configuration_not_the_callers_request():
    """--lm gtp-4o-mini (a typo): LiteLLM raises a 400 that DSPy maps to LMInvalidRequestError; every call fails alike,
    so it is LM_AUTH (FAILED_PRECONDITION, counted by the breaker, falls back), not the caller's INVALID_ARGUMENT."""
    exc = dspy.LMInvalidRequestError("[gtp-4o-mini] litellm.BadRequestError: LLM Provider NOT provided. Pass in the LLM "
                                     "provider you are trying to call. You passed model=gtp-4o-mini", status=400)
    assert classify(exc) is ErrorKind.LM_AUTH
    assert classify(dspy.LMInvalidRequestError("max_tokens is too large", status=400)) is ErrorKind.LM_BAD_REQUEST
