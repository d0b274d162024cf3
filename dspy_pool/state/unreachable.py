"""What an unreachable store means to a caller: UNAVAILABLE, saying what is refused until it is back."""

from __future__ import annotations

import contextlib
from typing import AsyncIterator

from dspy_pool.errors import ErrorKind, PoolError, Unavailable
from dspy_pool.state.base import StateError, StateUnavailable

__all__ = ["unavailable_while_down"]


@contextlib.asynccontextmanager
async def unavailable_while_down(consequence: str) -> AsyncIterator[None]:
    """Turn StateUnavailable into errors.Unavailable("the state store is unreachable (why); <consequence>"), and any
    other StateError (the store refused for good: corrupt, or a bug of ours) into INTERNAL saying so, never UNKNOWN."""
    try:
        yield
    except StateUnavailable as exc:
        raise Unavailable(f"the state store is unreachable ({exc}); {consequence}") from None
    except StateError as exc:
        raise PoolError(f"the state store refused this change: {exc}", kind=ErrorKind.INTERNAL) from None
