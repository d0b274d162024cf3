"""Map an exception raised while running a program to an ErrorKind (pure).

DSPy wraps provider errors in its own types and the provider SDK varies
(lm15, LiteLLM, httpx), so the match is on type names along the MRO and the
cause chain rather than on imported classes: one list, easy to extend.
"""

from __future__ import annotations

from dspy_pool.errors import ErrorKind, PoolError

# Checked in order; the first hit wins. Substrings of exception type names.
_NAME_RULES: tuple[tuple[str, ErrorKind], ...] = (
    ("AdapterParseError", ErrorKind.LM_MALFORMED_OUTPUT),
    ("RateLimit", ErrorKind.LM_RATE_LIMITED),
    ("LMTransportError", ErrorKind.LM_CONNECTION),
    ("LMServerError", ErrorKind.LM_ERROR),
    ("TooManyRequests", ErrorKind.LM_RATE_LIMITED),
    ("Timeout", ErrorKind.LM_TIMEOUT),
    ("APIConnection", ErrorKind.LM_CONNECTION),
    ("ConnectError", ErrorKind.LM_CONNECTION),
    ("ConnectionError", ErrorKind.LM_CONNECTION),
    ("RemoteProtocolError", ErrorKind.LM_CONNECTION),
    ("ServerDisconnected", ErrorKind.LM_CONNECTION),
    ("ServiceUnavailable", ErrorKind.LM_ERROR),
    ("InternalServerError", ErrorKind.LM_ERROR),
    ("APIError", ErrorKind.LM_ERROR),
    ("APIStatusError", ErrorKind.LM_ERROR),
    ("ProviderError", ErrorKind.LM_ERROR),
    ("LMError", ErrorKind.LM_ERROR),
    ("HTTPStatusError", ErrorKind.LM_ERROR),
)

_LM_MODULE_PREFIXES = ("dspy.clients", "dspy._vendor.lm15", "dspy.lm15", "litellm", "openai", "httpx", "httpcore", "aiohttp")


def _chain(exc: BaseException):
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def classify(exc: BaseException) -> ErrorKind:
    if isinstance(exc, PoolError):
        return exc.kind
    for link in _chain(exc):
        names = [cls.__name__ for cls in type(link).__mro__]
        for needle, kind in _NAME_RULES:
            if any(needle in name for name in names):
                return kind
    for link in _chain(exc):
        if type(link).__module__.startswith(_LM_MODULE_PREFIXES):
            return ErrorKind.LM_ERROR
    return ErrorKind.PROGRAM_ERROR
