"""When a front process counts as hung: a pure policy over the answers to the supervisor's health checks.

    front serving ─────────> started(now) ──────────────────────> Liveness
    a check came back ─────> after_check(state, answered, now) ──> Liveness
                             hung(state, timeout_s) ─────────────> SIGKILL; the keeper restarts it with backoff

A stopped (SIGSTOP) or deadlocked front still holds its share of the port, so
the kernel keeps handing it new connections that then time out. Its process is
alive, so only asking it reveals it. A front is hung when a check it did not
answer came `timeout_s` or more after the last check it answered (or after it
came up). Only a fresh unanswered check counts: when no checks come back at
all (the prober itself is down), no front is ever declared hung.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Liveness", "started", "after_check", "hung", "silent_s", "check_interval_s"]

_MAX_INTERVAL_S = 2.0  # a check every 2 s at most: a hang is seen within about hang_timeout_s + 2 intervals
_MIN_INTERVAL_S = 0.1
_CHECKS_PER_TIMEOUT = 5  # several chances to answer before a front is killed: one slow answer is not a hang


@dataclass(frozen=True, slots=True)
class Liveness:
    answered_at: float  # the last check the front answered, or when it came up
    unanswered_at: float | None = None  # the latest check it did not answer, if later than answered_at


def started(now: float) -> Liveness:
    """A front that has just come up has answered, as far as we know: its ready line said so."""
    return Liveness(answered_at=now)


def after_check(state: Liveness, answered: bool, now: float) -> Liveness:
    if answered:
        return Liveness(answered_at=max(now, state.answered_at))
    if now < state.answered_at:  # a check sent before the front came up (again): says nothing about this run
        return state
    return Liveness(answered_at=state.answered_at, unanswered_at=now)


def silent_s(state: Liveness) -> float:
    """How long the front has been seen not answering: from its last answer to the latest unanswered check."""
    return 0.0 if state.unanswered_at is None else state.unanswered_at - state.answered_at


def hung(state: Liveness, timeout_s: float) -> bool:
    return state.unanswered_at is not None and silent_s(state) >= timeout_s


def check_interval_s(timeout_s: float) -> float:
    """How often to check, and each check's deadline: several checks fit in the hang timeout."""
    return min(_MAX_INTERVAL_S, max(_MIN_INTERVAL_S, timeout_s / _CHECKS_PER_TIMEOUT))
