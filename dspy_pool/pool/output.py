"""Worker stdout/stderr into the structured log, tagged with the worker (and the call: calltag), scrubbed, rate limited.

User code and libraries print; those lines are useful but must never flood
the front. Past `max_lines_per_s` lines in a second the rest are counted and
reported once per second as `worker_output_dropped`. Operator code may print
the LM's key (a debug print of the LM's kwargs): every line is scrubbed like
every other path out of a worker, before it is cut to length.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from dspy_pool.pool import calltag
from dspy_pool.redact import Redactor, process_redactor

log = structlog.get_logger("dspy_pool.worker_output")

_MAX_LINE_CHARS = 2000
_MAX_BUFFER_BYTES = 64 * 1024


class WorkerOutputLog(asyncio.Protocol):
    def __init__(self, worker_id: int, pid: int, stream: str, max_lines_per_s: int = 50, redactor: Redactor | None = None) -> None:
        self.redactor = redactor or process_redactor()  # the keys the front handed to the zygote
        self.worker_id = worker_id
        self.pid = pid
        self.stream = stream
        self.max_lines_per_s = max_lines_per_s
        self._buffer = b""
        self._second = 0
        self._lines_this_second = 0
        self._dropped = 0

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > _MAX_BUFFER_BYTES:  # one endless line: cut it
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            self._emit(line)

    def _emit(self, line: bytes) -> None:
        second = int(time.monotonic())
        if second != self._second:
            self._flush_dropped()
            self._second, self._lines_this_second = second, 0
        self._lines_this_second += 1
        if self._lines_this_second > self.max_lines_per_s:
            self._dropped += 1
            return
        call, text = calltag.split(line.decode(errors="replace").rstrip())
        text = self.redactor.scrub(text)
        log.info("worker_output", worker_id=self.worker_id, pid=self.pid, stream=self.stream, line=text[:_MAX_LINE_CHARS], **call)

    def _flush_dropped(self) -> None:
        if self._dropped:
            log.warning("worker_output_dropped", worker_id=self.worker_id, pid=self.pid, stream=self.stream, lines=self._dropped)
            self._dropped = 0

    def eof_received(self) -> bool:
        if self._buffer:
            self._emit(self._buffer)
            self._buffer = b""
        self._flush_dropped()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._flush_dropped()
