"""Pages of a listing (pure): at most page_size items and max_bytes of them, resumed after a token.

A token names the last item a page held (its sort key) and the listing it came
from, so a listing that changes between pages neither repeats nor skips what
stayed: the next page starts after that key, wherever it now sorts. Tokens are
opaque to clients (base64 of JSON) and checked on the way back in.

    items (sorted by key) ──> those after the token's key ──> at most page_size of them, stopping before
                              max_bytes (a page always holds one, however large) ──> Page(items, next token or "")
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from dspy_pool.errors import InvalidArgument

T = TypeVar("T")

MAX_PAGE_SIZE = 1000
MAX_PAGE_BYTES = 2 << 20  # half of a gRPC client's default 4 MiB receive limit
MAX_TOKEN_CHARS = 2048  # a token names a listing and one item's key (names are at most 128 characters)


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_token: str  # "" on the last page


@dataclass(frozen=True, slots=True)
class Listing(Generic[T]):
    """What paging needs of one listing: its name (tokens of one listing are refused by another), each item's
    sort key and the types of that key's parts, and each item's size on the wire."""

    name: str
    key: Callable[[T], tuple]
    key_types: tuple[type, ...]
    size: Callable[[T], int]

    def token(self, item: T) -> str:
        return base64.urlsafe_b64encode(json.dumps([self.name, list(self.key(item))]).encode()).decode()

    def resume_after(self, token: str) -> tuple:
        """The key a token resumes after; INVALID_ARGUMENT when it is not one this listing issued."""
        if len(token) > MAX_TOKEN_CHARS:  # ours name a listing and one key: never this long
            raise InvalidArgument("page_token is not one this server issued")
        try:
            name, key = json.loads(base64.urlsafe_b64decode(token.encode("ascii")))
        except (ValueError, TypeError, UnicodeEncodeError, binascii.Error, RecursionError):  # deep nesting: forged
            raise InvalidArgument("page_token is not one this server issued") from None
        if name != self.name:
            raise InvalidArgument("page_token belongs to another listing (it was issued with other request fields)")
        if (not isinstance(key, list) or len(key) != len(self.key_types)
                or not all(type(part) is kind for part, kind in zip(key, self.key_types))):
            raise InvalidArgument("page_token is not one this server issued")
        return tuple(key)


def page_size_of(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must be >= 0")
    return min(requested or MAX_PAGE_SIZE, MAX_PAGE_SIZE)


def take_page(items: Sequence[T], listing: Listing[T], page_size: int, token: str, max_bytes: int = MAX_PAGE_BYTES) -> Page[T]:
    """One page of `items` (sorted by the listing's key) after `token`'s key."""
    limit = page_size_of(page_size)
    after = listing.resume_after(token) if token else None
    page: list[T] = []
    total = 0
    for item in items:
        if after is not None and listing.key(item) <= after:
            continue
        item_bytes = listing.size(item)
        if len(page) == limit or (page and total + item_bytes > max_bytes):
            return Page(page, listing.token(page[-1]))
        page.append(item)
        total += item_bytes
    return Page(page, "")
