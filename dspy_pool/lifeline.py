"""Die with the parent: for every helper process the front starts (zygote, workers, sim LM).

PR_SET_PDEATHSIG asks the kernel to SIGKILL us when our parent exits, so no
child outlives a `kill -9` of the front. If the parent is already gone by the
time we ask (a race at start-up), exit at once.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: EOF on the channel still ends us
    if os.getppid() != expected_parent:
        os._exit(0)
