"""When to restart a supervised helper process (the zygote, the simulated LM): a pure policy.

    it died, or a start failed ──> after_failure(policy, state, now) ──> (delay_s, state) | (None, state): give up
    it is up again ──────────────> after_start(state, now) ──> state

Failures in a row back off exponentially, so a helper that cannot start does
not burn a core relaunching itself. Past `max_attempts` failures in a row the
supervisor gives up and says so: a helper that cannot stay up is a
configuration problem, not bad luck. One that stayed up `stable_after_s` has
earned a fresh start: its next death counts from one again, so a process
killed once a day is relaunched every time, while one that dies right after
each start is declared a crash loop.

A policy with `deaths_count=False` gives up only on starts that fail (the
process never came up): one that came up and was then killed, however often,
is restarted every time, at the backoff. That suits the zygote, which does
nothing of its own once ready: what kills it then is outside it (the OOM
killer, an operator), and a server that stops relaunching it serves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RestartPolicy", "RestartState", "after_failure", "after_start", "backoff_s"]

_MAX_EXPONENT = 30  # 2**30 times any sane base is past any sane cap; stop before floats get silly


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    max_attempts: int = 5  # restarts in a row before giving up
    base_delay_s: float = 0.2  # before the first restart; doubles with each failure in a row
    max_delay_s: float = 5.0
    stable_after_s: float = 30.0  # up this long: the next failure starts a fresh run
    deaths_count: bool = True  # False: only starts that fail count toward max_attempts (deaths still back off)

    def __post_init__(self) -> None:
        if self.max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0, got {self.max_attempts!r}")
        if not (self.base_delay_s >= 0 and self.max_delay_s >= 0 and self.stable_after_s >= 0):
            raise ValueError("base_delay_s, max_delay_s and stable_after_s must be >= 0")


@dataclass(frozen=True, slots=True)
class RestartState:
    failures: int = 0  # failures in a row (deaths and failed starts): the backoff
    up_since: float | None = None  # when the process last came up; None while it is down
    failed_starts: int = 0  # starts in a row that never came up


def backoff_s(failures: int, base_s: float, max_s: float) -> float:
    """0 before any failure, then base_s, 2*base_s, 4*base_s, ... capped at max_s."""
    if failures <= 0:
        return 0.0
    return min(max_s, base_s * 2 ** min(failures - 1, _MAX_EXPONENT))


def after_failure(policy: RestartPolicy, state: RestartState, now: float) -> tuple[float | None, RestartState]:
    """The delay before the next restart, or None to give up; and the new state."""
    came_up = state.up_since is not None
    stable = came_up and now - state.up_since >= policy.stable_after_s
    failures = 1 if stable else state.failures + 1
    failed_starts = 0 if came_up else state.failed_starts + 1
    new_state = RestartState(failures=failures, up_since=None, failed_starts=failed_starts)
    if (failures if policy.deaths_count else failed_starts) > policy.max_attempts:
        return None, new_state
    return backoff_s(failures, policy.base_delay_s, policy.max_delay_s), new_state


def after_start(state: RestartState, now: float) -> RestartState:
    """The process is up: remember since when (its failures in a row stand until it has been up long enough)."""
    return RestartState(failures=state.failures, up_since=now, failed_starts=0)
