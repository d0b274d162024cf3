r"""Which call wrote a worker's output line: request id and program, carried in the line itself.

A worker's stdout and stderr are pipes the front logs line by line
(`output.WorkerOutputLog`). While a call runs, on the worker's loop or in the
thread of a sync module (contextvars follow both), every line it prints, or
that a library logs through Python's logging, is prefixed with a marker
holding the call's request id and program key. The front lifts them into the
log event, beside the worker id it already knows:

    worker:  print("retrieved 3 passages")
    pipe:    \x02request_id=abc program=qa#1f2e\x03 retrieved 3 passages
    front:   worker_output request_id=abc program=qa#1f2e worker_id=3 pid=… line="retrieved 3 passages"

Lines printed outside any call (start-up hooks) pass unmarked.
"""

from __future__ import annotations

import contextvars
import io
import re
from typing import TextIO

# ASCII start and end of text: never in ordinary output, and unlike the separators
# (\x1c-\x1e) not a line boundary to str.splitlines.
MARK, END = "\x02", "\x03"
CURRENT: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("dspy_pool_call", default=None)
_TAG = re.compile(r"\x02request_id=(?P<request_id>[^ \x03]*) program=(?P<program>[^ \x03]*)\x03 ?")
_UNSAFE = re.compile(r"[\s\x02\x03]")


def begin(request_id: str, program: str) -> None:
    """Mark the running task (and threads it starts with its context) as serving this call."""
    CURRENT.set((_UNSAFE.sub("_", request_id), _UNSAFE.sub("_", program)))


def tagged(line: str) -> str:
    call = CURRENT.get()
    return line if call is None else f"{MARK}request_id={call[0]} program={call[1]}{END} {line}"


def split(line: str) -> tuple[dict[str, str], str]:
    """({request_id, program} or {}, the line without its marker)."""
    match = _TAG.match(line)
    if match is None:
        return {}, line
    return match.groupdict(), line[match.end():]


class TaggingStream(io.TextIOBase):
    """Wraps a worker's stdout or stderr: each complete line is tagged with the call that finished it."""

    def __init__(self, inner: TextIO) -> None:
        self._inner = inner
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            *lines, self._pending = self._pending.split("\n")
            self._inner.write("".join(tagged(line) + "\n" for line in lines))
            self._inner.flush()
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._inner.write(tagged(self._pending))
            self._pending = ""
        self._inner.flush()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._inner.encoding
