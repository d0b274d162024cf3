"""stop_signals.py: the first stop signal drains, one a second or more later cuts the drain, copies sooner change nothing."""

from __future__ import annotations

from dspy_pool.stop_signals import REPEAT_AFTER_S, StopSignals, is_repeat


def test_copies_of_one_stop_are_ignored_and_a_later_signal_cuts_the_drain():
    now = [100.0]
    seen: list[str] = []
    signals = StopSignals(on_stop=lambda: seen.append("stop"), on_cut=lambda: seen.append("cut"), clock=lambda: now[0])
    signals.received()
    now[0] += 0.005  # `timeout`'s copy to the process group
    signals.received()
    assert seen == ["stop"]
    now[0] += REPEAT_AFTER_S
    signals.received()
    assert seen == ["stop", "cut"]


def test_is_repeat_needs_a_first_signal_and_the_interval():
    assert not is_repeat(None, 5.0)
    assert not is_repeat(5.0, 5.0 + REPEAT_AFTER_S / 2)
    assert is_repeat(5.0, 5.0 + REPEAT_AFTER_S)
