"""Captured calls (dspy_pool/optimize/feedback.py): bounded per program, in count and in bytes, oldest first."""

from dspy_pool.optimize.feedback import Captured, Captures


def _call(n: int, size: int, program: str = "qa") -> Captured:
    return Captured(program, 1, {"q": n}, {"a": n}, size)


def test_the_oldest_go_first_past_the_byte_budget():
    captures = Captures(max_total=100, max_bytes=1000)
    for n in range(5):
        captures.keep(f"r{n}", _call(n, 300), max_examples=100)
    assert [captures.peek(f"r{n}") is not None for n in range(5)] == [False, False, True, True, True]
    assert captures.total_bytes == 900 and len(captures) == 3


def test_taking_and_keeping_again_account_for_the_bytes():
    captures = Captures(max_total=100, max_bytes=1000)
    captures.keep("r1", _call(1, 400), max_examples=100)
    captures.keep("r1", _call(1, 500), max_examples=100)  # the same request id again: the newer call, counted once
    assert captures.total_bytes == 500 and len(captures) == 1
    assert captures.take("r1").size_bytes == 500 and captures.total_bytes == 0 and captures.take("r1") is None


def test_per_program_and_total_counts_still_bound_it():
    captures = Captures(max_total=4, max_bytes=10**9)
    for n in range(3):
        captures.keep(f"a{n}", _call(n, 1, "a"), max_examples=2)
    assert [captures.peek(f"a{n}") is not None for n in range(3)] == [False, True, True]
    for n in range(3):
        captures.keep(f"b{n}", _call(n, 1, "b"), max_examples=10)
    assert len(captures) == 4 and captures.peek("a1") is None and captures.total_bytes == 4


def test_a_score_only_capture_takes_no_bytes():
    captures = Captures(max_total=10, max_bytes=10)
    captures.keep("big", Captured("qa", 1, None, None), max_examples=10)
    assert captures.peek("big") is not None and captures.total_bytes == 0
