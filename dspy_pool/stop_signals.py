"""What a stop signal means to a server process (a front, or a front group's supervisor).

    SIGTERM, SIGINT or SIGHUP ──> stop: health NOT_SERVING, drain the calls in flight
    another one, REPEAT_AFTER_S or more later ──> cut the drain: stop without waiting for them
    another one sooner ──> the same stop delivered twice: nothing

`timeout` and `kill -- -PGID` signal a process and then its whole group, and a
front group's supervisor forwards the signal its fronts also got from the group:
one stop arrives two or three times within milliseconds. Read as "stop now",
it failed every call in flight. SIGHUP (a closed terminal, a dropped ssh
session) drains like SIGTERM instead of killing the front mid-call.

The handlers only call `on_stop` or `on_cut`, which set an event or enqueue.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
REPEAT_AFTER_S = 1.0


def is_repeat(first_at: float | None, now: float) -> bool:
    """Whether a stop signal at `now` asks for more than the one at `first_at` did (pure)."""
    return first_at is not None and now - first_at >= REPEAT_AFTER_S


class StopSignals:
    def __init__(self, on_stop: Callable[[], None], on_cut: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._on_stop = on_stop
        self._on_cut = on_cut
        self._clock = clock
        self._first_at: float | None = None

    def received(self) -> None:
        now = self._clock()
        if self._first_at is None:
            self._first_at = now
            self._on_stop()
        elif is_repeat(self._first_at, now):
            self._on_cut()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self.received)
