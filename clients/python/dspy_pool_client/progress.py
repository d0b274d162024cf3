"""The progress line `optimize(...)` draws on stderr while it waits for a job.

`progress_line(job, width)` is pure (a job in, one line out); `ProgressLine` redraws it in
place with a carriage return and ends it with a newline. It is drawn only when stderr is a
terminal: a log file or a pipe gets nothing, so a script's output stays clean.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from .optimization import OptimizationJob

_BAR_WIDTH = 16


def _bar(done: int, planned: int) -> str:
    filled = min(_BAR_WIDTH, round(_BAR_WIDTH * done / planned)) if planned > 0 else 0
    return "[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + "]"


def _seconds(value: float) -> str:
    value = max(0, int(value))
    return f"{value}s" if value < 60 else f"{value // 60}m{value % 60:02d}s"


def progress_line(job: OptimizationJob, width: int = 100) -> str:
    """One line about the job: its state, phase, trials (with a bar), best score, LM calls, time."""
    head = f"{job.program}: {job.optimizer} {job.state}"
    progress = job.progress
    parts: list[str] = []
    if job.state == "succeeded" and job.result is not None:
        result = job.result
        parts.append(f"version {result.version}, dev {result.baseline_score:.3f} -> {result.optimized_score:.3f}"
                     + (", promoted" if result.promoted else ""))
        parts.append(f"{result.lm_calls} LM calls, {_seconds(result.elapsed_s)}")
    elif job.finished:
        parts.append(job.error or "no reason given")
    elif job.state == "running":
        if progress.phase:
            parts.append(progress.phase)
        if progress.trials_planned:
            parts.append(f"{progress.trials_done}/{progress.trials_planned} {_bar(progress.trials_done, progress.trials_planned)}")
        elif progress.trials_done:
            parts.append(f"{progress.trials_done} trials")
        if progress.best_score is not None:
            parts.append(f"best {progress.best_score:.3f}")
        parts.append(f"{progress.lm_calls} LM calls, {_seconds(progress.elapsed_s)}")
    line = head + (": " + ", ".join(parts) if parts else "")
    return line if len(line) <= width else line[: max(0, width - 3)] + "..."


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100


class ProgressLine:
    """Redraws one line in place on a terminal stream; `close()` leaves the last line standing."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._drawn = False

    @classmethod
    def for_stderr(cls, enabled: bool) -> "ProgressLine | None":
        """A line on stderr when `enabled` and stderr is a terminal, else None (nothing is drawn)."""
        stream = sys.stderr
        if not enabled or stream is None or not getattr(stream, "isatty", lambda: False)():
            return None
        return cls(stream)

    def update(self, job: OptimizationJob) -> None:
        width = max(20, _columns(self.stream) - 1)  # never the last column: some terminals wrap there
        try:
            self.stream.write("\r\x1b[2K" + progress_line(job, width))
            self.stream.flush()
        except (OSError, ValueError):
            return  # a closed terminal must not fail the wait
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            try:
                self.stream.write("\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
            self._drawn = False
