"""Map an exception raised while running a program to an ErrorKind (pure; runs in workers).

DSPy 3.4 projects every provider failure, whatever the engine underneath (lm15,
LiteLLM), onto its own typed errors at the LM boundary (dspy/clients/errors.py:
lm15.AuthError -> dspy.LMAuthError, litellm's Timeout -> lm15.TimeoutError ->
dspy.LMTimeoutError, and so on). Those types, and only those, make a failure an
LM failure. Whatever else the operator's code raises (its own ConnectionError to
a vector store, a TimeoutError of its own) is a program error: it says nothing
about the LM endpoint, so it must neither be retried as one nor trip its breaker.

The cause chain is walked outermost first, so a program that re-raises an LM
error wrapped in its own exception (`raise StepFailed(...) from error`) still
reports the LM's kind; the first typed link decides.
"""

from __future__ import annotations

from collections.abc import Iterator

import dspy

from dspy_pool.errors import ErrorKind, PoolError

try:
    # A hung LM reaches us as LMTransportError caused by lm15's ReadTimeout, not as
    # LMTimeoutError; DSPy exports no public name for the transport-level types.
    from dspy._vendor.lm15.transports import ConnectError as _ConnectError
    from dspy._vendor.lm15.transports import ReadTimeout as _ReadTimeout
    from dspy._vendor.lm15.transports import WriteTimeout as _WriteTimeout
except ImportError:  # a DSPy that moved its vendored lm15: the builtin TimeoutError below still tells
    _ConnectError = _ReadTimeout = _WriteTimeout = ()  # type: ignore[assignment,misc]

# Most specific first: ContextWindowExceededError and LMUnsupportedModelError are
# LMInvalidRequestErrors, LMStreamAssemblyError is an LMUnexpectedError, and
# every one of them is an LMError.
_LM_KINDS: tuple[tuple[type[BaseException], ErrorKind], ...] = (
    (dspy.ContextWindowExceededError, ErrorKind.LM_BAD_REQUEST),
    # The operator's --lm names a model the provider does not serve: configuration.
    (dspy.LMUnsupportedModelError, ErrorKind.LM_AUTH),
    (dspy.LMInvalidRequestError, ErrorKind.LM_BAD_REQUEST),
    (dspy.LMUnsupportedFeatureError, ErrorKind.LM_BAD_REQUEST),
    (dspy.LMAuthError, ErrorKind.LM_AUTH),
    # Quota or payment: the operator's account, not this call, and no retry fixes it.
    (dspy.LMBillingError, ErrorKind.LM_AUTH),
    # No key, an unknown provider: includes LMNotConfiguredError.
    (dspy.LMConfigurationError, ErrorKind.LM_AUTH),
    (dspy.LMRateLimitError, ErrorKind.LM_RATE_LIMITED),
    (dspy.LMTimeoutError, ErrorKind.LM_TIMEOUT),
    (dspy.LMServerError, ErrorKind.LM_ERROR),
    # Local credential-lock contention: transient, like a 5xx.
    (dspy.LMLockTimeoutError, ErrorKind.LM_ERROR),
    # The answer came back but cannot be used as one; DSPy never retries these either.
    (dspy.LMStreamAssemblyError, ErrorKind.LM_MALFORMED_OUTPUT),
    (dspy.LMCollectionLimitError, ErrorKind.LM_MALFORMED_OUTPUT),
    # LMProviderError, LMUnexpectedError and whatever subclass a later DSPy adds.
    (dspy.LMError, ErrorKind.LM_ERROR),
)


# LiteLLM's words (raised as a 400, which DSPy maps to LMInvalidRequestError) for a model id it cannot place: every
# call fails alike, so it is the configuration's fault, not the caller's.
_NO_PROVIDER = "LLM Provider NOT provided"


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """exc, then its causes, as Python would print them (a `from None` hides the context)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)


def _transport_kind(error: BaseException) -> ErrorKind:
    """LMTransportError covers both "never connected" and "sent, then no answer in time".

    The second is a timeout: the provider may still be working on (and billing) the
    request, so it must not be retried as a plain connection failure would be.
    """
    for link in _chain(error):
        if link is error:
            continue
        if isinstance(link, _ConnectError):
            return ErrorKind.LM_CONNECTION  # nothing was sent, even when the connect timed out
        if isinstance(link, (_ReadTimeout, _WriteTimeout, TimeoutError)):
            return ErrorKind.LM_TIMEOUT
    return ErrorKind.LM_CONNECTION


def classify(exc: BaseException) -> ErrorKind:
    if isinstance(exc, PoolError):
        return exc.kind
    for link in _chain(exc):
        if isinstance(link, PoolError):
            return link.kind
        if isinstance(link, dspy.AdapterParseError):
            return ErrorKind.LM_MALFORMED_OUTPUT
        if isinstance(link, dspy.LMTransportError):
            return _transport_kind(link)
        if isinstance(link, dspy.LMInvalidRequestError) and _NO_PROVIDER in str(link):
            return ErrorKind.LM_AUTH  # LiteLLM cannot tell whose model --lm names (a typo): the operator's to fix
        if isinstance(link, dspy.LMError):
            return next(kind for error_type, kind in _LM_KINDS if isinstance(link, error_type))
    return ErrorKind.PROGRAM_ERROR
