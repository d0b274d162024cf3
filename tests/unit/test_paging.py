"""Pages of a listing (dspy_pool/server/paging.py): every item once, in order, within the size limits."""

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspy_pool.errors import InvalidArgument
from dspy_pool.server import paging

PROGRAMS = paging.Listing("programs", lambda item: (item[0], item[1]), (str, int), lambda item: item[2])
OTHER = paging.Listing("datasets", lambda item: (item[0], item[1]), (str, int), lambda item: item[2])


def walk(items, page_size=0, max_bytes=paging.MAX_PAGE_BYTES):
    pages, token = [], ""
    while True:
        page = paging.take_page(items, PROGRAMS, page_size, token, max_bytes)
        pages.append(page.items)
        token = page.next_token
        if not token:
            return pages


items_strategy = st.lists(st.tuples(st.sampled_from("abcde"), st.integers(1, 5), st.integers(0, 100)),
                          unique_by=lambda item: item[:2]).map(sorted)


@settings(max_examples=200, deadline=None)
@given(items=items_strategy, page_size=st.integers(0, 7), max_bytes=st.integers(1, 300))
def test_walking_the_pages_lists_every_item_once_in_order(items, page_size, max_bytes):
    pages = walk(items, page_size, max_bytes)
    assert [item for page in pages for item in page] == items
    for page in pages:
        assert len(page) <= (page_size or paging.MAX_PAGE_SIZE)
        assert len(page) == 1 or sum(item[2] for item in page) <= max_bytes  # one item larger than the limit still comes
    assert all(pages[:-1])  # no empty page before the last


def test_a_page_stops_before_the_byte_limit_but_always_holds_one():
    items = [("a", 1, 10), ("b", 1, 10), ("c", 1, 50), ("d", 1, 5)]
    assert walk(items, max_bytes=25) == [[items[0], items[1]], [items[2]], [items[3]]]


def test_items_removed_or_added_between_pages_are_neither_repeated_nor_skipped():
    first = paging.take_page([("a", 1, 1), ("b", 1, 1), ("c", 1, 1)], PROGRAMS, 2, "")
    assert [item[0] for item in first.items] == ["a", "b"]
    # "b" deleted and "ab" added (before the token) and "bb" (after it) between the calls.
    rest = paging.take_page([("a", 1, 1), ("ab", 1, 1), ("bb", 1, 1), ("c", 1, 1)], PROGRAMS, 2, first.next_token)
    assert [item[0] for item in rest.items] == ["bb", "c"] and rest.next_token == ""


_NESTED = base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).decode()  # forged: json.loads runs out of recursion
_NESTED_SHORT = base64.urlsafe_b64encode(b"[" * 1500 + b"]" * 1).decode()  # within the length bound, still too deep


@pytest.mark.parametrize("token", ["not base64!", "bm90IGpzb24=", paging.Listing("programs", lambda i: (i[0],), (str,), len).token(("a",)),
                                   OTHER.token(("a", 1, 0)), _NESTED, _NESTED_SHORT],
                         ids=["not-base64", "not-json", "other-key-shape", "other-listing", "deeply-nested", "nested-within-bound"])
def test_a_token_this_listing_did_not_issue_is_invalid_argument(token):
    with pytest.raises(InvalidArgument, match="page_token"):
        paging.take_page([("a", 1, 1)], PROGRAMS, 0, token)


def test_a_negative_page_size_is_invalid_and_a_large_one_is_capped():
    with pytest.raises(InvalidArgument, match="page_size"):
        paging.take_page([], PROGRAMS, -1, "")
    assert paging.page_size_of(10**9) == paging.MAX_PAGE_SIZE and paging.page_size_of(0) == paging.MAX_PAGE_SIZE
